package pageserver

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/sys/unix"

	"godwit/pageserver/internal/wire"
)

// Pagemap flags for AddPages (CRIU's PE_*).
const (
	FlagParent  = wire.FlagParent  // pages are in the parent images
	FlagLazy    = wire.FlagLazy    // may be restored lazily
	FlagPresent = wire.FlagPresent // data follows
)

// PageSize is the protocol's page size.
const PageSize = wire.PageSize

// TaskDst is the dst_id of a task's pagemap (pagemap-<pid>.img).
func TaskDst(pid int) uint64 { return wire.EncodeDst(wire.TypePID, uint64(pid)) }

// ShmemDst is the dst_id of a shared memory object's pagemap
// (pagemap-shmem-<shmid>.img).
func ShmemDst(shmid uint64) uint64 { return wire.EncodeDst(wire.TypeShmem, shmid) }

// ErrNoPages is returned by Get when the server does not hold the pages.
var ErrNoPages = errors.New("page server: pages not found")

// clientCopyBuf bounds the client's own buffering of page data that can't
// go to the socket by splice/sendfile.
const clientCopyBuf = 1 << 20

// Client is a connection to a page server. Its methods are safe for
// concurrent use; over TCP one task is sent at a time (the protocol has
// one open pagemap per connection), over QUIC each task has its stream.
type Client struct {
	transport Transport

	mu     sync.Mutex // the control channel: conn (TCP) or ctrl (QUIC)
	conn   net.Conn
	raw    *net.TCPConn // plain TCP: splice and sendfile allowed
	corked bool
	qc     *quic.Conn
	ctrl   *quic.Stream
	// compress: every stream is zstd (TransportOptions.Compress); zctrl
	// is the control stream's.
	compress bool
	zctrl    io.ReadWriter
	dedup    bool // TransportOptions.Dedup
	zeroOnly bool // TransportOptions.ZeroOnly
	// zeroSent, sameSent: pages sent as ZERO and COPY records.
	zeroSent, sameSent atomic.Uint64
	sink               *TaskSink // TCP: the open task
	sinks              map[*TaskSink]struct{}
	err                error // sticky: the stream is out of sync
	closed             bool
	// handedOver: conn is the caller's connection (NewSocketClient).
	handedOver bool
	// GETs sent ahead of their replies (SendGet, RecvGet).
	pipe getPipe
	// blocking: raw's socket is in blocking mode (BlockingGets); a recv
	// that times out (SO_RCVTIMEO) fails with ErrGetTimeout.
	blocking bool
	// sp, when set, stripes the pages over several connections
	// (TransportOptions.Streams); the fields above are unused then.
	sp *striper
}

// errStripedGet: a striped client only uploads pages.
var errStripedGet = errors.New("page server: GET over a striped client (--streams): use one stream")

// Dial connects to a page server at addr ("host:port").
func Dial(ctx context.Context, addr string, o TransportOptions) (*Client, error) {
	t, err := o.transport()
	if err != nil {
		return nil, err
	}
	if o.Streams > 1 {
		return dialStriped(ctx, addr, o, o.Streams)
	}
	c := &Client{transport: t, sinks: map[*TaskSink]struct{}{}, compress: o.Compress != "", dedup: o.Dedup, zeroOnly: o.ZeroOnly}
	switch t {
	case TransportTCP:
		if c.conn, c.raw, err = dialTCP(ctx, addr, o); err != nil {
			return nil, err
		}
		if c.compress {
			// No splice or sendfile: every byte goes through zstd.
			zc, err := newZstdConn(c.conn)
			if err != nil {
				c.conn.Close()
				return nil, err
			}
			c.conn, c.raw = zc, nil
		}
	case TransportQUIC:
		if c.qc, err = dialQUIC(ctx, addr, o); err != nil {
			return nil, err
		}
		if c.ctrl, err = c.qc.OpenStreamSync(ctx); err != nil {
			c.qc.CloseWithError(1, "")
			return nil, fmt.Errorf("page server: open control stream: %w", err)
		}
		if c.compress {
			if c.zctrl, err = newZstdStream(c.ctrl); err != nil {
				c.qc.CloseWithError(1, "")
				return nil, err
			}
		}
	}
	return c, nil
}

// ctrlRW is the control channel.
func (c *Client) ctrlRW() io.ReadWriter {
	if c.zctrl != nil {
		return c.zctrl
	}
	if c.ctrl != nil {
		return c.ctrl
	}
	return c.conn
}

