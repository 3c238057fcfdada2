package migrate

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	cpb "github.com/checkpoint-restore/go-criu/v8/crit/images/cpuinfo"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"godwit/internal/actions"
	"godwit/internal/cpuinfo"
	"godwit/internal/images"
	"godwit/internal/logging"
	"godwit/internal/model/criuimg"
	"godwit/internal/netlock"
	"godwit/lazypages"
	pb "godwit/migrate/internal/proto"
	"godwit/pageserver"
	"godwit/restorer"
)

// AgentConfig configures the destination agent.
type AgentConfig struct {
	// ImagesDir holds one directory per migration (removed when it ends);
	// the agent writes nowhere else.
	ImagesDir string
	// Address is the agent's own address, where page servers listen.
	Address string
	TLS     TLSFiles
	// History bounds the finished migrations kept (default 100).
	History int
	// MaxConcurrent bounds migrations in flight (default 4); more wait.
	MaxConcurrent int
	// MaxImageBytes bounds the non-memory images of one migration
	// (default 1 GiB).
	MaxImageBytes int64
	// MaxMigrationBytes bounds the page bytes (every round together) one
	// migration may write here; 0: three times the memory its source announces,
	// plus migrationSlack.
	MaxMigrationBytes int64
	// ClientTLS is this host's client certificate (and the CA): with it
	// the agent takes post-copy migrations, fetching their lazy pages
	// from the source's page server.
	ClientTLS TLSFiles
	// NetworkLock is how this host locks a migration's TCP connections
	// and listeners from Lock until the restored tree runs (the agent's
	// --network-lock, as restore's; "": netlock.Default). With skip the
	// agent makes no rules: the user's scripts keep the peers' packets
	// from this host until then.
	NetworkLock netlock.Method
	// AdminCNs are the identities (certificate common name or DNS name,
	// CA-signed) that may resolve any held migration and read the whole
	// history; any other peer only those its own certificate started.
	AdminCNs []string
	// Observe, if set, is called with every finished migration (metrics).
	Observe func(Result)
	// Metrics, if set, counts the migrations in flight and observes each
	// finished one.
	Metrics *Metrics
	Log     *logging.Logger
}

// Agent receives migrations and restores them on this host.
type Agent struct {
	cfg  AgentConfig
	tls  *tls.Config
	slot chan struct{}

	mu       sync.Mutex
	history  []Result
	inflight int
	wg       sync.WaitGroup
	// held are the migrations whose copy is held stopped after Ready;
	// states (with pids, oldest first in stateOrder) what became of
	// those that got that far, for Resolve.
	held       map[string]*held
	states     map[string]string
	pids       map[string]int
	stateOrder []string
	// owners are the fingerprints (ownerOf) of the certificates that
	// started the migrations of states.
	owners map[string]string
}

// NewAgent checks the configuration and loads the certificates.
func NewAgent(cfg AgentConfig) (*Agent, error) {
	if cfg.ImagesDir == "" {
		return nil, errors.New("agent: --images-dir is required")
	}
	if err := os.MkdirAll(cfg.ImagesDir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: images dir: %w", err)
	}
	tc, err := cfg.TLS.serverConfig()
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if cfg.ClientTLS.CACert == "" {
		cfg.ClientTLS.CACert = cfg.TLS.CACert
	}
	if cfg.NetworkLock, err = netlock.ParseMethod(string(cfg.NetworkLock)); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if cfg.History <= 0 {
		cfg.History = 100
	}
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = 4
	}
	if cfg.MaxImageBytes <= 0 {
		cfg.MaxImageBytes = 1 << 30
	}
	if cfg.Log == nil {
		cfg.Log = logging.Default()
	}
	if err := removeStale(cfg.ImagesDir, cfg.Log); err != nil {
		return nil, fmt.Errorf("agent: images dir: %w", err)
	}
	pruneResumed(cfg.ImagesDir)
	return &Agent{cfg: cfg, tls: tc, slot: make(chan struct{}, cfg.MaxConcurrent),
		held: map[string]*held{}, states: map[string]string{}, pids: map[string]int{}, owners: map[string]string{}}, nil
}

// Serve accepts migrations on ln until ctx is done, then waits for those
// in flight.
func (a *Agent) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer a.wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("agent: accept: %w", err)
		}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.serveConn(ctx, c)
		}()
	}
}

// History returns the finished migrations, oldest first.
func (a *Agent) History() []Result {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]Result(nil), a.history...)
}

// Handler serves /healthz. The history is not served here, where anyone
// who reaches the metrics listener could read it: `godwit migrate history`
// asks for it over mutual TLS.
func (a *Agent) Handler() *http.ServeMux {
	m := http.NewServeMux()
	m.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		a.mu.Lock()
		n := a.inflight
		a.mu.Unlock()
		fmt.Fprintf(w, "ok %d in flight\n", n)
	})
	return m
}

func (a *Agent) record(r Result) {
	a.mu.Lock()
	a.history = append(a.history, r)
	if len(a.history) > a.cfg.History {
		a.history = append([]Result(nil), a.history[len(a.history)-a.cfg.History:]...)
	}
	a.mu.Unlock()
	if a.cfg.Observe != nil {
		a.cfg.Observe(r)
	}
}

// inbound is one migration being received.
type inbound struct {
	a *Agent
	*ctl
	dir    string // ImagesDir/<id>
	res    Result
	rounds []string // round directory names, in order
	ps     *pageServing
	bytes  int64
	// restored, once Ready was sent, is the stopped tree.
	files map[string]*os.File
	// fillCtx is for what runs on the destination after the resume: it
	// ends neither with the source's link nor with the agent asked to
	// stop (which waits for it), only with the agent's death, when the
	// lazy-pages guard kills a tree not yet filled.
	fillCtx context.Context
	// nfiles counts the final round's image files (maxImageFiles).
	nfiles int
	// frozeAt is when the final round started: the source freezes the
	// tree right after asking for it.
	frozeAt time.Time
	// agentCtx ends when the agent is asked to stop (not with the link).
	agentCtx context.Context
	// resumeDecided: Go (or a Resolve) decided the resume, recorded in
	// the images dir.
	resumeDecided bool
	// peer is the source's certificate (DER): only it may connect to
	// this migration's page servers.
	peer []byte
	// pageLimit bounds the bytes of this migration's round images.
	pageLimit int64
	// netLock holds the tree's TCP connections and listeners on this
	// host from Lock until the tree resumes (or the migration fails).
	netLock *netlock.Lock
	// aborted: the source sent Abort (its rollback is done).
	aborted bool
	// guard is the lazy-pages guard, started with the migration so that
	// its start is not part of the downtime; handed to the fill (nil
	// then) or ended by cleanup.
	guard *lazypages.Guard
	// layout is the root's layout the running round sent; pending the
	// task prepared from the rounds (overlap_linux.go), overlapOff once
	// it fell back; overlap what it did.
	layout     *restorer.Layout
	pending    *restorer.Pending
	overlapOff bool
	overlap    Overlap
}

