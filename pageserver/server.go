package pageserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"godwit/internal/images"
	"godwit/internal/logging"
)

// Config configures a page server.
type Config struct {
	// ImagesDir receives pagemap-*.img and pages-*.img (created if
	// missing). Dir, when set, is used instead (e.g. an images dir passed
	// by fd); the server does not close it.
	ImagesDir string
	Dir       *images.Dir
	// PrevImagesDir is the parent images directory (--prev-images-dir),
	// relative to ImagesDir or absolute. As CRIU does, a "parent" symlink
	// to it is created in ImagesDir; OPEN2/PARENT answers and HOLE checks
	// read the parent through that link.
	PrevImagesDir string
	// Lazy serves GET requests from the images (--lazy-pages) and refuses
	// page uploads. It requires an authenticated listener (TLS or QUIC)
	// on every address, loopback included.
	Lazy bool
	// LazyExitOnClose (with Lazy) ends Serve once a lazy-pages daemon
	// said it has every page (CLOSE) and no connection is left: the
	// source may go.
	LazyExitOnClose bool
	// LazyMemory (with Lazy) serves the pages the images mark lazy
	// without data (dump --lazy-pages) from the dumped task's memory.
	LazyMemory LazyMemory
	// Log receives one line per refused request or connection; nil means
	// logging.Default().
	Log *logging.Logger
	// Metrics may be nil.
	Metrics *Metrics
	// MaxConns bounds connections served at once (default 64); more are
	// closed with a log line. Under TLS only finished handshakes count:
	// peers that never complete one must not lock certified clients out.
	MaxConns int
	// MaxConnsPerPeer bounds the connections of one peer address
	// (default 8; IPv6 peers are grouped by /64), so that one host cannot
	// take every slot.
	MaxConnsPerPeer int
	// HandshakeTimeout (default 5 s) bounds a TLS handshake over TCP.
	// Handshakes have their own budget: maxHandshakes at once (accepting
	// waits for a free one), maxHandshakesPerPeer per peer (more are
	// closed at once). QUIC connections are handed over by quic-go only
	// once their handshake is done (HandshakeIdleTimeout, 5 s).
	HandshakeTimeout time.Duration
	// MaxBytes bounds the bytes all sessions together may write
	// (--max-bytes): page data, and pagemapEntryMax per pagemap entry
	// (stripeEntRAM per entry of a striped pagemap, held until END_STRIPE)
	// (ADDs without data too); 0 means no bound. MaxFiles bounds the image files
	// they create (--max-files, default 16384; each OPEN makes two).
	MaxBytes int64
	MaxFiles int
	// MaxStripeEntries bounds the entries of striped pagemaps that all
	// sessions together hold in memory until their END_STRIPE (default
	// defaultMaxStripeEntries, about stripeEntRAM bytes each): any peer
	// may send OPEN_STRIPE, and holes cost it no data.
	MaxStripeEntries int64
	// IdleTimeout (default 2 min) bounds the wait for a request, and a
	// QUIC connection's time without any request in progress: keep-alive
	// packets don't count. ReadTimeout (default 30 s) bounds the arrival
	// of each 4 MiB of page data and the sending of each reply.
	IdleTimeout, ReadTimeout time.Duration
	// Once ends Serve after the first session, as CRIU's page server
	// does (--single-session; the RPC's PAGE_SERVER and PAGE_SERVER_CHLD,
	// whose callers wait for the server to exit): Serve then returns the
	// session's error, if any. Sessions (default 1) is how many
	// sessions Once waits for: a striped client's connections
	// (TransportOptions.Streams); the first that fails ends Serve.
	Once     bool
	Sessions int
	// PagesIDBase is the first pages-<id>.img number. Default 0x10001, as
	// CRIU's page server (up_page_ids_base), so that page-server and
	// local images in one directory never collide.
	PagesIDBase uint32
}

// DefaultPagesIDBase is CRIU's first page-server pages id (1 + 0x10000).
const DefaultPagesIDBase = 0x10001

