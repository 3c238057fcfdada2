package pageserver

import (
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"godwit/internal/logging"
	"godwit/pageserver/internal/wire"
)

// closeAll on a lazy session blocked in its raw read (RawConn.Control,
// in poll): Close waits for that Control, so the connection, tracked as
// a shutdownCloser as acceptTCP does, must be shut down first.
func TestCloseAllWakesRawRead(t *testing.T) {
	// Non-blocking (poll) and blocking (read in the kernel) sockets.
	for _, idle := range []time.Duration{0, 2 * time.Minute} {
		t.Run(fmt.Sprintf("idle=%v", idle), func(t *testing.T) { testCloseAllWakesRawRead(t, idle) })
	}
}

func testCloseAllWakesRawRead(t *testing.T, idle time.Duration) {
	s, err := NewServer(Config{ImagesDir: t.TempDir(), Lazy: true, Log: logging.New(io.Discard, 0)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close() // a lazy peer waiting between requests: sends nothing
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, err := newRawReadConn(c.(*net.TCPConn), idle, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if rc.block != (idle > 0) {
		t.Fatalf("blocking %v with idle timeout %v", rc.block, idle)
	}
	s.mu.Lock()
	s.conns[shutdownCloser{c}] = struct{}{}
	s.mu.Unlock()
	readDone := make(chan error, 1)
	go func() {
		var b [32]byte
		_, err := rc.Read(b[:])
		readDone <- err
	}()
	time.Sleep(200 * time.Millisecond) // the read is in poll(2), or in read(2)
	closeDone := make(chan struct{})
	go func() { s.closeAll(); close(closeDone) }()
	select {
	case <-closeDone:
	case <-time.After(5 * time.Second):
		t.Error("closeAll did not return while a raw read waited")
		peer.Close() // frees the read, then the Close
		<-closeDone
	}
	if err := <-readDone; err == nil {
		t.Error("the raw read returned no error after closeAll")
	}
}

// Serve stops promptly when cancelled while a lazy TCP peer idles between
// requests, however the cancel's closeAll and the session's own shutdown
// interleave.
func TestServeStopsWithIdleLazyPeer(t *testing.T) {
	dump := t.TempDir()
	writeLocal(t, dump, "pagemap-42.img", 1, []pageRange{{vaddr: 0x600000, nr: 1, flags: FlagPresent | FlagLazy}}, 12)
	for i := range 200 {
		srv, err := NewServer(Config{ImagesDir: dump, Lazy: true, Log: logging.New(io.Discard, 0)})
		if err != nil {
			t.Fatal(err)
		}
		ln, err := Listen("127.0.0.1:0", TransportOptions{})
		if err != nil {
			srv.Close()
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- srv.Serve(ctx, ln); srv.Close() }()
		w := dialRaw(t, ln.Addr().String())
		var hb [wire.HeaderSize]byte
		wire.Header{Cmd: wire.CmdGet, NrPages: 1, Vaddr: 0x600000, DstID: 42}.Marshal(hb[:])
		if _, err := w.c.Write(hb[:]); err != nil {
			cancel()
			t.Fatal(err)
		}
		got := make([]byte, wire.HeaderSize+PageSize)
		if _, err := io.ReadFull(w.c, got); err != nil {
			cancel()
			t.Fatalf("round %d: GET: %v", i, err)
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("round %d: Serve: %v", i, err)
			}
		case <-time.After(5 * time.Second):
			w.c.Close() // lets Serve return before the test ends
			<-done
			t.Fatalf("round %d: Serve did not return within 5 s of the cancel while a lazy peer idled", i)
		}
		w.c.Close()
	}
}