// addRound records round ps as the agent saw it: the pages its page server
// wrote, from the round's start to its last page on disk. The program's
// dirty rate during the previous round is what this round carried over that
// round's time (the first round carries every page: not measured).
func (in *inbound) addRound(ps *pageServing) {
	dur := time.Since(ps.start)
	var bytes uint64
	if ents, err := os.ReadDir(ps.dir); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), "pages-") && strings.HasSuffix(e.Name(), ".img") {
				if fi, err := e.Info(); err == nil {
					bytes += uint64(fi.Size())
				}
			}
		}
	}
	r := Round{N: len(in.res.Rounds), Pages: bytes / uint64(os.Getpagesize()), Bytes: bytes, Duration: dur}
	if dur > 0 {
		r.Bandwidth = float64(bytes) / dur.Seconds()
	}
	if n := len(in.res.Rounds); n > 0 && in.res.Rounds[n-1].Duration > 0 {
		r.DirtyRate = float64(bytes) / in.res.Rounds[n-1].Duration.Seconds()
	}
	if ps.final && !in.frozeAt.IsZero() {
		r.Frozen = dur
	}
	in.res.Rounds = append(in.res.Rounds, r)
}

// pageServing is one round's page server.
type pageServing struct {
	n     uint32
	final bool
	dir   string
	start time.Time
	ln    io.Closer
	done  chan error
	// stopOnDone: the server does not end by itself (QUIC); cancel ends it.
	stopOnDone bool
	cancel     context.CancelFunc
}

func (a *Agent) serveConn(ctx context.Context, raw net.Conn) {
	defer raw.Close()
	if err := tuneConn(raw); err != nil {
		a.cfg.Log.Warnf("agent: %s: %v", raw.RemoteAddr(), err)
		return
	}
	_ = raw.SetDeadline(time.Now().Add(30 * time.Second))
	c := tls.Server(raw, a.tls)
	if err := c.HandshakeContext(ctx); err != nil {
		if errors.Is(err, io.EOF) {
			// A port probe (or a peer gone before saying anything):
			// not a migration.
			return
		}
		a.cfg.Log.Warnf("agent: %s: TLS: %v", raw.RemoteAddr(), err)
		r := Result{Source: raw.RemoteAddr().String(), Started: time.Now(), FailedPhase: PhaseConnect, Error: err.Error()}
		a.record(r)
		a.cfg.Metrics.Observe(r)
		return
	}
	_ = raw.SetDeadline(time.Time{})
	// The migration's work (page servers, restore) stops when the
	// source's link dies.
	actx := ctx
	fctx := context.WithoutCancel(ctx)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	k := newCtl(c, cancel)
	first, err := k.recv(sourceWait)
	if err != nil {
		a.cfg.Log.Warnf("agent: %s: %v", raw.RemoteAddr(), err)
		return
	}
	var peer *x509.Certificate
	if pc := c.ConnectionState().PeerCertificates; len(pc) > 0 {
		peer = pc[0]
	}
	if r := first.GetResolve(); r != nil {
		// Not a migration: no slot, so that it is answered even with
		// every slot taken by held copies.
		a.serveResolve(k, r, peer)
		return
	}
	if r := first.GetHistoryRequest(); r != nil {
		a.serveHistory(k, r, peer)
		return
	}
	select {
	case a.slot <- struct{}{}:
	case <-ctx.Done():
		return
	}
	defer func() { <-a.slot }()
	a.mu.Lock()
	a.inflight++
	a.mu.Unlock()
	observe := a.cfg.Metrics.Started()
	defer func() {
		a.mu.Lock()
		a.inflight--
		a.mu.Unlock()
	}()
	in := &inbound{a: a, ctl: k, files: map[string]*os.File{}, fillCtx: fctx, agentCtx: actx}
	if peer != nil {
		in.peer, in.res.owner = peer.Raw, fingerprint(peer.Raw)
	}
	in.res.Started = time.Now()
	in.res.Source = raw.RemoteAddr().String()
	err = in.run(ctx, first)
	in.cleanup()
	in.res.Total = time.Since(in.res.Started)
	if err != nil {
		var pe *PhaseError
		if !errors.As(err, &pe) {
			pe = &PhaseError{Phase: PhaseRestore, Err: err}
		}
		in.res.FailedPhase, in.res.Error = pe.Phase, pe.Err.Error()
		a.cfg.Log.Warnf("agent: migration %s of %d from %s: %v", in.res.ID, in.res.PID, in.res.Source, err)
		_ = in.send(&pb.Envelope{Msg: &pb.Envelope_Failure{Failure: &pb.Failure{Phase: string(pe.Phase), Message: pe.Err.Error()}}})
		in.releaseLock()
	} else {
		a.cfg.Log.Infof("agent: migration %s of %d from %s done in %v", in.res.ID, in.res.PID, in.res.Source, in.res.Total)
		if pc := in.res.Postcopy; pc != nil {
			a.cfg.Log.Infof("agent: migration %s: all pages in: %d pages, %d faults, %v after the resume", in.res.ID, pc.Pages, pc.Faults, pc.Duration)
		}
	}
	// A lock still held (a failure path without a Failure sent) goes.
	if err := in.netLock.Unlock(); err != nil {
		a.cfg.Log.Warnf("agent: migration %s: %v", in.res.ID, err)
	}
	a.record(in.res)
	observe(in.res)
}

// recv reads the next message, with a deadline: a source that goes
// silent (link cut, killed) ends the migration.
func (in *inbound) recv(limit time.Duration) (*pb.Envelope, error) {
	m, err := in.ctl.recv(limit)
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	if ab := m.GetAbort(); ab != nil {
		in.aborted = true
		return nil, fmt.Errorf("source aborted: %s", ab.Reason)
	}
	return m, nil
}