const (
	defaultMaxConns         = 64
	defaultMaxConnsPerPeer  = 8
	defaultMaxFiles         = 16384
	defaultMaxStripeEntries = 1 << 21
	defaultIdleTimeout      = 2 * time.Minute
	defaultReadTimeout      = 30 * time.Second
	defaultHandshakeTimeout = 5 * time.Second
	// maxHandshakes bounds TLS handshakes in progress; with
	// maxHandshakesPerPeer, a peer must hold 16 addresses (IPv6: /64s) to
	// fill the budget, and then only delays other clients by
	// HandshakeTimeout at a time (they wait in the listen backlog).
	maxHandshakes        = 64
	maxHandshakesPerPeer = 4
	// copyBufSize is the per-session buffer for page data that cannot be
	// spliced (QUIC, TLS) and for GET replies: the per-connection memory
	// bound together with readBufSize.
	copyBufSize = 256 << 10
	readBufSize = 16 << 10
	// maxUserAddr bounds vaddr+len: no user address space (even with 5-level
	// paging) or shmem object in an image goes past 2^57.
	maxUserAddr = 1 << 57
	// maxPID bounds a task id: pid_max can't exceed 2^22 (PID_MAX_LIMIT).
	maxPID = 1 << 22
	// maxParentDepth bounds the parent chain GET follows.
	maxParentDepth = 64
)

// Server is a page server. Create it with NewServer, run it with Serve.
type Server struct {
	cfg     Config
	dir     *images.Dir
	ownDir  bool
	log     *logging.Logger
	m       *Metrics
	nextID  atomic.Uint32
	nconns  atomic.Int32
	files   atomic.Int64 // image files created and kept
	bytes   atomic.Int64 // page data written and kept
	perPeer map[string]int
	hsSem   chan struct{}  // TLS handshakes in progress
	hsPeer  map[string]int // TLS handshakes in progress per peer group
	wg      sync.WaitGroup
	mu      sync.Mutex
	open    map[uint64]string // dst (normalised) → peer holding it
	// stripes are the striped pagemaps being written (stripe.go).
	stripeMu sync.Mutex
	stripes  map[uint64]*stripe
	// stripeEnts counts the striped entries held (MaxStripeEntries).
	stripeEnts atomic.Int64
	// sessions counts the sessions ended (Once).
	sessions int
	conns    map[io.Closer]struct{}
	lazy     lazyImages
	closing  bool
	// lazyClosed: a lazy session got CLOSE; stopServe ends Serve.
	lazyClosed atomic.Bool
	stopServe  context.CancelFunc
	onceErr    error // the Once session's error
}

// NewServer opens the images directory and prepares the parent link.
func NewServer(cfg Config) (*Server, error) {
	s := &Server{cfg: cfg, log: cfg.Log, m: cfg.Metrics,
		open: map[uint64]string{}, stripes: map[uint64]*stripe{}, conns: map[io.Closer]struct{}{}, perPeer: map[string]int{},
		hsSem: make(chan struct{}, maxHandshakes), hsPeer: map[string]int{}}
	if s.log == nil {
		s.log = logging.Default()
	}
	if cfg.MaxConns <= 0 {
		s.cfg.MaxConns = defaultMaxConns
	}
	if cfg.MaxConnsPerPeer <= 0 {
		s.cfg.MaxConnsPerPeer = defaultMaxConnsPerPeer
	}
	if cfg.MaxFiles <= 0 {
		s.cfg.MaxFiles = defaultMaxFiles
	}
	if cfg.MaxStripeEntries <= 0 {
		s.cfg.MaxStripeEntries = defaultMaxStripeEntries
	}
	if cfg.IdleTimeout <= 0 {
		s.cfg.IdleTimeout = defaultIdleTimeout
	}
	if cfg.ReadTimeout <= 0 {
		s.cfg.ReadTimeout = defaultReadTimeout
	}
	if cfg.HandshakeTimeout <= 0 {
		s.cfg.HandshakeTimeout = defaultHandshakeTimeout
	}
	if cfg.PagesIDBase == 0 {
		s.cfg.PagesIDBase = DefaultPagesIDBase
	}
	s.nextID.Store(s.cfg.PagesIDBase)
	s.dir = cfg.Dir
	if s.dir == nil {
		if cfg.ImagesDir == "" {
			return nil, errors.New("page server: no images directory")
		}
		if !cfg.Lazy {
			// The images hold process memory: only the owner may look.
			if err := os.MkdirAll(cfg.ImagesDir, 0o700); err != nil {
				return nil, fmt.Errorf("page server: create images dir: %w", err)
			}
		}
		d, err := images.Open(cfg.ImagesDir, !cfg.Lazy)
		if err != nil {
			return nil, fmt.Errorf("page server: %w", err)
		}
		s.dir, s.ownDir = d, true
		if st, err := os.Stat(cfg.ImagesDir); err == nil && st.Mode().Perm()&0o077 != 0 && !cfg.Lazy {
			// An existing directory keeps its mode; say what it exposes.
			s.log.Warnf("page-server: images dir %s is mode %v: other users can see the images' names (files are 0600)", cfg.ImagesDir, st.Mode().Perm())
		}
	}
	if cfg.PrevImagesDir != "" {
		// CRIU's open_image_dir: symlink "parent" → --prev-images-dir,
		// an existing link is kept.
		if !s.dir.Exists(parentLink) {
			if err := s.dir.Symlink(cfg.PrevImagesDir, parentLink); err != nil {
				s.Close()
				return nil, fmt.Errorf("page server: link parent images: %w", err)
			}
		}
	}
	s.lazy.s = s
	return s, nil
}

