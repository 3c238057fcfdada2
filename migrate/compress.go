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

	"godwit/uffd"
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

// zstdEncoder is the options of every page encoder, the sample's too.
// Not WithLowerEncoderMem: its history holds only the window and a block,
// so every 128 KiB block moved the whole 8 MiB window down: 70-130 MB/s
// on a program's pages, against 210-230 MB/s with a history of twice the
// window (8 MiB more, untouched until the window fills).
func zstdEncoder(w io.Writer) (*zstd.Encoder, error) {
	return zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(zstdWindow))
}

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
	enc, err := zstdEncoder(cw)
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

// Auto's decision, made once before the first round: compress when the
// compressed round would move the program's pages faster than the link
// takes them as they are, and shrinks them.
const (
	// The link probe sends at least probeMin bytes for at least probeTime
	// on the control stream, at most probeMax (the agent takes up to
	// maxProbe): 4 MiB alone timed mostly the first round trip on a busy
	// host (225-309 MB/s where TLS moved 988 MB/s in the same run).
	probeMin  = 4 << 20
	probeMax  = 32 << 20
	probeTime = 100 * time.Millisecond
	// sampleBytes of the program's memory are compressed to time zstd:
	// twice its window, so that the history moves as in a round.
	sampleBytes = 2 * zstdWindow
	// sampleChunk is one read of the sample: sampleBytes/sampleChunk
	// reads spread over all the resident memory.
	sampleChunk = 256 << 10
)

// autoCompress reports whether compression pays, from the link's rate
// and zstd's rate and ratio on a sample (bytes per second of input). A
// compressed round is one connection whose goroutine compresses a block,
// then encrypts and sends what came out, one after the other: it moves
// 1 / (1/zrate + ratio/link) bytes of pages per second, against link
// for the pages as they are (striped over as many streams, which the
// probe of one stream does not even count).
func autoCompress(link, zrate, ratio float64) bool {
	if ratio >= 0.9 || zrate <= 0 || link <= 0 {
		return false
	}
	return 1/(1/zrate+ratio/link) > 1.1*link
}

// sampleCompress compresses about sampleBytes of the resident private
// writable memory of process pid (read through /proc/PID/mem while it
// runs), in sampleChunk reads spread evenly over all of it, as a round
// would, and returns zstd's rate (input bytes per second) and the ratio
// of output to input; 0, 1 when nothing could be read. Spread, not the
// first sampleBytes: the lowest mappings of a large program are often a
// small table of zeros (a 4 GiB program's 4 MiB of counters) that
// compresses a thousandfold when its pages do not, and only resident
// pages, since a round never sends a page that was never written.
func sampleCompress(pid int) (rate, ratio float64, err error) {
	spans, err := residentPrivate(pid)
	if err != nil {
		return 0, 1, fmt.Errorf("sample memory: %w", err)
	}
	var total uint64
	for _, s := range spans {
		total += s[1] - s[0]
	}
	if total == 0 {
		return 0, 1, nil
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return 0, 1, fmt.Errorf("sample memory: %w", err)
	}
	defer mem.Close()
	// Every step bytes of the resident memory (its runs end to end), one
	// chunk.
	step := max(total/(sampleBytes/sampleChunk), sampleChunk)
	sample := make([]byte, 0, sampleBytes)
	var next, base uint64
	for _, s := range spans {
		n := s[1] - s[0]
		for ; next < base+n && len(sample)+sampleChunk <= cap(sample); next += step {
			a := s[0] + next - base
			got, _ := mem.ReadAt(sample[len(sample):len(sample)+int(min(sampleChunk, s[1]-a))], int64(a))
			sample = sample[:len(sample)+got]
		}
		base += n
	}
	if len(sample) == 0 {
		return 0, 1, nil
	}
	cw := &countWriter{w: io.Discard}
	enc, err := zstdEncoder(cw)
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

// residentPrivate lists the resident (or swapped) pages of the private
// writable mappings of pid as [start, end) runs, in address order.
func residentPrivate(pid int) ([][2]uint64, error) {
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, err
	}
	pm, err := uffd.OpenPagemap(pid)
	if err != nil {
		return nil, err
	}
	defer pm.Close()
	var out [][2]uint64
	var regs []uffd.Region
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
		if err1 != nil || err2 != nil || start >= end {
			continue
		}
		const in = uffd.PageIsPresent | uffd.PageIsSwapped
		regs, err = pm.Scan(uffd.ScanArgs{Start: start, End: end, CategoryAnyof: in, ReturnMask: in}, regs[:0])
		if err != nil {
			// Unmapped meanwhile: the rest still samples.
			continue
		}
		for _, r := range regs {
			out = append(out, [2]uint64{r.Start, r.End})
		}
	}
	return out, nil
}
