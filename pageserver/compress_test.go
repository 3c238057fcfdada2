package pageserver

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"godwit/pageserver/internal/wire"
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

// recordingConn keeps the raw bytes read.
type recordingConn struct {
	net.Conn
	got bytes.Buffer
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.got.Write(p[:n])
	return n, err
}

// TestCompressedServerWindow: a dump server's replies are a few bytes: its
// encoder window is small (a lazy server's, which sends pages, is not),
// and a compressed session holds little more than its decoder.
func TestCompressedServerWindow(t *testing.T) {
	for _, lazy := range []bool{false, true} {
		s := &Server{cfg: Config{Lazy: lazy}}
		want := zstdReplyWindow
		if lazy {
			want = zstdWindow
		}
		if s.encWindow() != want {
			t.Errorf("lazy %v: encoder window %d, want %d", lazy, s.encWindow(), want)
		}
	}
	ts := startServer(t, Config{}, TransportOptions{Compress: CompressZstd})
	c, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc := &recordingConn{Conn: c}
	z, err := newZstdStream(rc)
	if err != nil {
		t.Fatal(err)
	}
	var h [wire.HeaderSize]byte
	wire.Header{Cmd: wire.CmdOpen2, DstID: TaskDst(5)}.Marshal(h[:])
	if _, err := z.Write(h[:]); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	var b [1]byte
	if _, err := io.ReadFull(z, b[:]); err != nil {
		t.Fatal(err)
	}
	var fh zstd.Header
	if err := fh.Decode(rc.got.Bytes()); err != nil {
		t.Fatal(err)
	}
	if fh.WindowSize > zstdReplyWindow {
		t.Errorf("the dump server's reply frame has a %d-byte window, want at most %d", fh.WindowSize, zstdReplyWindow)
	}

	// Memory: sessions' server ends, after a 1 MiB ADD each.
	const k = 8
	frame := func() []byte {
		var buf bytes.Buffer
		zw, _ := newZstdStream(struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(nil), &buf})
		d := make([]byte, 1<<20)
		rand.Read(d)
		zw.Write(d)
		return buf.Bytes()
	}
	var frames [k][]byte
	for i := range frames {
		frames[i] = frame()
	}
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse
	}
	srv := &Server{}
	var keep []*zstdStream
	before := heap()
	for i := range frames {
		zs, err := newZstdStreamWindow(struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(frames[i]), io.Discard}, srv.encWindow())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.CopyN(io.Discard, zs, 1<<20); err != nil {
			t.Fatal(err)
		}
		zs.Write([]byte{0, 0, 0, 0})
		keep = append(keep, zs)
	}
	// The decoder keeps a window of history (the peer's 2 MiB) and its
	// buffers; the encoder little.
	if per := (int64(heap()) - int64(before)) / k; per > 4<<20+512<<10 {
		t.Errorf("a compressed dump session holds %d KiB", per>>10)
	}
	runtime.KeepAlive(keep)
	if n := (TransportOptions{Compress: CompressZstd}).quicConfig(true).MaxIncomingStreams; n != maxZstdStreamsPerConn {
		t.Errorf("a compressing QUIC server takes %d streams at once, want %d", n, maxZstdStreamsPerConn)
	}
}