const parentLink = "parent"

// Close releases the images directory and the lazy readers. Call it after
// Serve returned.
func (s *Server) Close() error {
	s.lazy.close()
	if s.ownDir {
		s.ownDir = false
		return s.dir.Close()
	}
	return nil
}

// Serve runs a page server on ln until ctx is cancelled (then it closes ln
// and every connection and returns nil) or accepting fails.
func Serve(ctx context.Context, ln *Listener, cfg Config) error {
	s, err := NewServer(cfg)
	if err != nil {
		return err
	}
	defer s.Close()
	return s.Serve(ctx, ln)
}

// Serve accepts connections on ln, one goroutine each.
func (s *Server) Serve(parent context.Context, ln *Listener) error {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	s.mu.Lock()
	s.stopServe = cancel
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		s.closeAll()
	})
	defer stop()
	if s.cfg.Lazy && !ln.Authenticated() {
		// CRIU's default. Even on loopback any local user can read
		// the pages of any task from images only their owner may read:
		// say so.
		s.log.Warnf("page-server: serving lazy pages on %s without authentication: any peer that reaches it, local users included, can read the dumped memory (use --tls or --transport quic)", ln.Addr())
	} else if !ln.Authenticated() && !isLoopback(ln.Addr()) {
		s.log.Warnf("page-server: serving %s without authentication: any peer that reaches it can write images (use --tls or --transport quic)", ln.Addr())
	}
	refused := func(peer string, err error) {
		s.m.error(reasonTLS)
		s.log.Errorf("page-server: %s: client certificate refused: %v", peer, err)
	}
	ln.onRefuse.Store(&refused)
	defer ln.onRefuse.Store(nil)
	var err error
	if ln.quic != nil {
		err = s.acceptQUIC(ctx, ln)
	} else {
		err = s.acceptTCP(ctx, ln)
	}
	cancel()
	s.closeAll()
	s.wg.Wait()
	if parent.Err() != nil {
		return nil
	}
	if err == nil {
		s.mu.Lock()
		err = s.onceErr
		s.mu.Unlock()
	}
	return err
}

