package migrate

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// Page stream compression (--compress). A compressed round's pages go to
// the agent over a connection of their own, TLS with the control
// stream's certificates and a zstd stream inside it in each direction;
// the page-server protocol runs unchanged on top (the dump writes it on a
// socket pair whose other end migrate relays). Zero pages the program
// never wrote are not sent at all (the dump skips them); pages of zeros
// it wrote, and pages repeated within the encoder's window, cost zstd a
// few bytes each.
const (
	CompressNone = "none"
	CompressZstd = "zstd"
	// CompressAuto compresses when a probe of the link and a sample of
	// the program's memory say it pays (autoCompress).
	CompressAuto = "auto"
)

// zstdWindow is the encoder's window (and the decoder's bound): a page
// repeated within it is sent as a reference.
const zstdWindow = 8 << 20

// ParseCompress checks a --compress argument ("" is auto).
func ParseCompress(s string) (string, error) {
	switch s {
	case "":
		return CompressAuto, nil
	case CompressNone, CompressZstd, CompressAuto:
		return s, nil
	}
	return "", fmt.Errorf("bad --compress %q: want auto, none or zstd", s)
}

// zstdConn is a connection whose bytes are zstd streams both ways. Each
// Write is flushed: the page-server protocol waits for answers.
type zstdConn struct {
	net.Conn
	enc  *zstd.Encoder
	dec  *zstd.Decoder
	wire *countWriter
	once sync.Once
	// busy is the time spent compressing and writing; less the time
	// spent writing (wire.busy), the compressor's own.
	busy atomic.Int64
}

// countWriter counts the bytes that reach the connection.
type countWriter struct {
	w    io.Writer
	n    atomic.Uint64
	busy atomic.Int64 // time spent writing (waiting for the link)
}

func (c *countWriter) Write(p []byte) (int, error) {
	t := time.Now()
	n, err := c.w.Write(p)
	c.busy.Add(int64(time.Since(t)))
	c.n.Add(uint64(n))
	return n, err
}

func newZstdConn(c net.Conn) (*zstdConn, error) {
	cw := &countWriter{w: c}
	enc, err := zstd.NewWriter(cw, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(zstdWindow), zstd.WithLowerEncoderMem(true))
	if err != nil {
		return nil, fmt.Errorf("zstd: %w", err)
	}
	dec, err := zstd.NewReader(c, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(zstdWindow),
		zstd.WithDecoderMaxMemory(64<<20))
	if err != nil {
		enc.Close()
		return nil, fmt.Errorf("zstd: %w", err)
	}
	return &zstdConn{Conn: c, enc: enc, dec: dec, wire: cw}, nil
}

func (z *zstdConn) Read(p []byte) (int, error) { return z.dec.Read(p) }

func (z *zstdConn) Write(p []byte) (int, error) {
	t := time.Now()
	n, err := z.enc.Write(p)
	if err == nil {
		err = z.enc.Flush()
	}
	z.busy.Add(int64(time.Since(t)))
	return n, err
}

// CloseWrite ends this side's stream (the zstd frame) and the TLS
// stream's writing half.
func (z *zstdConn) CloseWrite() error {
	err := z.enc.Close()
	if tc, ok := z.Conn.(*tls.Conn); ok {
		err = errors.Join(err, tc.CloseWrite())
	}
	return err
}

func (z *zstdConn) Close() error {
	var err error
	z.once.Do(func() {
		err = z.enc.Close()
		z.dec.Close()
		err = errors.Join(err, z.Conn.Close())
	})
	return err
}

// compressedPages is the source's end of one compressed round: the dump
// writes the page-server protocol on sock (dumper.PageServer.Socket),
// relayed to and from the agent through a zstdConn.
type compressedPages struct {
	sock  int // the dump's end of the socket pair
	local net.Conn
	z     *zstdConn
	done  chan error
}

