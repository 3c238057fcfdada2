package pageserver

import (
	"bytes"
	"context"
	"errors"
	"io"
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

	c, err := Dial(ctx, addr, TransportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16*PageSize)
	for _, q := range []struct{ vaddr, nr, want uint64 }{
		{0x600000, 1, 1},
		{0x602000, 4, 4},
		{0x606000, 16, 4}, // cut at the entry's end: less data than room
		{0x601000, 9, 9},
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

	// An idle peer is dropped: the raw read honours the deadline.
	idle := dialRaw(t, addr)
	idle.closedByServer()
	log.waitLog(t, "no complete request within")

	c.Close()
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