func (s *Server) acceptTCP(ctx context.Context, ln *Listener) error {
	var backoff time.Duration
	for {
		if ln.tlsConf != nil {
			// Wait for a handshake slot: meanwhile new peers wait in the
			// listen backlog instead of being refused.
			select {
			case s.hsSem <- struct{}{}:
			case <-ctx.Done():
				return nil
			}
		}
		c, err := ln.tcp.Accept()
		if err != nil {
			if ln.tlsConf != nil {
				<-s.hsSem
			}
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, errTooManyFiles) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warnf("page-server: accept: %v; retrying in %v", err, backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("page server: accept: %w", err)
		}
		backoff = 0
		if ln.tlsConf != nil {
			if !s.admitHandshake(c, c.RemoteAddr()) {
				<-s.hsSem
				continue
			}
			go s.serveTLS(ctx, c, ln.tlsConf, ln.compress)
			continue
		}
		// A lazy session reads outside the netpoller (rawReadConn):
		// closing it at shutdown must shut it down first.
		cl := shutdownCloser{c}
		if !s.admit(cl, c.RemoteAddr()) {
			continue
		}
		s.m.conn(string(TransportTCP))
		go func() {
			defer s.release(cl, c.RemoteAddr())
			if !ln.compress {
				s.serveTCP(c, c, c.(*net.TCPConn), nil)
				return
			}
			zc, err := newZstdConnWindow(c, s.encWindow())
			if err != nil {
				s.log.Errorf("page-server: %s: %v", c.RemoteAddr(), err)
				return
			}
			s.serveTCP(c, zc, nil, nil)
		}()
	}
}

// admitHandshake counts a new TLS connection against the handshake budget
// of its peer and tracks it for shutdown; over the limit it closes it.
// The caller holds a slot of hsSem.
func (s *Server) admitHandshake(c net.Conn, peer net.Addr) bool {
	host := peerHost(peer)
	s.mu.Lock()
	if s.closing || s.hsPeer[host] >= maxHandshakesPerPeer {
		closing := s.closing
		s.mu.Unlock()
		if !closing {
			s.m.error(reasonLimit)
			s.log.Errorf("page-server: %v: refused: %d TLS handshakes from %s in progress", peer, maxHandshakesPerPeer, host)
		}
		c.Close()
		return false
	}
	s.hsPeer[host]++
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	return true
}

// serveTLS runs the handshake within HandshakeTimeout, then counts the
// connection against MaxConns and serves it.
func (s *Server) serveTLS(ctx context.Context, c net.Conn, tlsConf *tls.Config, compress bool) {
	defer s.wg.Done()
	peer := c.RemoteAddr()
	host := peerHost(peer)
	tc := tls.Server(c, tlsConf)
	hctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	<-s.hsSem
	s.mu.Lock()
	if s.hsPeer[host]--; s.hsPeer[host] <= 0 {
		delete(s.hsPeer, host)
	}
	delete(s.conns, c)
	s.mu.Unlock()
	if err != nil {
		c.Close()
		if ctx.Err() == nil {
			s.m.error(reasonTLS)
			s.log.Errorf("page-server: %s: TLS handshake: %v", peer, err)
		}
		return
	}
	if !s.admit(c, peer) {
		return
	}
	s.m.conn(string(TransportTCP))
	defer s.release(c, peer)
	certs := tc.ConnectionState().PeerCertificates
	if !compress {
		s.serveTCP(c, tc, nil, certs)
		return
	}
	zc, err := newZstdConnWindow(tc, s.encWindow())
	if err != nil {
		s.log.Errorf("page-server: %s: %v", peer, err)
		return
	}
	s.serveTCP(c, zc, nil, certs)
}

// admit counts a connection against MaxConns and tracks it for shutdown;
// it closes and refuses the connection over the limit.
func (s *Server) admit(c io.Closer, peer net.Addr) bool {
	if int(s.nconns.Add(1)) > s.cfg.MaxConns {
		s.nconns.Add(-1)
		s.m.error(reasonLimit)
		s.log.Errorf("page-server: %v: refused: %d connections already served", peer, s.cfg.MaxConns)
		c.Close()
		return false
	}
	host := peerHost(peer)
	s.mu.Lock()
	if s.closing || s.perPeer[host] >= s.cfg.MaxConnsPerPeer {
		closing := s.closing
		s.mu.Unlock()
		s.nconns.Add(-1)
		if !closing {
			s.m.error(reasonLimit)
			s.log.Errorf("page-server: %v: refused: %d connections from %s already served", peer, s.cfg.MaxConnsPerPeer, host)
		}
		c.Close()
		return false
	}
	s.perPeer[host]++
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	return true
}