// roundWait bounds how long a round may take to arrive; sourceWait how long
// the source may stay silent otherwise.
const (
	roundWait  = 30 * time.Minute
	sourceWait = 2 * time.Minute
)

func (in *inbound) run(ctx context.Context, m *pb.Envelope) error {
	var err error
	if ab := m.GetAbort(); ab != nil {
		return phaseErr(PhaseConnect, fmt.Errorf("source aborted: %s", ab.Reason))
	}
	h := m.GetHello()
	if h == nil {
		return phaseErr(PhaseConnect, errors.New("first message is not hello"))
	}
	if h.Version != Version {
		return phaseErr(PhaseConnect, fmt.Errorf("protocol version %d, this agent speaks %d", h.Version, Version))
	}
	in.res.PID, in.res.Tasks, in.res.Mode, in.res.Transport = int(h.Pid), 1, Mode(h.Mode), h.Transport
	if _, err := ParseCompress(h.Compress); err != nil {
		return phaseErr(PhaseConnect, err)
	}
	in.res.Compress = h.Compress
	if h.Source != "" {
		in.res.Source = h.Source
	}
	if err := checkHost(h); err != nil {
		return phaseErr(PhaseCheck, err)
	}
	if in.pageLimit, err = migrationLimit(in.a.cfg.MaxMigrationBytes, h.MemoryBytes); err != nil {
		return phaseErr(PhaseCheck, err)
	}
	id := make([]byte, 8)
	_, _ = rand.Read(id)
	in.res.ID = hex.EncodeToString(id)
	in.dir = filepath.Join(in.a.cfg.ImagesDir, in.res.ID)
	if err := os.Mkdir(in.dir, 0o700); err != nil {
		return phaseErr(PhaseCheck, fmt.Errorf("migration directory: %w", err))
	}
	if in.guard, err = lazypages.StartGuard(); err != nil {
		return phaseErr(PhaseCheck, err)
	}
	if err := in.send(&pb.Envelope{Msg: &pb.Envelope_Accepted{Accepted: &pb.Accepted{Id: in.res.ID, PageLimit: uint64(in.pageLimit)}}}); err != nil {
		return phaseErr(PhaseConnect, err)
	}
	phase := PhasePrecopy
	var probed uint64
	for {
		// While a round runs its pages flow on their own stream and the
		// control stream stays quiet until RoundDone: a long round (4 GiB
		// over a slow or busy link) is no silent source. A dead one is
		// still seen at once (keepalive, user timeout).
		wait := sourceWait
		if in.ps != nil {
			wait = roundWait
		}
		m, err := in.recv(wait)
		if err != nil {
			return phaseErr(phase, err)
		}
		switch {
		case m.GetRoundStart() != nil && m.GetRoundStart().Lazy:
			phase = PhaseFreeze
			if err := in.startLazy(); err != nil {
				return phaseErr(phase, err)
			}
		case m.GetRoundStart() != nil:
			rs := m.GetRoundStart()
			if rs.Final {
				phase = PhaseFreeze
				in.frozeAt = time.Now()
			}
			if err := in.startRound(ctx, rs, h.Transport); err != nil {
				return phaseErr(phase, err)
			}
		case m.GetRoundDone() != nil:
			if err := in.finishRound(m.GetRoundDone().N); err != nil {
				return phaseErr(phase, err)
			}
			if err := in.send(&pb.Envelope{Msg: &pb.Envelope_RoundAck{RoundAck: &pb.RoundAck{N: m.GetRoundDone().N,
				PageBytes: uint64(in.pageBytes())}}}); err != nil {
				return phaseErr(phase, err)
			}
		case m.GetLayout() != nil:
			if in.ps == nil || in.ps.final {
				return phaseErr(phase, errors.New("layout outside a pre-copy round"))
			}
			if in.layout, err = layoutOf(m.GetLayout(), in.res.PID); err != nil {
				return phaseErr(phase, err)
			}
		case m.GetFile() != nil:
			if err := in.writeFile(m.GetFile()); err != nil {
				return phaseErr(PhaseFreeze, err)
			}
		case m.GetProbe() != nil:
			if len(in.rounds) > 0 {
				return phaseErr(phase, errors.New("link probe after the first round"))
			}
			if probed += uint64(len(m.GetProbe().Data)); probed > maxProbe {
				return phaseErr(phase, fmt.Errorf("link probe over %d bytes", maxProbe))
			}
			if m.GetProbe().Last {
				if err := in.send(&pb.Envelope{Msg: &pb.Envelope_ProbeAck{ProbeAck: &pb.ProbeAck{Bytes: probed}}}); err != nil {
					return phaseErr(phase, err)
				}
				probed = 0
			}
		case m.GetLock() != nil:
			phase = PhaseFreeze
			lk, err := in.lockConns(h.Pid)
			if err != nil {
				return phaseErr(phase, err)
			}
			if err := in.send(&pb.Envelope{Msg: &pb.Envelope_Locked{Locked: lk}}); err != nil {
				return phaseErr(phase, err)
			}
		case m.GetCheck() != nil:
			phase = PhaseFreeze
			ck, err := in.checkRestore()
			if err != nil {
				return phaseErr(phase, err)
			}
			if err := in.send(&pb.Envelope{Msg: &pb.Envelope_Checked{Checked: ck}}); err != nil {
				return phaseErr(phase, err)
			}
		case m.GetRestore() != nil:
			in.a.cfg.Log.Debugf("agent: migration %s: restore asked %v after the freeze", in.res.ID, time.Since(in.frozeAt))
			return in.restore(ctx, m.GetRestore())
		default:
			return phaseErr(phase, fmt.Errorf("unexpected %T", m.Msg))
		}
	}
}

// checkHost refuses a tree this host cannot take: a PID or TID in use
// here, or a file it has open or mapped missing at the same path.
func checkHost(h *pb.Hello) error {
	if h.Pid <= 0 || len(h.Pids) == 0 || len(h.Pids) > 1<<16 || len(h.Files) > 1<<16 {
		return errors.New("bad tree description")
	}
	var busy []string
	for _, p := range h.Pids {
		if p <= 0 {
			return fmt.Errorf("bad pid %d", p)
		}
		if _, err := os.Stat("/proc/" + strconv.Itoa(int(p))); err == nil {
			busy = append(busy, strconv.Itoa(int(p)))
		}
	}
	if len(busy) > 0 {
		return fmt.Errorf("pid %s in use on the destination", strings.Join(busy, ", "))
	}
	if err := checkCPU(h.Cpuinfo, h.CpuCap); err != nil {
		return err
	}
	for _, f := range h.Files {
		if !filepath.IsAbs(f) {
			return fmt.Errorf("file %q: not an absolute path", f)
		}
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("a file or directory the tree uses is missing on the destination: %w", err)
		}
	}
	return nil
}