// push sends what TCP_CORK holds, before waiting for a reply.
func (c *Client) push() {
	if c.raw != nil && c.corked {
		setCork(c.raw, false)
		setCork(c.raw, true)
	}
}

func setCork(tc *net.TCPConn, on bool) {
	v := 0
	if on {
		v = 1
	}
	if rc, err := tc.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_CORK, v) })
	}
}

func sendHeader(w io.Writer, h wire.Header) error {
	var b [wire.HeaderSize]byte
	h.Marshal(b[:])
	_, err := w.Write(b[:])
	return err
}

func (c *Client) usable() error {
	if c.closed {
		return errors.New("page server: client closed")
	}
	return c.err
}

// fail marks the TCP stream unusable after a partial request.
func (c *Client) fail(err error) error {
	if c.err == nil {
		c.err = err
	}
	return err
}

// CheckParent asks whether the server's parent images hold dst's pagemap
// (PARENT).
func (c *Client) CheckParent(dst uint64) (bool, error) {
	if c.sp != nil {
		return c.sp.subs[0].CheckParent(dst)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.usable(); err != nil {
		return false, err
	}
	rw := c.ctrlRW()
	if err := sendHeader(rw, wire.Header{Cmd: wire.CmdParent, DstID: dst}); err != nil {
		return false, c.fail(fmt.Errorf("page server: PARENT: %w", err))
	}
	c.push()
	var b [4]byte
	if _, err := io.ReadFull(rw, b[:]); err != nil {
		return false, c.fail(fmt.Errorf("page server: PARENT reply: %w", err))
	}
	return int32(binary.NativeEndian.Uint32(b[:])) == 1, nil
}

// OpenTask starts the pagemap of dst (TaskDst or ShmemDst). With
// parentAware it sends OPEN2 and learns whether the server has a parent
// pagemap for it (then HOLE may be used); otherwise OPEN.
func (c *Client) OpenTask(ctx context.Context, dst uint64, parentAware bool) (*TaskSink, error) {
	if _, _, err := wire.DecodeDst(dst); err != nil {
		return nil, fmt.Errorf("page server: %w", err)
	}
	if c.sp != nil {
		c.mu.Lock()
		closed := c.closed
		c.mu.Unlock()
		if closed {
			return nil, errors.New("page server: client closed")
		}
		return c.sp.openTask(c, dst)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.usable(); err != nil {
		return nil, err
	}
	s := &TaskSink{c: c, dst: dst}
	if c.dedup {
		s.dd = newDedup()
		s.dd.zeroOnly = c.zeroOnly
	}
	var rw io.ReadWriter
	if c.qc != nil {
		st, err := c.qc.OpenStreamSync(ctx)
		if err != nil {
			return nil, fmt.Errorf("page server: open task stream: %w", err)
		}
		s.st, rw = st, st
		if c.compress {
			z, err := newZstdStream(st)
			if err != nil {
				st.CancelRead(1)
				st.CancelWrite(1)
				return nil, err
			}
			rw = z
		}
		s.rw = rw
	} else {
		if c.sink != nil {
			return nil, fmt.Errorf("page server: task %#x still open on this TCP connection", c.sink.dst)
		}
		rw, s.raw = c.conn, c.raw
		if c.raw != nil && !c.corked {
			// CRIU's way: corked by default, pushed before each wait.
			setCork(c.raw, true)
			c.corked = true
		}
	}
	s.w = rw
	cmd := uint32(wire.CmdOpen)
	if parentAware {
		cmd = wire.CmdOpen2
	}
	if err := sendHeader(rw, wire.Header{Cmd: cmd, DstID: dst}); err != nil {
		return nil, s.abort(fmt.Errorf("page server: OPEN %#x: %w", dst, err))
	}
	if parentAware {
		c.push()
		var b [1]byte
		if _, err := io.ReadFull(rw, b[:]); err != nil {
			return nil, s.abort(fmt.Errorf("page server: OPEN2 %#x reply: %w", dst, err))
		}
		s.hasParent = b[0] != 0
	}
	if s.st != nil {
		c.sinks[s] = struct{}{}
	} else {
		c.sink = s
	}
	return s, nil
}

// Deduped is how many pages this client's sinks sent as ZERO (all zero)
// and COPY (the same as a page sent before) records instead of data.
func (c *Client) Deduped() (zero, same uint64) { return c.zeroSent.Load(), c.sameSent.Load() }

// Get fetches up to nr pages at vaddr of task pid for lazy-pages (GET).
// dst must hold nr pages. It returns how many pages the server sent (it
// may send fewer: one pagemap entry at most), or ErrNoPages.
func (c *Client) Get(pid int, vaddr, nr uint64, dst []byte) (uint64, error) {
	if nr == 0 || uint64(len(dst))/PageSize < nr {
		return 0, fmt.Errorf("page server: GET %d pages into %d bytes", nr, len(dst))
	}
	if c.sp != nil {
		return 0, errStripedGet
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.usable(); err != nil {
		return 0, err
	}
	if c.pipe.inFlight() > 0 {
		return 0, errors.New("page server: GET while pipelined GETs await their replies")
	}
	rw := c.ctrlRW()
	// CRIU's lazy-pages sends the image id (the pid), not id<<8|type.
	if err := sendHeader(rw, wire.Header{Cmd: wire.CmdGet, NrPages: nr, Vaddr: vaddr, DstID: uint64(pid)}); err != nil {
		return 0, c.fail(fmt.Errorf("page server: GET: %w", err))
	}
	c.push()
	var hb [wire.HeaderSize]byte
	// Plain TCP: the reply is read on this thread, off Go's poller (a
	// lazy-pages fault waits on it), header and data in one readv: with
	// c.mu held, nothing else is asked meanwhile, so nothing but this
	// reply can follow its header.
	raw := c.raw != nil && !c.handedOver
	extra := 0
	if raw {
		var err error
		if extra, err = recvHead(c.raw, hb[:], dst[:nr*PageSize], c.blocking); err != nil {
			return 0, c.fail(fmt.Errorf("page server: GET reply: %w", err))
		}
	} else if _, err := io.ReadFull(rw, hb[:]); err != nil {
		return 0, c.fail(fmt.Errorf("page server: GET reply: %w", err))
	}
	h, _ := wire.Unmarshal(hb[:])
	if cmd := h.Command(); cmd != wire.CmdAddF && cmd != wire.CmdAdd || h.NrPages > nr ||
		h.NrPages != 0 && (h.Vaddr != vaddr || h.DstID != uint64(pid)) {
		return 0, c.fail(fmt.Errorf("page server: GET %#x+%d: bad reply %s nr_pages=%d vaddr=%#x dst_id=%#x",
			vaddr, nr, wire.CommandName(h.Command()), h.NrPages, h.Vaddr, h.DstID))
	}
	if n := int(h.NrPages * PageSize); extra > n {
		return 0, c.fail(fmt.Errorf("page server: GET %#x+%d: %d bytes after a reply of %d pages", vaddr, nr, extra-n, h.NrPages))
	}
	if h.NrPages == 0 {
		return 0, ErrNoPages
	}
	var err error
	if rest := dst[extra : h.NrPages*PageSize]; raw {
		err = recvFull(c.raw, rest, c.blocking)
	} else {
		_, err = io.ReadFull(rw, rest)
	}
	if err != nil {
		return 0, c.fail(fmt.Errorf("page server: GET data: %w", err))
	}
	return h.NrPages, nil
}

// ErrGetTimeout is returned by Get and RecvGet on a client in blocking
// mode (BlockingGets) when the server sent nothing for the timeout.
var ErrGetTimeout = errors.New("page server: no reply within the timeout")

// BlockingGets puts a plain TCP connection in blocking mode, with timeout
// as SO_RCVTIMEO and SO_SNDTIMEO: Get then costs one send(2) and, as a
// rule, one readv(2) on the caller's thread, which the kernel wakes when
// the reply comes, and RecvGet one recv(2) per reply (MSG_WAITALL), where a
// non-blocking socket costs a failed read and a poll(2) more per reply. A
// server silent for timeout fails the call with ErrGetTimeout, so callers
// need no timer of their own. Call it before any GET; it refuses TLS, QUIC,
// compression and striping (their bytes go through Go's poller).
func (c *Client) BlockingGets(timeout time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sp != nil || c.raw == nil || c.handedOver {
		return errors.New("page server: blocking GETs need a plain TCP connection")
	}
	if timeout <= 0 {
		return errors.New("page server: blocking GETs need a timeout")
	}
	rc, err := c.raw.SyscallConn()
	if err != nil {
		return err
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	var serr error
	if err := rc.Control(func(fd uintptr) {
		if serr = unix.SetsockoptTimeval(int(fd), unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); serr != nil {
			return
		}
		if serr = unix.SetsockoptTimeval(int(fd), unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); serr != nil {
			return
		}
		// Go's poller keeps the descriptor registered: its own reads
		// and writes (CLOSE's) block in the kernel too, and if the
		// timeout ends one, wait in the poller as before.
		serr = unix.SetNonblock(int(fd), false)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("page server: blocking GETs: %w", serr)
	}
	c.blocking = true
	return nil
}

// Abort disconnects without CLOSE: the server treats the session as failed
// and removes the images it was writing (a dump that failed half-way). It
// does not wait for an operation in progress, which fails at once: a
// watchdog may call it to end a stalled transfer.
func (c *Client) Abort() {
	// The transport is set once by Dial; closing it is safe while another
	// goroutine is blocked on it (and holds c.mu).
	switch {
	case c.sp != nil:
		c.sp.abort()
	case c.qc != nil:
		c.qc.CloseWithError(1, "aborted")
	case c.handedOver:
		// Closing our descriptor would not end a connection the caller
		// still holds: shut it down, so that the server learns now that
		// the session failed (and blocked splices wake up).
		if sc, ok := c.conn.(syscall.Conn); ok {
			if rc, err := sc.SyscallConn(); err == nil {
				rc.Control(func(fd uintptr) { unix.Shutdown(int(fd), unix.SHUT_RDWR) })
			}
		}
		c.conn.Close()
	case c.raw != nil:
		// splice and sendfile run on the raw fd, outside Go's poller:
		// only shutdown wakes them.
		if rc, err := c.raw.SyscallConn(); err == nil {
			rc.Control(func(fd uintptr) { unix.Shutdown(int(fd), unix.SHUT_RDWR) })
		}
		c.conn.Close()
	default:
		c.conn.Close()
	}
}

// Close ends open tasks, sends CLOSE, waits for the server's status (it
// has then closed every image of this connection) and disconnects.
func (c *Client) Close() error {
	if c.sp != nil {
		c.mu.Lock()
		closed := c.closed
		c.closed = true
		c.mu.Unlock()
		if closed {
			return nil
		}
		return c.sp.close()
	}
	c.mu.Lock()
	sinks := make([]*TaskSink, 0, len(c.sinks))
	for s := range c.sinks {
		sinks = append(sinks, s)
	}
	c.mu.Unlock()
	var err error
	for _, s := range sinks {
		if cerr := s.Close(); err == nil {
			err = cerr
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return err
	}
	c.closed = true
	c.sink = nil
	if c.err == nil {
		c.err = c.drainGets()
	}
	if c.err == nil {
		if serr := c.sendClose(c.ctrlRW()); err == nil {
			err = serr
		}
	} else if err == nil {
		err = c.err
	}
	if c.qc != nil {
		c.ctrl.Close()
		code := quic.ApplicationErrorCode(0)
		if err != nil {
			code = 1
		}
		c.qc.CloseWithError(code, "")
	} else {
		c.conn.Close()
	}
	return err
}

func (c *Client) sendClose(rw io.ReadWriter) error {
	cmd := uint32(wire.CmdClose)
	if c.handedOver {
		// As CRIU: the connection outlives this session, so the server
		// is told to end it (FORCE_CLOSE) rather than wait for EOF.
		cmd = wire.CmdForceClose
	}
	if err := sendHeader(rw, wire.Header{Cmd: cmd}); err != nil {
		return fmt.Errorf("page server: %s: %w", wire.CommandName(uint16(cmd)), err)
	}
	c.push()
	var b [4]byte
	if _, err := io.ReadFull(rw, b[:]); err != nil {
		return fmt.Errorf("page server: CLOSE: no answer: %w", err)
	}
	if st := int32(binary.NativeEndian.Uint32(b[:])); st != 0 {
		return fmt.Errorf("page server: CLOSE: status %d (the server could not complete the images)", st)
	}
	return nil
}

// TaskSink sends the pages of one pagemap. Ranges go in ascending address
// order, as a dump produces them.
type TaskSink struct {
	c         *Client
	dst       uint64
	w         io.Writer
	raw       *net.TCPConn
	st        *quic.Stream
	rw        io.ReadWriter // st, or its zstd stream
	hasParent bool
	buf       []byte
	done      bool
	err       error
	// sp: the task is striped (stripe_client.go); seq and off are the
	// next entry's place in the pagemap and in the pages file, under smu.
	sp       *striper
	smu      sync.Mutex
	seq, off uint64
	// dd: zero and duplicate pages go as ZERO and COPY records
	// (dedup.go).
	dd *dedup
}

// HasParent is the server's OPEN2 answer: a parent pagemap exists, so
// unchanged pages may be sent as holes.
func (s *TaskSink) HasParent() bool { return s.hasParent }

func (s *TaskSink) lock() func() {
	if s.sp != nil {
		s.smu.Lock()
		return s.smu.Unlock
	}
	if s.st != nil {
		return func() {} // the stream is the sink's own
	}
	s.c.mu.Lock()
	return s.c.mu.Unlock
}

func (s *TaskSink) usable() error {
	if s.done {
		return errors.New("page server: task closed")
	}
	if s.err != nil {
		return s.err
	}
	if s.sp != nil {
		return s.sp.failed()
	}
	if s.st == nil {
		return s.c.usable()
	}
	return nil
}

// abort marks the sink (and, over TCP, the client) unusable.
func (s *TaskSink) abort(err error) error {
	if s.err == nil {
		s.err = err
	}
	if s.sp != nil {
		s.sp.fail(err)
		return err
	}
	if s.st != nil {
		s.st.CancelWrite(1)
		s.st.CancelRead(1)
	} else {
		s.c.fail(err)
	}
	return err
}

// AddPages sends nr pages at vaddr with pagemap flags (FlagPresent, with
// FlagLazy as the dump marks them). With FlagPresent, exactly nr*PageSize
// bytes are read from src: a pipe (*os.File) is spliced to the socket, a
// regular file sent with sendfile from its current offset, anything else
// copied through a bounded buffer. src is unused without FlagPresent.
func (s *TaskSink) AddPages(vaddr, nr uint64, flags uint32, src io.Reader) error {
	defer s.lock()()
	if err := s.usable(); err != nil {
		return err
	}
	if err := s.checkAdd(vaddr, nr, flags); err != nil {
		return err
	}
	if s.sp != nil {
		return s.stripedAdd(vaddr, nr, flags, src, nil)
	}
	if flags&FlagPresent == 0 {
		if err := sendHeader(s.w, wire.Header{Cmd: wire.MakeCmd(wire.CmdAddF, uint16(flags)), NrPages: nr, Vaddr: vaddr, DstID: s.dst}); err != nil {
			return s.abort(fmt.Errorf("page server: ADD %#x: %w", vaddr, err))
		}
		return nil
	}
	if s.dd != nil {
		if pb, ok := src.(pageBuffer); ok {
			data := pb.Take(int(nr * PageSize))
			if uint64(len(data)) != nr*PageSize {
				return s.abort(fmt.Errorf("page server: ADD %#x+%d pages: source ended after %d bytes", vaddr, nr, len(data)))
			}
			return s.sendDedup(vaddr, flags, data)
		}
		s.dd.sent += nr
	}
	// The server takes at most maxAddPages pages of data per request.
	for nr > 0 {
		k := min(nr, maxAddPages)
		if err := sendHeader(s.w, wire.Header{Cmd: wire.MakeCmd(wire.CmdAddF, uint16(flags)), NrPages: k, Vaddr: vaddr, DstID: s.dst}); err != nil {
			return s.abort(fmt.Errorf("page server: ADD %#x: %w", vaddr, err))
		}
		n := int64(k * PageSize)
		got, err := s.sendData(src, n)
		if err == nil && got < n {
			err = fmt.Errorf("source ended after %d of %d bytes", got, n)
		}
		if err != nil {
			return s.abort(fmt.Errorf("page server: ADD %#x+%d pages: %w", vaddr, k, err))
		}
		vaddr += uint64(n)
		nr -= k
	}
	return nil
}

// AddPagesBytes is AddPages from memory: header and data leave in one
// writev.
func (s *TaskSink) AddPagesBytes(vaddr uint64, flags uint32, data []byte) error {
	defer s.lock()()
	if err := s.usable(); err != nil {
		return err
	}
	if flags&FlagPresent == 0 || len(data)%PageSize != 0 {
		return fmt.Errorf("page server: AddPagesBytes needs FlagPresent and whole pages (%d bytes)", len(data))
	}
	if err := s.checkAdd(vaddr, uint64(len(data)/PageSize), flags); err != nil {
		return err
	}
	if s.sp != nil {
		return s.stripedAdd(vaddr, uint64(len(data)/PageSize), flags, nil, data)
	}
	if s.dd != nil {
		return s.sendDedup(vaddr, flags, data)
	}
	for len(data) > 0 {
		k := min(len(data), int(maxAddPages)*PageSize)
		if err := s.addBytes(vaddr, flags, data[:k]); err != nil {
			return err
		}
		vaddr += uint64(k)
		data = data[k:]
	}
	return nil
}

func (s *TaskSink) addBytes(vaddr uint64, flags uint32, data []byte) error {
	nr := uint64(len(data) / PageSize)
	var hb [wire.HeaderSize]byte
	wire.Header{Cmd: wire.MakeCmd(wire.CmdAddF, uint16(flags)), NrPages: nr, Vaddr: vaddr, DstID: s.dst}.Marshal(hb[:])
	var err error
	if s.raw != nil {
		bufs := net.Buffers{hb[:], data}
		_, err = bufs.WriteTo(s.raw)
	} else {
		if _, err = s.w.Write(hb[:]); err == nil {
			_, err = s.w.Write(data)
		}
	}
	if err != nil {
		return s.abort(fmt.Errorf("page server: ADD %#x+%d pages: %w", vaddr, nr, err))
	}
	return nil
}

func (s *TaskSink) checkAdd(vaddr, nr uint64, flags uint32) error {
	if flags > 0xffff || !wire.ValidFlags(uint16(flags)) {
		return fmt.Errorf("page server: bad pagemap flags %#x", flags)
	}
	if err := checkRange(vaddr, nr); err != nil {
		return fmt.Errorf("page server: %w", err)
	}
	return nil
}

func (s *TaskSink) sendData(src io.Reader, n int64) (int64, error) {
	if src == nil {
		return 0, errors.New("no page source")
	}
	if f, ok := src.(*os.File); ok && s.raw != nil {
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err == nil {
			switch st.Mode & unix.S_IFMT {
			case unix.S_IFIFO:
				return splicePipe(s.raw, f, n)
			case unix.S_IFREG:
				// TCPConn.ReadFrom uses sendfile for files.
				return s.raw.ReadFrom(io.LimitReader(f, n))
			}
		}
	}
	if s.buf == nil {
		s.buf = make([]byte, clientCopyBuf)
	}
	return io.CopyBuffer(writerOnly{s.w}, io.LimitReader(src, n), s.buf)
}

type writerOnly struct{ w io.Writer }

func (w writerOnly) Write(b []byte) (int, error) { return w.w.Write(b) }

// Hole records nr pages at vaddr as unchanged since the parent images
// (HOLE, flags PARENT). The server checks them against its parent.
func (s *TaskSink) Hole(vaddr, nr uint64) error {
	defer s.lock()()
	if err := s.usable(); err != nil {
		return err
	}
	if err := checkRange(vaddr, nr); err != nil {
		return fmt.Errorf("page server: %w", err)
	}
	if s.sp != nil {
		return s.stripedAdd(vaddr, nr, FlagParent, nil, nil)
	}
	if err := sendHeader(s.w, wire.Header{Cmd: wire.CmdHole, NrPages: nr, Vaddr: vaddr, DstID: s.dst}); err != nil {
		return s.abort(fmt.Errorf("page server: HOLE %#x: %w", vaddr, err))
	}
	return nil
}

// Close ends the task. Over QUIC it sends CLOSE on the task's stream and
// waits until the server has closed the images; over TCP the images are
// closed by the next OpenTask or by Client.Close (CRIU's protocol has no
// per-task acknowledgement).
func (s *TaskSink) Close() error {
	c := s.c
	if s.sp != nil {
		defer s.lock()()
		if s.done {
			return nil
		}
		s.done = true
		return s.stripedClose()
	}
	if s.st == nil {
		c.mu.Lock()
		defer c.mu.Unlock()
		if s.done {
			return nil
		}
		s.done = true
		if c.sink == s {
			c.sink = nil
		}
		return s.err
	}
	if s.done {
		return nil
	}
	s.done = true
	c.mu.Lock()
	delete(c.sinks, s)
	c.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	err := c.sendClose(s.rw)
	if err != nil {
		s.st.CancelRead(1)
		s.st.CancelWrite(1)
		return fmt.Errorf("task %#x: %w", s.dst, err)
	}
	s.st.Close()
	return nil
}