func (s *Server) release(c io.Closer, peer net.Addr) {
	c.Close()
	host := peerHost(peer)
	s.mu.Lock()
	if s.perPeer[host]--; s.perPeer[host] <= 0 {
		delete(s.perPeer, host)
	}
	delete(s.conns, c)
	s.mu.Unlock()
	left := s.nconns.Add(-1)
	s.m.connDone()
	s.lazyDone(left)
	s.wg.Done()
}

// closeAll closes every connection (a TCP one is a shutdownCloser: a lazy
// session's raw read is woken first). The Closes run without s.mu, which
// the sessions' release takes.
func (s *Server) closeAll() {
	s.mu.Lock()
	s.closing = true
	conns := make([]io.Closer, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// serveTCP serves one admitted connection: conn is c itself or the TLS
// connection over it; raw, when set, lets page data be spliced; certs
// are the TLS peer's.
func (s *Server) serveTCP(c, conn net.Conn, raw *net.TCPConn, certs []*x509.Certificate) {
	peer := c.RemoteAddr().String()
	s.log.Infof("page-server: %s: connected", peer)
	rd := conn
	if s.cfg.Lazy && raw != nil && conn == c {
		if rc, err := newRawReadConn(raw, s.cfg.IdleTimeout, s.cfg.ReadTimeout); err == nil {
			rd = rc
		}
	}
	ss := s.newSession(peer, rd, conn, raw)
	ss.owner = stripeOwner(c.RemoteAddr(), certs)
	ss.dl = rd
	err := ss.run()
	s.finish(ss, err)
	if err == nil && ss.closed && !s.cfg.Lazy {
		// As CRIU: wait for the peer to close first, so that the
		// TIME_WAIT bucket stays on its side.
		var b [1]byte
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, _ := conn.Read(b[:]); n != 0 {
			s.log.Warnf("page-server: %s: unexpected data after CLOSE", peer)
		}
	}
}

func (s *Server) acceptQUIC(ctx context.Context, ln *Listener) error {
	for {
		qc, err := ln.quic.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("page server: quic accept: %w", err)
		}
		closer := quicCloser{qc}
		if !s.admit(closer, qc.RemoteAddr()) {
			continue
		}
		s.m.conn(string(TransportQUIC))
		go s.serveQUIC(ctx, qc, closer, ln.compress)
	}
}

type quicCloser struct{ c *quic.Conn }

func (q quicCloser) Close() error { return q.c.CloseWithError(0, "") }

// serveQUIC runs one session per stream the peer opens: the control stream
// (PARENT, GET, the final CLOSE) and one stream per task (OPEN2, ADD...,
// CLOSE). Streams are bounded by the QUIC config (MaxIncomingStreams).
func (s *Server) serveQUIC(ctx context.Context, qc *quic.Conn, closer quicCloser, compress bool) {
	defer s.release(closer, qc.RemoteAddr())
	peer := qc.RemoteAddr().String()
	owner := stripeOwner(qc.RemoteAddr(), qc.ConnectionState().TLS.PeerCertificates)
	s.log.Infof("page-server: %s: connected (quic)", peer)
	var wg sync.WaitGroup
	defer wg.Wait()
	// busy counts streams being served. QUIC's own idle timeout is reset
	// by any packet, the peer's PINGs included, so the connection is
	// closed here when no stream was open for IdleTimeout.
	var busy atomic.Int32
	for {
		actx, cancel := context.WithTimeout(ctx, s.cfg.IdleTimeout)
		st, err := qc.AcceptStream(actx)
		cancel()
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
				if busy.Load() > 0 {
					continue
				}
				s.m.error(reasonIdle)
				s.log.Errorf("page-server: %s: idle for %v, closing", peer, s.cfg.IdleTimeout)
				qc.CloseWithError(1, "idle")
				return
			}
			var ae *quic.ApplicationError
			if !errors.As(err, &ae) || ae.ErrorCode != 0 {
				if ctx.Err() == nil {
					s.log.Infof("page-server: %s: connection ended: %v", peer, err)
				}
			}
			return
		}
		wg.Add(1)
		busy.Add(1)
		go func() {
			defer wg.Done()
			defer busy.Add(-1)
			name := fmt.Sprintf("%s/%d", peer, st.StreamID())
			var rw io.ReadWriter = st
			if compress {
				z, err := newZstdStreamWindow(st, s.encWindow())
				if err != nil {
					s.log.Errorf("page-server: %s: %v", name, err)
					st.CancelRead(1)
					st.CancelWrite(1)
					return
				}
				rw = z
			}
			ss := s.newSession(name, rw, rw, nil)
			ss.owner = owner
			ss.dl = st
			// The client opens its control stream first (stream 0): it
			// ends the connection with CLOSE. A task stream ending is
			// not the end of the session Once waits for.
			ss.taskStream = st.StreamID() != 0
			err := ss.run()
			if err == nil && s.cfg.Once && !ss.taskStream && ss.closed {
				// As over TCP: the peer reads the reply to CLOSE and
				// closes first; ending Serve now could close the
				// connection before the reply is sent.
				st.Close()
				select {
				case <-qc.Context().Done():
				case <-time.After(10 * time.Second):
				}
			}
			s.finish(ss, err)
			if err != nil {
				st.CancelRead(1)
				st.CancelWrite(1)
				return
			}
			st.Close()
		}()
	}
}