func roundDir(n uint32, final bool) string {
	if final {
		return "final"
	}
	return "r" + strconv.Itoa(int(n))
}

// startRound starts the page server that receives round n into its own
// directory, chained to the previous round's.
func (in *inbound) startRound(ctx context.Context, rs *pb.RoundStart, transport string) error {
	if in.ps != nil {
		return fmt.Errorf("round %d started before round %d ended", rs.N, in.ps.n)
	}
	name := roundDir(rs.N, rs.Final)
	for _, r := range in.rounds {
		if r == name {
			return fmt.Errorf("round %s twice", name)
		}
	}
	dir := filepath.Join(in.dir, name)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	prev := ""
	if len(in.rounds) > 0 {
		prev = "../" + in.rounds[len(in.rounds)-1]
	}
	in.rounds = append(in.rounds, name)
	// Only the source that opened this migration may send its pages:
	// another peer the CA signed is refused at the handshake, before it
	// can take the round's one session. Compressed or not.
	tc := in.a.tls.Clone()
	peer := in.peer
	tc.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 || len(peer) == 0 || !bytes.Equal(raw[0], peer) {
			return errors.New("client certificate is not this migration's source's")
		}
		return nil
	}
	streams := max(int(rs.Streams), 1)
	if streams > pageserver.MaxStreams {
		return fmt.Errorf("round %d over %d streams (at most %d)", rs.N, streams, pageserver.MaxStreams)
	}
	in.res.Streams = streams
	left := in.pageLimit - in.pageBytes()
	if left <= 0 {
		return fmt.Errorf("the migration's pages reached --max-migration-bytes %d", in.pageLimit)
	}
	to, err := in.a.cfg.TLS.pageTransport(transport, "")
	if err != nil {
		return err
	}
	switch rs.Compress {
	case "":
	case CompressZstd:
		if transport == "quic" {
			// Every QUIC stream compressed (pageserver).
			to.Compress = pageserver.CompressZstd
			break
		}
		if streams != 1 {
			return errors.New("a compressed TLS round is one stream")
		}
		return in.startCompressedRound(ctx, rs, dir, prev, tc, left)
	default:
		return fmt.Errorf("unknown page stream compression %q", rs.Compress)
	}
	to.TLSConfig = tc
	ln, err := pageserver.Listen(net.JoinHostPort(in.a.cfg.Address, "0"), to)
	if err != nil {
		return err
	}
	// Over TCP the round is one session a stream (Once). Over QUIC a
	// session's streams end one by one and Once would cut the control
	// stream's CLOSE: that server is stopped when the source reports the
	// round done, its CLOSE answered (every image complete) by then.
	// MaxBytes is the server's, every stream's pages together.
	quic := to.Transport == pageserver.TransportQUIC
	srv, err := pageserver.NewServer(pageserver.Config{ImagesDir: dir, PrevImagesDir: prev, Once: !quic, Sessions: streams,
		Log: in.a.cfg.Log, MaxBytes: left})
	if err != nil {
		ln.Close()
		return err
	}
	sctx, cancel := context.WithCancel(ctx)
	ps := &pageServing{n: rs.N, final: rs.Final, dir: dir, start: time.Now(), ln: ln, done: make(chan error, 1), stopOnDone: quic, cancel: cancel}
	limit := in.pageLimit
	go func() {
		defer cancel()
		err := srv.Serve(sctx, ln)
		srv.Close()
		if err != nil && strings.Contains(err.Error(), "(--max-bytes)") {
			err = fmt.Errorf("the migration's pages exceed --max-migration-bytes %d", limit)
			// Said at once: the source's page stream just breaks.
			_ = in.send(&pb.Envelope{Msg: &pb.Envelope_Failure{Failure: &pb.Failure{Phase: string(PhasePrecopy), Message: err.Error()}}})
		}
		ps.done <- err
	}()
	in.ps = ps
	return in.send(&pb.Envelope{Msg: &pb.Envelope_RoundReady{RoundReady: &pb.RoundReady{Port: uint32(ln.Port())}}})
}

// startCompressedRound serves round rs on a connection of its own: TLS
// (tc: the agent's certificate, only this migration's source), a zstd
// stream inside (compress.go), one page-server session on top, taking at
// most left bytes (--max-migration-bytes).
func (in *inbound) startCompressedRound(ctx context.Context, rs *pb.RoundStart, dir, prev string, tc *tls.Config, left int64) error {
	ln, err := net.Listen("tcp", net.JoinHostPort(in.a.cfg.Address, "0"))
	if err != nil {
		return err
	}
	srv, err := pageserver.NewServer(pageserver.Config{ImagesDir: dir, PrevImagesDir: prev, Log: in.a.cfg.Log, MaxBytes: left})
	if err != nil {
		ln.Close()
		return err
	}
	sctx, cancel := context.WithCancel(ctx)
	ps := &pageServing{n: rs.N, final: rs.Final, dir: dir, start: time.Now(), ln: ln, done: make(chan error, 1), cancel: cancel}
	limit := in.pageLimit
	go func() {
		defer cancel()
		defer srv.Close()
		stop := context.AfterFunc(sctx, func() { ln.Close() })
		defer stop()
		// A peer refused at the handshake does not use up the round's
		// one session: accept again until the source's arrives.
		var c *tls.Conn
		for c == nil {
			raw, err := ln.Accept()
			if err != nil {
				ps.done <- err
				return
			}
			if err := tuneConn(raw); err != nil {
				raw.Close()
				ps.done <- err
				return
			}
			_ = raw.SetDeadline(time.Now().Add(30 * time.Second))
			tc := tls.Server(raw, tc)
			if err := tc.HandshakeContext(sctx); err != nil {
				raw.Close()
				if sctx.Err() != nil {
					ps.done <- fmt.Errorf("TLS: %w", err)
					return
				}
				in.a.cfg.Log.Warnf("agent: migration %s: round %d: refused %s: %v", in.res.ID, rs.N, raw.RemoteAddr(), err)
				continue
			}
			_ = raw.SetDeadline(time.Time{})
			c = tc
		}
		ln.Close()
		z, err := newZstdConn(c)
		if err != nil {
			c.Close()
			ps.done <- err
			return
		}
		err = srv.ServeConn(sctx, z)
		if err != nil && strings.Contains(err.Error(), "(--max-bytes)") {
			err = fmt.Errorf("the migration's pages exceed --max-migration-bytes %d", limit)
			// Said at once: the source's page stream just breaks.
			_ = in.send(&pb.Envelope{Msg: &pb.Envelope_Failure{Failure: &pb.Failure{Phase: string(PhasePrecopy), Message: err.Error()}}})
		}
		ps.done <- err
	}()
	in.ps = ps
	return in.send(&pb.Envelope{Msg: &pb.Envelope_RoundReady{RoundReady: &pb.RoundReady{Port: uint32(ln.Addr().(*net.TCPAddr).Port)}}})
}

