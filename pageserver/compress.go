package pageserver

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Compression of a connection's bytes (TransportOptions.Compress; godwit's
// own, both ends must ask for it): each stream (a TCP or TLS connection, a
// QUIC stream) carries a zstd stream in each direction, the protocol
// unchanged inside. Every Write is flushed (requests wait for replies), so
// small requests cost a zstd block header each. The decoder's window and
// memory are bounded; what it yields is page data the server charges
// against MaxBytes as any other, and GET replies are bounded by what was
// asked: compression adds no unbounded allocation.

// CompressZstd is TransportOptions.Compress's one method.
const CompressZstd = "zstd"

// zstdWindow is the encoder's window and the decoder's bound: a page
// repeated within it costs a reference. Each stream holds about a window
// per direction, so it stays small (striped and QUIC clients hold several).
const (
	zstdWindow    = 2 << 20
	zstdDecMemory = 16 << 20
	// zstdReplyWindow is the encoder window of a server that does not
	// serve pages (not lazy): its replies are a few bytes (statuses,
	// has_parent) or pages read back from a parent, which a window of
	// pages would gain nothing from, and the window is memory held for
	// the session's life.
	zstdReplyWindow = 64 << 10
)

func checkCompress(c string) error {
	switch c {
	case "", CompressZstd:
		return nil
	}
	return fmt.Errorf("page server: unknown compression %q (want zstd)", c)
}

// maxZstdStreamsPerConn bounds the concurrent streams of one compressed
// QUIC connection (its MaxIncomingStreams: the peer waits for a stream,
// none is refused): each holds a decoder of up to a zstdWindow of history.
const maxZstdStreamsPerConn = 4

// encWindow is the server's encoder window: pages only a lazy server
// sends.
func (s *Server) encWindow() int {
	if s.cfg.Lazy {
		return zstdWindow
	}
	return zstdReplyWindow
}

// zstdStream is rw with zstd both ways.
type zstdStream struct {
	rw  io.ReadWriter
	mu  sync.Mutex // the encoder: GETs are sent while replies are read
	enc *zstd.Encoder
	dec *zstd.Decoder
}

func newZstdStream(rw io.ReadWriter) (*zstdStream, error) {
	return newZstdStreamWindow(rw, zstdWindow)
}

// newZstdStreamWindow is newZstdStream with encoder window w (a power of
// two from zstd.MinWindowSize to zstdWindow); the decoder takes any peer's
// window up to zstdWindow.
func newZstdStreamWindow(rw io.ReadWriter, w int) (*zstdStream, error) {
	enc, err := zstd.NewWriter(rw, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(w), zstd.WithLowerEncoderMem(true))
	if err != nil {
		return nil, fmt.Errorf("page server: zstd: %w", err)
	}
	dec, err := zstd.NewReader(rw, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(zstdWindow),
		zstd.WithDecoderMaxMemory(zstdDecMemory))
	if err != nil {
		enc.Close()
		return nil, fmt.Errorf("page server: zstd: %w", err)
	}
	return &zstdStream{rw: rw, enc: enc, dec: dec}, nil
}

func (z *zstdStream) Read(p []byte) (int, error) {
	n, err := z.dec.Read(p)
	if err != nil && !errors.Is(err, io.EOF) && n == 0 {
		err = fmt.Errorf("zstd: %w", err)
	}
	return n, err
}

func (z *zstdStream) Write(p []byte) (int, error) {
	z.mu.Lock()
	defer z.mu.Unlock()
	n, err := z.enc.Write(p)
	if err == nil {
		err = z.enc.Flush()
	}
	return n, err
}

// zstdConn is a net.Conn whose bytes are compressed. Its Close is the
// connection's: the coders, synchronous (concurrency 1), hold no
// goroutine and go with the last reference, never closed under a Read or
// Write another goroutine may be in (Abort).
type zstdConn struct {
	net.Conn
	z *zstdStream
}

func newZstdConn(c net.Conn) (*zstdConn, error) {
	return newZstdConnWindow(c, zstdWindow)
}

func newZstdConnWindow(c net.Conn, w int) (*zstdConn, error) {
	z, err := newZstdStreamWindow(c, w)
	if err != nil {
		return nil, err
	}
	return &zstdConn{Conn: c, z: z}, nil
}

func (c *zstdConn) Read(p []byte) (int, error)  { return c.z.Read(p) }
func (c *zstdConn) Write(p []byte) (int, error) { return c.z.Write(p) }