// finish logs how a session ended and drops an unfinished task; with
// Once, it ends Serve.
func (s *Server) finish(ss *session, err error) {
	if ss.task != nil && err == nil && !ss.closed && !s.cfg.Lazy {
		err = reqErr(reasonUnflushed, errors.New("the data were not flushed (no CLOSE)"))
	}
	if s.cfg.Once {
		// The error is recorded before this session's striped pagemaps
		// fail: the other connections' errors that follow are not the
		// cause.
		s.mu.Lock()
		stop := s.stopServe
		if err != nil && s.onceErr == nil {
			s.onceErr = fmt.Errorf("page server: %s: %w", ss.peer, err)
		}
		if !ss.taskStream {
			s.sessions++
		}
		if err == nil && (ss.taskStream || s.sessions < max(s.cfg.Sessions, 1)) {
			stop = nil
		}
		s.mu.Unlock()
		if stop != nil {
			defer stop()
		}
	}
	if len(ss.stripes) > 0 {
		ss.dropStripes(err)
	}
	if ss.task != nil {
		ss.dropTask()
	}
	if err != nil {
		var re *requestError
		reason := reasonIO
		if errors.As(err, &re) {
			reason = re.reason
		}
		s.m.error(reason)
		s.log.Errorf("page-server: %s: %v", ss.peer, err)
		return
	}
	s.log.Infof("page-server: %s: session over", ss.peer)
}

// claim marks dst as written by peer; a dst already open elsewhere is an
// error (two writers would interleave one pagemap).
func (s *Server) claim(dst uint64, peer string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if other, ok := s.open[dst]; ok {
		return fmt.Errorf("dst_id %#x is being written by %s", dst, other)
	}
	s.open[dst] = peer
	return nil
}

func (s *Server) unclaim(dst uint64) {
	s.mu.Lock()
	delete(s.open, dst)
	s.mu.Unlock()
}

// peerHost is the unit of MaxConnsPerPeer: the peer's IPv4 address, or
// the /64 of its IPv6 address (one host or site usually holds a whole
// /64, so counting single IPv6 addresses would bound nothing).
func peerHost(a net.Addr) string {
	switch a := a.(type) {
	case *net.TCPAddr:
		return ipGroup(a.IP)
	case *net.UDPAddr:
		return ipGroup(a.IP)
	}
	if a == nil {
		return ""
	}
	return a.String()
}

func ipGroup(ip net.IP) string {
	if ip.To4() != nil || len(ip) != net.IPv6len {
		return ip.String()
	}
	return (&net.IPNet{IP: ip.Mask(net.CIDRMask(64, 128)), Mask: net.CIDRMask(64, 128)}).String()
}