// startLazy opens the final images of a post-copy migration: the source
// froze the tree; no pages stream, the images come as files.
func (in *inbound) startLazy() error {
	if (in.res.Mode != ModePostcopy && in.res.Mode != ModeHybrid) || len(in.rounds) > 0 || in.ps != nil {
		return fmt.Errorf("lazy freeze in mode %s after %d rounds", in.res.Mode, len(in.rounds))
	}
	in.frozeAt = time.Now()
	if err := os.Mkdir(filepath.Join(in.dir, "final"), 0o700); err != nil {
		return err
	}
	in.rounds = append(in.rounds, "final")
	return nil
}

// checkLazyCompress checks Restore.compress.
func checkLazyCompress(c string) error {
	if c != "" && c != CompressZstd {
		return fmt.Errorf("unknown lazy page compression %q", c)
	}
	return nil
}

// migrationSlack is what MaxMigrationBytes's default adds to three times
// the announced memory: page maps, and pages the program maps during rounds.
const migrationSlack = 256 << 20

// migrationLimit is the page bytes a migration of a tree of memory bytes
// may write here: max if set, else three times memory plus migrationSlack:
// a full first round, a worst-case final (all memory), and as much again
// for the rounds between. With only twice memory, a program that wrote
// more than the slack during its first round (a 4 GiB program writing
// 8 MB/s through a 30 s round) got no second round, and its final dump
// carried every page written during the full copy.
func migrationLimit(max int64, memory uint64) (int64, error) {
	if max > 0 {
		if memory > uint64(max) {
			return 0, fmt.Errorf("the tree's %d bytes of memory exceed --max-migration-bytes %d", memory, max)
		}
		return max, nil
	}
	if memory > 1<<50 {
		return 0, fmt.Errorf("the tree announces %d bytes of memory", memory)
	}
	return 3*int64(memory) + migrationSlack, nil
}

// pageBytes is what this migration's rounds wrote so far.
func (in *inbound) pageBytes() int64 {
	var n int64
	for _, r := range in.rounds {
		ents, _ := os.ReadDir(filepath.Join(in.dir, r))
		for _, e := range ents {
			if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
				n += fi.Size()
			}
		}
	}
	return n
}

// serveHistory answers a HistoryRequest.
// A peer that is not an admin (AdminCNs) sees only the migrations its own
// certificate started.
func (a *Agent) serveHistory(k *ctl, r *pb.HistoryRequest, peer *x509.Certificate) {
	if r.Version != Version {
		_ = k.send(&pb.Envelope{Msg: &pb.Envelope_Failure{Failure: &pb.Failure{Phase: string(PhaseConnect),
			Message: fmt.Sprintf("protocol version %d, this agent speaks %d", r.Version, Version)}}})
		return
	}
	hist := a.History()
	if !a.isAdmin(peer) {
		fp := peerFingerprint(peer)
		hist = slices.DeleteFunc(hist, func(r Result) bool { return r.owner == "" || r.owner != fp })
	}
	b, err := json.Marshal(hist)
	if err != nil {
		return
	}
	_ = k.send(&pb.Envelope{Msg: &pb.Envelope_HistoryReply{HistoryReply: &pb.HistoryReply{Json: b}}})
}

// finishRound waits until the round's page server has its session's pages
// on disk.
func (in *inbound) finishRound(n uint32) error {
	ps := in.ps
	if ps == nil || ps.n != n {
		return fmt.Errorf("round %d done, but it was not started", n)
	}
	in.ps = nil
	if ps.stopOnDone {
		ps.cancel()
	}
	t := time.Now()
	select {
	case err := <-ps.done:
		if err != nil {
			return fmt.Errorf("round %d pages: %w", n, err)
		}
		in.a.cfg.Log.Debugf("agent: migration %s: round %d: pages on disk %v after the source's done", in.res.ID, n, time.Since(t))
		in.addRound(ps)
		if !ps.final {
			in.overlapRound(in.agentCtx, n, ps.dir)
		}
		return nil
	case <-time.After(sourceWait):
		ps.ln.Close()
		return fmt.Errorf("round %d: page server did not finish", n)
	}
}

// maxImageFiles bounds the non-memory images of one migration (a tree of
// a thousand tasks writes about eight per task), and fileCharge is what
// each costs against MaxImageBytes however small.
const (
	maxImageFiles = 1 << 14
	fileCharge    = 4096
)

