package lazypages

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"godwit/pageserver"
)

// TestRemoteSourceCloseStalled: a source that answers the first of two
// pipelined GETs and never the second does not hang close (Close drains
// the replies due; getTimeout bounds it).
func TestRemoteSourceCloseStalled(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan struct{})
	go func() {
		defer close(served)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var h [32]byte // page_server_iov
		if _, err := io.ReadFull(c, h[:]); err != nil {
			return
		}
		// The reply (PS_IOV_ADD) echoes the GET, then one page.
		binary.NativeEndian.PutUint32(h[0:], 1)
		c.Write(h[:])
		c.Write(make([]byte, pageSize))
		// Read the second GET and stall until the client goes.
		io.Copy(io.Discard, c)
	}()
	old := getTimeout
	getTimeout = 300 * time.Millisecond
	defer func() { getTimeout = old }()
	s, err := dialSource(context.Background(), ln.Addr().String(), pageserver.TransportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pm := &pagemap{pid: 42}
	if err := s.send(pm, 0x10000, 1); err != nil {
		t.Fatal(err)
	}
	if err := s.send(pm, 0x20000, 1); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, pageSize)
	if n, err := s.recv(pm, 0x10000, b); err != nil || n != 1 {
		t.Fatalf("first reply: %d %v", n, err)
	}
	closed := make(chan error, 1)
	go func() { closed <- s.close(true) }()
	select {
	case err := <-closed:
		if err == nil || !strings.Contains(err.Error(), "did not answer") {
			t.Fatalf("close of a stalled source: %v", err)
		}
	case <-time.After(20 * time.Second):
		s.close(false)
		t.Fatal("close hangs on a stalled source")
	}
	<-served
}

// TestRemoteSourceCloseStatusStalled: a source that answers every GET and
// never CLOSE's status does not hang close either (the status is read
// through Go's poller, which the blocking socket's timeout does not bound).
func TestRemoteSourceCloseStatusStalled(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan struct{})
	go func() {
		defer close(served)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var h [32]byte
		if _, err := io.ReadFull(c, h[:]); err != nil {
			return
		}
		binary.NativeEndian.PutUint32(h[0:], 1)
		c.Write(h[:])
		c.Write(make([]byte, pageSize))
		io.Copy(io.Discard, c) // CLOSE, never answered
	}()
	old := getTimeout
	getTimeout = 300 * time.Millisecond
	defer func() { getTimeout = old }()
	s, err := dialSource(context.Background(), ln.Addr().String(), pageserver.TransportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !s.blocking {
		t.Fatal("a plain TCP source is not in blocking mode")
	}
	pm := &pagemap{pid: 42}
	b := make([]byte, pageSize)
	if err := s.read(pm, 0x10000, b); err != nil {
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	go func() { closed <- s.close(true) }()
	select {
	case err := <-closed:
		if err == nil || !strings.Contains(err.Error(), "did not answer") {
			t.Fatalf("close of a source that never answers CLOSE: %v", err)
		}
	case <-time.After(20 * time.Second):
		s.close(false)
		t.Fatal("close hangs on a source that never answers CLOSE")
	}
	<-served
}
