package pageserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"godwit/internal/logging"
	"godwit/pageserver/internal/wire"
)

// TestLazyRawSession: a lazy session on plain TCP, whose requests are read
// outside Go's poller, answers GETs of every shape through the client's
// one-readv replies (cut replies, several replies in one segment, no
// pages), drops a peer idle past IdleTimeout, and lets Serve return when
// it is stopped while a peer waits between requests.
func TestLazyRawSession(t *testing.T) {
	dump := t.TempDir()
	writeLocal(t, dump, "pagemap-42.img", 1, []pageRange{
		{vaddr: 0x600000, nr: 10, flags: FlagPresent | FlagLazy},
		{vaddr: 0x700000, nr: 1, flags: FlagLazy},
		{vaddr: 0x800000, nr: 40, flags: FlagPresent | FlagLazy},
	}, 12)
	log := &syncBuf{}
	srv, err := NewServer(Config{ImagesDir: dump, Lazy: true, IdleTimeout: 300 * time.Millisecond, Log: logging.New(log, 4)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := Listen("127.0.0.1:0", TransportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln); srv.Close() }()
	addr := ln.Addr().String()

	// The client in both modes: non-blocking (recv, poll) and blocking
	// (BlockingGets: one readv, recv with MSG_WAITALL).
	for _, blocking := range []bool{false, true} {
		t.Run(fmt.Sprintf("blocking=%v", blocking), func(t *testing.T) { testRawGets(t, addr, blocking) })
	}

	// An idle peer is dropped: the raw read honours the deadline.
	idle := dialRaw(t, addr)
	idle.closedByServer()
	log.waitLog(t, "no complete request within")

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}

	// A peer waiting between requests (well within IdleTimeout) does not
	// hold Serve up when it stops.
	srv, err = NewServer(Config{ImagesDir: dump, Lazy: true, Log: logging.New(log, 4)})
	if err != nil {
		t.Fatal(err)
	}
	if ln, err = Listen("127.0.0.1:0", TransportOptions{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	go func() { done <- srv.Serve(ctx, ln); srv.Close() }()
	w := dialRaw(t, ln.Addr().String())
	var hb [wire.HeaderSize]byte
	wire.Header{Cmd: wire.CmdGet, NrPages: 1, Vaddr: 0x600000, DstID: 42}.Marshal(hb[:])
	if _, err := w.c.Write(hb[:]); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, wire.HeaderSize+PageSize)
	if _, err := io.ReadFull(w.c, got); err != nil {
		t.Fatalf("GET on a raw peer: %v", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Serve did not return while a lazy peer waited between requests")
	}
	w.closedByServer()
}

func testRawGets(t *testing.T, addr string, blocking bool) {
	c, err := Dial(context.Background(), addr, TransportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if blocking {
		if err := c.BlockingGets(10 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 48*PageSize)
	for _, q := range []struct{ vaddr, nr, want uint64 }{
		{0x600000, 1, 1},
		{0x602000, 4, 4},
		{0x606000, 16, 4}, // cut at the entry's end: less data than room
		{0x601000, 9, 9},
		{0x800000, 16, 16}, // the largest reply read and written with its header
		{0x801000, 17, 17}, // the smallest sent with sendfile
		{0x802000, 48, 38},
	} {
		for i := range buf {
			buf[i] = 0xee
		}
		n, err := c.Get(42, q.vaddr, q.nr, buf)
		if err != nil || n != q.want {
			t.Fatalf("GET %#x+%d = %d, %v; want %d", q.vaddr, q.nr, n, err, q.want)
		}
		want := make([]byte, n*PageSize)
		fillPages(want, q.vaddr, 12)
		if !bytes.Equal(buf[:n*PageSize], want) {
			t.Fatalf("GET %#x: wrong data", q.vaddr)
		}
		if buf[n*PageSize] != 0xee {
			t.Fatalf("GET %#x: written past the %d pages sent", q.vaddr, n)
		}
	}
	if _, err := c.Get(42, 0x700000, 1, buf); !errors.Is(err, ErrNoPages) {
		t.Fatalf("GET of a page without data: %v, want ErrNoPages", err)
	}
	// Pipelined GETs on the same kind of session, then a Get again.
	for _, v := range []uint64{0x600000, 0x604000} {
		if err := c.SendGet(42, v, 2); err != nil {
			t.Fatal(err)
		}
	}
	for _, v := range []uint64{0x600000, 0x604000} {
		if _, vaddr, n, err := c.RecvGet(buf); err != nil || vaddr != v || n != 2 {
			t.Fatalf("pipelined GET %#x: %#x %d %v", v, vaddr, n, err)
		}
	}
	if n, err := c.Get(42, 0x608000, 2, buf); err != nil || n != 2 {
		t.Fatalf("GET after the pipeline: %d, %v", n, err)
	}

}

// TestBlockingGetTimeout: a client in blocking mode whose server reads its
// GET and never answers fails the GET with ErrGetTimeout once the timeout
// passes, and the pipelined replies' receive as well: no GET waits for
// ever, with no timer of the caller's.
func TestBlockingGetTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
			go io.Copy(io.Discard, c) // reads, never answers
		}
	}()
	buf := make([]byte, PageSize)
	for _, pipelined := range []bool{false, true} {
		c, err := Dial(context.Background(), ln.Addr().String(), TransportOptions{})
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, <-accepted)
		if err := c.BlockingGets(200 * time.Millisecond); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		if pipelined {
			if err := c.SendGet(42, 0x600000, 1); err != nil {
				t.Fatal(err)
			}
			_, _, _, err = c.RecvGet(buf)
		} else {
			_, err = c.Get(42, 0x600000, 1, buf)
		}
		if !errors.Is(err, ErrGetTimeout) {
			t.Fatalf("pipelined %v: %v, want ErrGetTimeout", pipelined, err)
		}
		if d := time.Since(t0); d < 150*time.Millisecond {
			t.Fatalf("pipelined %v: timed out after %v, before the timeout", pipelined, d)
		}
		c.Abort()
	}
	// A compressed stream goes through zstd: no raw socket to block on.
	c, err := Dial(context.Background(), ln.Addr().String(), TransportOptions{Compress: "zstd"})
	if err != nil {
		t.Fatal(err)
	}
	conns = append(conns, <-accepted)
	defer c.Abort()
	if err := c.BlockingGets(time.Second); err == nil {
		t.Fatal("BlockingGets on a compressed stream: no error")
	}
}