// writeFile appends a chunk of one non-memory image to the final round.
func (in *inbound) writeFile(f *pb.File) error {
	if len(in.rounds) == 0 || in.rounds[len(in.rounds)-1] != "final" {
		return errors.New("image file before the final round")
	}
	name := f.Name
	// The source's network lock record names rules on the source host:
	// this host's lock is the agent's own (Lock).
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") || name == "parent" || name == netlock.RecordFile {
		return fmt.Errorf("bad image file name %q", name)
	}
	in.bytes += int64(len(f.Data))
	if in.bytes > in.a.cfg.MaxImageBytes {
		return fmt.Errorf("images over %d bytes", in.a.cfg.MaxImageBytes)
	}
	w := in.files[name]
	if w == nil {
		// The source sends images one after another: one open at a time,
		// and a bounded number, each charged a block, so that a peer
		// cannot spend the agent's fds or inodes with empty chunks.
		if len(in.files) > 0 {
			return fmt.Errorf("image %s begun before the last one ended", name)
		}
		if in.nfiles++; in.nfiles > maxImageFiles {
			return fmt.Errorf("more than %d image files", maxImageFiles)
		}
		if in.bytes += fileCharge; in.bytes > in.a.cfg.MaxImageBytes {
			return fmt.Errorf("images over %d bytes", in.a.cfg.MaxImageBytes)
		}
		var err error
		w, err = os.OpenFile(filepath.Join(in.dir, "final", name), os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
		if err != nil {
			return fmt.Errorf("image %s: %w", name, err)
		}
		in.files[name] = w
	}
	if _, err := w.Write(f.Data); err != nil {
		return fmt.Errorf("image %s: %w", name, err)
	}
	if f.Last {
		delete(in.files, name)
		if err := w.Close(); err != nil {
			return fmt.Errorf("image %s: %w", name, err)
		}
	}
	return nil
}

// guardLive tells the lock's guard that the program is about to run on
// the locked sockets (the source committed): were the agent to die from
// now on, before its Unlock, the guard must remove the rules at once, not
// linger and destroy the live program's connections. A guard that cannot
// be told is dead, and does neither.
func (in *inbound) guardLive() {
	if err := in.netLock.Resuming(); err != nil {
		in.a.cfg.Log.Warnf("agent: migration %s: %v", in.res.ID, err)
	}
}

// restore rebuilds the tree from the chain of rounds, stopped; says Ready;
// resumes it only on Go (the source tree is gone by then). Anything else,
// or silence, kills what it made.
//
// Unless fullFill, the lazy VMAs are restored empty and registered with a
// userfaultfd; a lazy-pages daemon in this agent serves their faults and
// pushes the rest from the same local images, so the downtime does not
// grow with the memory size. The migration ends (PagesIn, images removed)
// only when every page is in. That fill depends on this host alone: it
// runs on if the source's link dies.
//
// Post-copy and hybrid (rs.PageSource): the lazy pages are on the
// source's frozen tree, served by its page server (in hybrid, the pages of
// the pre-copy rounds are read from the images here, through the final
// round's parent links); the source is committed once it asked for the
// restore (it is never resumed), so the agent resumes without Go, and the
// fill fails, killing the copy, if the source is lost.
func (in *inbound) restore(ctx context.Context, rs *pb.Restore) error {
	fullFill, pageSource := rs.FullFill, rs.PageSource
	// Post-copy and hybrid pull the last pages from the frozen source.
	lazySource := in.res.Mode == ModePostcopy || in.res.Mode == ModeHybrid
	if (pageSource != "") != lazySource || (pageSource != "" && fullFill) {
		return phaseErr(PhaseFreeze, fmt.Errorf("restore request does not fit mode %s", in.res.Mode))
	}
	if in.ps != nil {
		return phaseErr(PhaseFreeze, fmt.Errorf("restore before round %d ended", in.ps.n))
	}
	if len(in.files) > 0 {
		return phaseErr(PhaseFreeze, errors.New("restore before every image arrived"))
	}
	if len(in.rounds) == 0 || in.rounds[len(in.rounds)-1] != "final" {
		return phaseErr(PhaseFreeze, errors.New("restore without the final round"))
	}
	scripts := &actions.Scripts{Notify: func(action string, pid int) error {
		if action != actions.PreResume || pageSource != "" {
			return nil
		}
		if err := in.awaitGo(pid); err != nil {
			return err
		}
		in.resumeDecided = true
		in.guardLive()
		// This host's lock of the connections stays until every task
		// was let run (below): a copy killed by a failed resume closes
		// them under it, silently (releaseLock).
		return nil
	}}
	// Detach: the agent is not the program's parent on the source, so a
	// parent-death signal the program set must not tie it to the agent's
	// life (as `restore -d`). The agent still reaps the root.
	if rs.TcpEstablished != (in.netLock != nil) {
		return phaseErr(PhaseFreeze, errors.New("restore of TCP connections without their lock on this host (Lock), or the reverse"))
	}
	if pageSource != "" {
		// The source committed when it asked for this restore.
		in.guardLive()
	}
	ro := restorer.Options{ImagesDir: filepath.Join(in.dir, "final"), Detach: true, TCPEstablished: rs.TcpEstablished, ShellJob: rs.ShellJob}
	var r *restorer.Restorer
	var err error
	if in.pending != nil && pageSource != "" {
		in.overlapFallback("the last pages come lazily from the source")
	}
	if in.pending != nil {
		p := in.pending
		r, err = p.Finish(ctx, ro, scripts)
		in.pending = nil
		if errors.Is(err, restorer.ErrNotPrepared) && !in.resumeDecided {
			in.overlapOff = true
			in.overlap.State = err.Error()
			in.a.cfg.Log.Infof("agent: migration %s: restore from the images alone: %v", in.res.ID, err)
			err = nil
		}
	}
	var lazy *localFill
	if r == nil && err == nil && !fullFill {
		var err error
		if lazy, err = in.startFill(ro.ImagesDir, pageSource, rs.Compress); err != nil {
			return phaseErr(PhaseRestore, err)
		}
		// The daemon opens the images while the restore lays out the
		// tasks; the hand-off waits for it.
		ro.LazyPages, ro.WorkDir, ro.LazyReady = true, in.dir, lazy.listening
	}
	// Past Ready the copy is held whatever becomes of the source's link:
	// only a decision ends the hold (see awaitGo).
	if r == nil && err == nil {
		r, err = restorer.RestoreContext(ctx, ro, scripts)
	}
	if err != nil {
		if lazy != nil {
			lazy.stop()
		}
		if in.resumeDecided {
			if errors.Is(err, restorer.ErrPartlyResumed) {
				// Killed after some task ran: it may have acted, so
				// the source must not simply run on. Held in doubt
				// on its side for the user to settle.
				in.a.markPartial(in.res.ID)
				in.a.setState(in.res.ID, statePartial, 0)
			} else {
				// Killed before any task ran: a source that asks
				// runs its tree on.
				in.a.unmarkResumed(in.res.ID)
				in.a.setState(in.res.ID, stateFailed, 0)
			}
		}
		return phaseErr(PhaseRestore, err)
	}
	if in.resumeDecided {
		in.a.setState(in.res.ID, stateResumed, r.PID())
	}
	// Every task runs (after Go; in post-copy and hybrid at once, the
	// lazy pages still to come): their connections' packets may flow. A
	// failed unlock is reported, never a reason to kill the only copy
	// left.
	if err := in.netLock.Unlock(); err != nil {
		in.a.cfg.Log.Warnf("agent: migration %s: network unlock (remove the lock by hand: %s): %v", in.res.ID, in.netLock.RemoveCommand(), err)
	}
	resumedAt := time.Now()
	if !in.frozeAt.IsZero() {
		in.res.Downtime = time.Since(in.frozeAt)
	}
	// The restored root is this agent's child: reap it when it ends.
	go func() { _, _ = r.Wait() }()
	in.res.Tasks = len(r.PIDs())
	if err := in.send(&pb.Envelope{Msg: &pb.Envelope_Resumed{Resumed: &pb.Resumed{Pid: int32(r.PID())}}}); err != nil {
		// Resumed: the copy here is the live one from now on.
		in.a.cfg.Log.Warnf("agent: migration %s: tell the source: %v", in.res.ID, err)
	}
	if lazy == nil {
		if !fullFill {
			// Restored onto the prepared task: every page was in at
			// the resume, none left to fill (no post-copy phase here;
			// the source, which asked for a lazy restore, is told).
			if err := in.send(&pb.Envelope{Msg: &pb.Envelope_PagesIn{PagesIn: &pb.PagesIn{}}}); err != nil {
				in.a.cfg.Log.Warnf("agent: migration %s: tell the source every page is in: %v", in.res.ID, err)
			}
		}
		return nil
	}
	st, err := lazy.wait()
	pc := postcopyOf(st, resumedAt)
	in.res.Postcopy = pc
	// The fault latency panel: every fault timed (the first
	// lazypages.MaxFaultTimes), observed once the fill ended.
	for _, d := range st.FaultTimes {
		in.a.cfg.Metrics.ObserveFault(d)
	}
	in.a.cfg.Log.Infof("agent: migration %s: %d pages read from the images here, %d from the source", in.res.ID, st.LocalPages, st.RemotePages)
	if err != nil {
		// The daemon killed the tree it could not fill: no task runs
		// on with a page it did not have.
		return phaseErr(PhasePostcopy, err)
	}
	if err := in.send(&pb.Envelope{Msg: &pb.Envelope_PagesIn{PagesIn: &pb.PagesIn{Pages: pc.Pages, Faults: pc.Faults,
		FaultP50Ns: int64(pc.FaultP50), FaultP99Ns: int64(pc.FaultP99), DurationNs: int64(pc.Duration)}}}); err != nil {
		in.a.cfg.Log.Warnf("agent: migration %s: tell the source every page is in: %v", in.res.ID, err)
	}
	return nil
}

