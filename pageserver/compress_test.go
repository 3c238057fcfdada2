package pageserver

import (
	"bytes"
	"context"
	"net"
	"sync/atomic"
	"testing"
)

func TestCompressedRoundTrip(t *testing.T) {
	t.Run("tcp", func(t *testing.T) { roundTrip(t, TransportOptions{Compress: CompressZstd}, false) })
	t.Run("tls", func(t *testing.T) {
		o := tlsFiles(t, t.TempDir())
		o.TLS, o.Compress = true, CompressZstd
		roundTrip(t, o, false)
	})
	t.Run("quic", func(t *testing.T) {
		o := tlsFiles(t, t.TempDir())
		o.Transport, o.Compress = TransportQUIC, CompressZstd
		roundTrip(t, o, true)
	})
	t.Run("tls striped", func(t *testing.T) {
		o := tlsFiles(t, t.TempDir())
		o.TLS, o.Compress = true, CompressZstd
		stripedRoundTrip(t, o)
	})
	t.Run("quic striped", func(t *testing.T) {
		o := tlsFiles(t, t.TempDir())
		o.Transport, o.Compress = TransportQUIC, CompressZstd
		stripedRoundTrip(t, o)
	})
}

// countingListener counts the bytes its connections receive.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return countingConn{c, l.n}, nil
}

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// TestCompressedWire: compressible pages cross the wire compressed, and
// arrive as they were.
func TestCompressedWire(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wire atomic.Int64
	o := TransportOptions{Compress: CompressZstd}
	ln, err := NewTCPListener(countingListener{raw, &wire}, o)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	srv, err := NewServer(Config{ImagesDir: dir, Once: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), ln) }()
	c, err := Dial(context.Background(), raw.Addr().String(), o)
	if err != nil {
		t.Fatal(err)
	}
	rs := []pageRange{{vaddr: 0x400000, nr: 1024, flags: FlagPresent}}
	s, err := c.OpenTask(context.Background(), TaskDst(9), true)
	if err != nil {
		t.Fatal(err)
	}
	sendTask(t, s, rs, 3)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	checkSame(t, dir, "pagemap-9.img", rs, 3)
	if n, data := wire.Load(), rangesBytes(rs); n <= 0 || n > data/2 {
		t.Fatalf("%d bytes on the wire for %d bytes of pages", n, data)
	}
}

// TestCompressedMismatch: a client that does not compress is not
// understood by a server that expects it; nothing is written.
func TestCompressedMismatch(t *testing.T) {
	ts := startServer(t, Config{}, TransportOptions{Compress: CompressZstd})
	c, err := Dial(context.Background(), ts.addr, TransportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.OpenTask(context.Background(), TaskDst(9), false)
	if err == nil {
		s.AddPagesBytes(0x400000, FlagPresent, bytes.Repeat([]byte{1}, PageSize))
		err = c.Close()
	} else {
		c.Abort()
	}
	if err == nil {
		t.Fatal("an uncompressed client was understood")
	}
	ts.log.waitLog(t, "zstd")
	if exists(ts.dir, "pagemap-9.img") {
		t.Fatal("pagemap-9.img written")
	}
	if _, err := Dial(context.Background(), ts.addr, TransportOptions{Compress: "lz4"}); err == nil {
		t.Fatal("unknown compression accepted")
	}
}