// dialCompressed connects to the round's page server at addr.
func dialCompressed(addr string, tc *tls.Config) (*compressedPages, error) {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: tc}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("page server %s: %w", addr, err)
	}
	if err := tuneConn(c.(*tls.Conn).NetConn()); err != nil {
		c.Close()
		return nil, err
	}
	z, err := newZstdConn(c)
	if err != nil {
		c.Close()
		return nil, err
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		z.Close()
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	f := os.NewFile(uintptr(fds[1]), "pages-relay")
	local, err := net.FileConn(f)
	f.Close()
	if err != nil {
		unix.Close(fds[0])
		z.Close()
		return nil, err
	}
	p := &compressedPages{sock: fds[0], local: local, z: z, done: make(chan error, 2)}
	go func() {
		// The dump's bytes, compressed; its end closed: the stream ends.
		_, err := io.CopyBuffer(z, local, make([]byte, 1<<20))
		// The frame's end; the server may have closed already after
		// answering the session's FORCE_CLOSE.
		_ = z.CloseWrite()
		p.done <- err
	}()
	go func() {
		// The page server's answers; their end (a refused handshake, a
		// server gone) is the dump's end too, never a hang.
		_, err := io.Copy(local, z)
		if uc, ok := local.(*net.UnixConn); ok {
			_ = uc.CloseWrite()
		}
		if errors.Is(err, net.ErrClosed) {
			err = nil
		}
		p.done <- err
	}()
	return p, nil
}

// streamStats is what one compressed round cost.
type streamStats struct {
	Wire uint64 // compressed bytes sent
	// Compress is the time spent compressing, Send the time spent
	// handing the result to the link (TLS and TCP).
	Compress, Send time.Duration
}

// finish ends the relay once the dump let go of its end, and returns what
// the round sent. The dump's own result says whether the pages arrived
// (the server answers its FORCE_CLOSE through the relay): the relay's
// error only explains a failed dump.
func (p *compressedPages) finish() (streamStats, error) {
	unix.Close(p.sock)
	var errs []error
	t := time.NewTimer(sourceWait)
	defer t.Stop()
	for i := 0; i < 2; i++ {
		select {
		case err := <-p.done:
			if !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
				errs = append(errs, err)
			}
		case <-t.C:
			errs = append(errs, errors.New("compressed page stream did not end"))
			i = 2
		}
	}
	_ = p.local.Close()
	_ = p.z.Close()
	send := time.Duration(p.z.wire.busy.Load())
	st := streamStats{Wire: p.z.wire.n.Load(), Send: send, Compress: time.Duration(p.z.busy.Load()) - send}
	return st, errors.Join(errs...)
}

// Auto's decision, made once before the first round: compress when zstd
// takes the program's pages faster than the link takes them as they are,
// and shrinks them (compressed, the link carries ratio of the bytes).
const (
	probeBytes  = 4 << 20 // sent on the control stream to time the link
	sampleBytes = 4 << 20 // of the program's memory, compressed to time zstd
)

// autoCompress reports whether compression pays, from the link's rate
// and zstd's rate and ratio on a sample (bytes per second of input).
func autoCompress(link, zrate, ratio float64) bool {
	return ratio < 0.9 && zrate > 1.1*link
}

// sampleCompress compresses up to sampleBytes of the writable private
// memory of process pid (read through /proc/PID/mem while it runs) as a
// round would, and returns zstd's rate (input bytes per second) and the
// ratio of output to input; 0, 1 when nothing could be read.
func sampleCompress(pid int) (rate, ratio float64, err error) {
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return 0, 1, fmt.Errorf("sample memory: %w", err)
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return 0, 1, fmt.Errorf("sample memory: %w", err)
	}
	defer mem.Close()
	var sample []byte
	buf := make([]byte, 1<<20)
	for _, line := range strings.Split(string(maps), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || !strings.HasPrefix(f[1], "rw") || f[1][3] != 'p' {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		for a := start; a < end && len(sample) < sampleBytes; a += uint64(len(buf)) {
			n, _ := mem.ReadAt(buf[:min(uint64(len(buf)), end-a)], int64(a))
			sample = append(sample, buf[:n]...)
			if n == 0 {
				break
			}
		}
		if len(sample) >= sampleBytes {
			break
		}
	}
	if len(sample) == 0 {
		return 0, 1, nil
	}
	cw := &countWriter{w: io.Discard}
	enc, err := zstd.NewWriter(cw, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(zstdWindow), zstd.WithLowerEncoderMem(true))
	if err != nil {
		return 0, 1, err
	}
	t := time.Now()
	for off := 0; off < len(sample); off += 1 << 20 {
		_, _ = enc.Write(sample[off:min(off+1<<20, len(sample))])
		_ = enc.Flush()
	}
	_ = enc.Close()
	d := time.Since(t)
	return float64(len(sample)) / max(d.Seconds(), 1e-9), float64(cw.n.Load()) / float64(len(sample)), nil
}