// lockConns locks on this host the established TCP connections and the
// listeners of the final images (their local addresses are the ones the
// tree had on the source, a service address that moves with it), before
// the source moves that address here: until the restored tree runs, a
// peer's packets are dropped, never answered with a reset by a host with
// no socket for them yet.
func (in *inbound) lockConns(pid int32) (*pb.Locked, error) {
	if in.netLock != nil {
		return nil, errors.New("lock twice")
	}
	if in.ps != nil || len(in.files) > 0 || len(in.rounds) == 0 || in.rounds[len(in.rounds)-1] != "final" {
		return nil, errors.New("lock before every image arrived")
	}
	d, err := images.Open(filepath.Join(in.dir, "final"), false)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	tree, err := criuimg.Read(d)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	var conns []netlock.Conn
	var listeners []netip.AddrPort
	for _, id := range tree.FileIDs() {
		st := tree.Files[id].Inet
		if st == nil || st.Type != unix.SOCK_STREAM {
			continue
		}
		switch {
		case st.Stream != nil:
			conns = append(conns, netlock.Conn{Local: st.Src, Remote: st.Dst})
		case st.State == tcpListen:
			listeners = append(listeners, st.Src)
		}
	}
	l, err := netlock.New(in.a.cfg.NetworkLock, int(pid), "")
	if err != nil {
		return nil, err
	}
	if err := l.Lock(conns); err != nil {
		return nil, errors.Join(err, l.Unlock())
	}
	if err := l.LockListeners(listeners); err != nil {
		return nil, errors.Join(err, l.Unlock())
	}
	// Should the agent die now, the source's scripts may have moved the
	// service address here: its guard keeps the lock until the address
	// left again (the source runs on with its connections), so that no
	// peer is answered with a reset meanwhile.
	if err := l.GuardDestination(lockLinger); err != nil {
		return nil, errors.Join(err, l.Unlock())
	}
	in.netLock = l
	if l.Method() == netlock.Skip {
		in.a.cfg.Log.Infof("agent: migration %s: %d connections and %d listeners not locked (--network-lock skip)", in.res.ID, len(conns), len(listeners))
	} else {
		in.a.cfg.Log.Infof("agent: migration %s: %d connections and %d listeners locked (%s %s)", in.res.ID, len(conns), len(listeners), l.Method(), l.Name())
	}
	return &pb.Locked{Connections: uint32(len(conns)), Listeners: uint32(len(listeners))}, nil
}

// releaseLock removes the connections' lock of a migration that failed.
// The source's scripts may have moved the service address here already:
// the lock stays until the source, told of the failure, has moved it back
// (its Abort, or the link closed; bounded), so that this host, which has
// no socket for them, answers no peer's packet with a reset.
func (in *inbound) releaseLock() {
	if !in.netLock.Active() {
		return
	}
	deadline := time.Now().Add(lockLinger)
	for !in.aborted && time.Now().Before(deadline) {
		if _, err := in.recv(time.Until(deadline)); err != nil {
			break
		}
	}
	if !in.aborted {
		// The source went without its Abort (killed, or its link
		// cut): the address it moved here stays locked until it
		// leaves (bounded).
		in.netLock.LingerWhileLocal(deadline)
	}
	// A restore that got as far as the connections and then failed
	// closed them as the tree died: their FIN, dropped by the lock,
	// would be retransmitted to the clients of the source's live copies
	// once it goes. Destroyed under the lock, they go silently.
	for _, c := range in.netLock.Conns() {
		cmd := exec.Command("ss", "-K", "-tn", "src", c.Local.String(), "dst", c.Remote.String())
		if out, err := cmd.CombinedOutput(); err != nil {
			in.a.cfg.Log.Warnf("agent: migration %s: destroy connection %v: %v: %s", in.res.ID, c, err, bytes.TrimSpace(out))
		}
	}
	if err := in.netLock.Unlock(); err != nil {
		in.a.cfg.Log.Warnf("agent: migration %s: %v", in.res.ID, err)
	}
}

// lockLinger bounds how long a failed migration's lock waits for the
// source to let go.
const lockLinger = 30 * time.Second

// maxProbe bounds the bytes of one link probe (Probe).
const maxProbe = 64 << 20

// tcpListen is the kernel's TCP_LISTEN state (include/net/tcp_states.h).
const tcpListen = 10

// localFill is the lazy-pages daemon filling a restored tree from the
// migration's own images.
type localFill struct {
	cancel context.CancelFunc
	done   chan struct{}
	ready  chan struct{} // closed once the daemon listens
	st     lazypages.Stats
	err    error
	// started and log: the -v4 timing of the daemon's start.
	started time.Time
	log     *logging.Logger
}

// startFill starts the daemon on the final images (and, through their
// parent links, the rounds before) with its socket in the migration's
// directory; listening tells when it listens.
//
// With pageSource the pages come from the source's page server instead.
func (in *inbound) startFill(images, pageSource, compress string) (*localFill, error) {
	lo := lazypages.Options{ImagesDir: images, WorkDir: in.dir, Log: in.a.cfg.Log, Guard: in.guard}
	in.guard = nil // Run's from now on
	if pageSource != "" {
		host, _, err := net.SplitHostPort(pageSource)
		if err != nil {
			return nil, fmt.Errorf("page source: %w", err)
		}
		if in.a.cfg.ClientTLS.Cert == "" {
			return nil, errors.New("post-copy: this agent has no client certificate to fetch pages from the source (--tls-client-cert, --tls-client-key)")
		}
		if lo.Transport, err = in.a.cfg.ClientTLS.pageTransport("tls", host); err != nil {
			return nil, err
		}
		if err := checkLazyCompress(compress); err != nil {
			return nil, err
		}
		lo.Transport.Compress = compress
		lo.PageServer = pageSource
	}
	ctx, cancel := context.WithCancel(in.fillCtx)
	f := &localFill{cancel: cancel, done: make(chan struct{}), ready: make(chan struct{}), started: time.Now(), log: in.a.cfg.Log}
	lo.Ready = func() { close(f.ready) }
	go func() {
		defer close(f.done)
		f.st, f.err = lazypages.Run(ctx, lo)
	}()
	return f, nil
}

// listening waits until the daemon listens (restorer.Options.LazyReady).
func (f *localFill) listening() error {
	select {
	case <-f.ready:
		f.log.Debugf("agent: lazy-pages daemon listening %v after its start", time.Since(f.started))
		return nil
	case <-f.done:
		if f.err == nil {
			return errors.New("lazy-pages: ended before listening")
		}
		return fmt.Errorf("lazy-pages: %w", f.err)
	}
}

func (f *localFill) wait() (lazypages.Stats, error) {
	<-f.done
	f.cancel()
	return f.st, f.err
}

// stop ends the daemon after a failed restore (which killed its tree).
func (f *localFill) stop() {
	f.cancel()
	<-f.done
}

// postcopyOf summarises a fill that began at resumed.
func postcopyOf(st lazypages.Stats, resumed time.Time) *Postcopy {
	pc := &Postcopy{Pages: st.FaultPages + st.PushPages + st.ZeroPages, Faults: st.Faults}
	if !st.AllPagesIn.IsZero() {
		pc.Duration = st.AllPagesIn.Sub(resumed)
		if pc.Duration < 0 {
			// Every page was in before the resume (pushed while the
			// tree was still stopped).
			pc.Duration = 0
		}
	}
	if n := len(st.FaultTimes); n > 0 {
		ts := slices.Clone(st.FaultTimes)
		slices.Sort(ts)
		pc.FaultP50, pc.FaultP99 = ts[n/2], ts[min(n-1, n*99/100)]
	}
	return pc
}

func (in *inbound) cleanup() {
	in.pending.Abort()
	if in.guard != nil {
		in.guard.Close()
	}
	for _, f := range in.files {
		f.Close()
	}
	if in.ps != nil {
		in.ps.cancel()
		in.ps.ln.Close()
		select {
		case <-in.ps.done:
		case <-time.After(10 * time.Second):
		}
	}
	if in.dir != "" {
		if err := os.RemoveAll(in.dir); err != nil {
			in.a.cfg.Log.Warnf("agent: remove %s: %v", in.dir, err)
		}
	}
}

// checkCPU compares the source's CPU with this one, as restore compares a
// cpuinfo.img (CRIU's default modes unless the source gave --cpu-cap).
func checkCPU(entry []byte, capArg string) error {
	if len(entry) == 0 {
		return errors.New("no source CPU description")
	}
	caps := cpuinfo.DefaultCaps
	if capArg != "" {
		var err error
		if caps, err = cpuinfo.ParseCaps(capArg); err != nil {
			return err
		}
	}
	ce := &cpb.CpuinfoEntry{}
	if err := proto.Unmarshal(entry, ce); err != nil {
		return fmt.Errorf("source CPU description: %w", err)
	}
	host, err := cpuinfo.Host()
	if err != nil {
		return err
	}
	img, err := cpuinfo.FromEntry(ce, host)
	if err != nil {
		return fmt.Errorf("source CPU description: %w", err)
	}
	return cpuinfo.Compare(img, host, caps)
}

// removeStale removes the migration directories an earlier agent left in
// dir when it died (SIGKILL, a crash, a host reboot): the images, full
// program memory, of migrations that can no longer finish, since the
// trees they restored die with the agent that filled them. Only names
// the agent makes (16 hex digits) are touched; nothing is in flight yet.
func removeStale(dir string, log *logging.Logger) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !e.IsDir() || !isMigrationID(e.Name()) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("remove stale migration %s: %w", e.Name(), err)
		}
		log.Warnf("agent: removed %s, left by an agent that died during a migration", e.Name())
	}
	return nil
}

// isMigrationID reports whether name is a migration directory's name.
func isMigrationID(name string) bool {
	if len(name) != 16 {
		return false
	}
	_, err := hex.DecodeString(name)
	return err == nil && strings.ToLower(name) == name
}
