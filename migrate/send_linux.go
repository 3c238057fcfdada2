package migrate

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"godwit/dumper"
	"godwit/internal/actions"
	"godwit/internal/cpuinfo"
	"godwit/internal/drivers"
	"godwit/internal/netlock"
	_ "godwit/migrate/internal/proto"
	pb "godwit/migrate/internal/proto"
	"godwit/pageserver"
)

// DefaultPort is the agent's port when --to names none.
const DefaultPort = 7355

// ActionAbort is the action the scripts of a migration that failed after
// post-dump run with, once the source tree runs again here (godwit's
// own: criu(8) has no migration).
const ActionAbort = "migrate-abort"

// SendOptions describe one migration from this host.
type SendOptions struct {
	To             string // agent host[:port]
	Pid            int
	Mode           Mode
	DowntimeBudget time.Duration // default 50 ms
	// MaxRounds bounds the pre-copy rounds; 0 is stop-and-copy.
	MaxRounds int
	Transport string // page streams: "tls" (default) or "quic"
	// Compress is how page streams are compressed: CompressAuto (""),
	// CompressNone or CompressZstd: the rounds' pages over TLS (a relay,
	// one stream) or QUIC (every stream), and the lazy pages of post-copy
	// and hybrid (the agent's GETs and their replies). Auto times the link
	// (a probe on the control stream) and zstd (on a sample of the
	// program's memory) first and compresses when that pays
	// (autoCompress).
	Compress string
	// Streams is how many connections (TLS, or QUIC) a round's pages are
	// striped over: 0 is DefaultStreams; a compressed TLS round uses one.
	Streams int
	// SendAllPages sends zero and duplicate pages' data too (by default
	// a one-stream round sends them as short records:
	// pageserver.TransportOptions.Dedup); for measurements.
	SendAllPages bool
	TLS          TLSFiles
	// ServerName is the name the agent's certificate must carry (default
	// the host of To).
	ServerName string
	// WorkDir holds the source's round images (default a temporary
	// directory, removed afterwards).
	WorkDir   string
	FileLocks bool
	CPUCap    string
	// TCPEstablished moves the tree's established TCP connections (dump
	// and restore --tcp-established), in every mode: they stay locked on
	// this host from the freeze until the agent runs the tree (post-copy
	// and hybrid: until the source tree is killed after the last page),
	// and on the agent's host from before the pre-restore scripts (which
	// move the service address the connections use) until the restored
	// tree resumes.
	TCPEstablished, SkipInFlight bool
	// NetworkLock is how this host locks the connections ("": default).
	NetworkLock netlock.Method
	// ShellJob, ExtUnixSk: as dump's --shell-job and --ext-unix-sk (the
	// agent restores with --shell-job too).
	ShellJob, ExtUnixSk bool
	// FD, GhostLimit and ExtUnix go to the final dump as dump's file
	// options do: --link-remap (its link is made on this host's file
	// system, which the agent's must share), --evasive-devices,
	// --force-irmap; --ghost-limit (0: the default); --external
	// unix[INO]. FD.ExtFiles and ExtTTY (--external file[...] and
	// tty[...]) are refused: their restore needs --inherit-fd, a
	// descriptor of the restoring host's, which no migration can pass.
	FD         drivers.FDOptions
	GhostLimit uint64
	ExtUnix    []uint32
	ExtTTY     [][2]uint64
	// ActionScripts run at the migration's action points (see
	// docs/migrate-actions.md): the dump's pre-dump and post-dump, then
	// pre-restore (the agent holds the connections' lock: move the
	// service address there), pre-resume (the agent's copy is restored
	// and stopped), post-restore (it runs), and migrate-abort (a failure
	// after post-dump: the source tree runs on here; put back what the
	// earlier actions moved).
	ActionScripts []string
	// FullFill has the agent fill every page before the resume (the
	// downtime grows with the memory) instead of restoring lazily from
	// its own images and filling after the resume.
	FullFill bool
	// NoOverlap keeps the agent from making the task during the rounds
	// (no Layout sent): it restores from the images after the freeze.
	NoOverlap bool
	// ServerTLS is this host's server certificate (the CA is TLS's):
	// post-copy serves the lazy pages with it to the agent.
	ServerTLS TLSFiles
	// OnRound, if set, sees every pre-copy round as it ends (progress).
	OnRound func(Round)
	// OnPhase, if set, is told each phase as the migration enters it.
	OnPhase func(Phase)
	// Notice, if set, gets a line for the user (stderr): an interrupt
	// ignored during the switch-over, a lost answer being settled.
	Notice func(string)
}

// Send migrates the tree of o.Pid to the agent at o.To. Until the agent
// has the tree rebuilt and stopped (Ready), any failure leaves the source
// running as it was (thawed, untraced, its memory tracking ended). Ready is
// the commit (switchOver): the source tree is killed once the agent runs
// its copy, runs on if the agent's copy is known gone, and is otherwise
// left stopped "in doubt" (an error wrapping errInDoubt) for
// `godwit migrate resolve`.
func Send(ctx context.Context, o SendOptions) (res *Result, err error) {
	res = &Result{PID: o.Pid, Mode: o.Mode, Transport: o.Transport, Started: time.Now(), Destination: o.To}
	defer func() {
		res.Total = time.Since(res.Started)
		var pe *PhaseError
		if errors.As(err, &pe) {
			res.FailedPhase, res.Error = pe.Phase, pe.Err.Error()
		}
	}()
	if res.Mode == "" {
		res.Mode = ModePrecopy
	}
	if res.Transport == "" {
		res.Transport = "tls"
	}
	switch res.Mode {
	case ModePrecopy:
	case ModePostcopy:
		if o.ServerTLS.Cert == "" || o.ServerTLS.Key == "" {
			return res, phaseErr(PhaseCheck, errors.New("--mode postcopy serves the pages to the agent: it needs --tls-server-cert and --tls-server-key"))
		}
		if o.Transport == "quic" || o.FullFill {
			return res, phaseErr(PhaseCheck, errors.New("--mode postcopy: --transport quic and --no-lazy-restore do not apply"))
		}
		if o.ServerTLS.CACert == "" {
			o.ServerTLS.CACert = o.TLS.CACert
		}
	case ModeHybrid:
		// Pre-copy rounds, then a lazy final dump served like post-copy.
		if o.ServerTLS.Cert == "" || o.ServerTLS.Key == "" {
			return res, phaseErr(PhaseCheck, errors.New("--mode hybrid serves the last dirty pages to the agent: it needs --tls-server-cert and --tls-server-key"))
		}
		if o.FullFill {
			return res, phaseErr(PhaseCheck, errors.New("--mode hybrid: --no-lazy-restore does not apply"))
		}
		if o.ServerTLS.CACert == "" {
			o.ServerTLS.CACert = o.TLS.CACert
		}
	default:
		return res, phaseErr(PhaseCheck, fmt.Errorf("unknown --mode %q (want precopy, postcopy or hybrid)", res.Mode))
	}
	if len(o.FD.ExtFiles) > 0 || len(o.ExtTTY) > 0 {
		return res, phaseErr(PhaseCheck, errors.New("--external file[...] and tty[...] cannot be migrated: their restore needs --inherit-fd, a descriptor of the destination host's"))
	}
	comp, err := ParseCompress(o.Compress)
	if err != nil {
		return res, phaseErr(PhaseCheck, err)
	}
	res.Compress = comp
	compressing := comp != CompressNone
	if o.Streams == 0 {
		o.Streams = DefaultStreams(res.Transport)
	}
	if o.Streams < 1 || o.Streams > pageserver.MaxStreams {
		return res, phaseErr(PhaseCheck, fmt.Errorf("--streams %d: want 1 to %d", o.Streams, pageserver.MaxStreams))
	}
	if o.DowntimeBudget <= 0 {
		o.DowntimeBudget = 50 * time.Millisecond
	}
	if o.MaxRounds < 0 {
		return res, phaseErr(PhaseCheck, fmt.Errorf("--max-rounds %d", o.MaxRounds))
	}
	enter := func(p Phase) {
		if o.OnPhase != nil {
			o.OnPhase(p)
		}
	}
	enter(PhaseConnect)
	host, _, err := splitHostPort(o.To)
	if err != nil {
		return res, phaseErr(PhaseConnect, err)
	}
	if o.ServerName == "" {
		o.ServerName = host
	}
	pages, err := o.TLS.pageTransport(res.Transport, o.ServerName)
	if err != nil {
		return res, phaseErr(PhaseConnect, err)
	}
	pids, files, tasks, err := describeTree(o.Pid)
	if err != nil {
		return res, phaseErr(PhaseCheck, err)
	}
	res.Tasks = tasks
	tc, err := o.TLS.clientConfig(o.ServerName)
	if err != nil {
		return res, phaseErr(PhaseConnect, err)
	}
	raw, err := dialAgent(ctx, o.To, o.TLS, o.ServerName)
	if err != nil {
		return res, phaseErr(PhaseConnect, err)
	}
	defer raw.Close()
	// The rounds stop as soon as the control link dies or the caller's
	// ctx ends (SIGINT, SIGTERM), until the switch-over's commit: from
	// there the migration ends only as switchOver settles it.
	parent := ctx
	ctx, cancel := context.WithCancel(context.WithoutCancel(parent))
	defer cancel()
	gate := &switchGate{cancel: cancel, conn: raw, notice: o.Notice}
	stop := context.AfterFunc(parent, gate.interrupt)
	defer stop()
	s := &sender{ctl: newCtl(raw, gate.linkLost), ctx: ctx, gate: gate}
	hostname, _ := os.Hostname()
	cpu, err := hostCPU()
	if err != nil {
		return res, phaseErr(PhaseCheck, err)
	}
	res.Source = hostname
	if err := s.send(&pb.Envelope{Msg: &pb.Envelope_Hello{Hello: &pb.Hello{Version: Version, Pid: int32(o.Pid), Pids: pids,
		Files: files, Transport: res.Transport, Mode: string(res.Mode), Source: hostname, Cpuinfo: cpu, CpuCap: o.CPUCap,
		Compress: comp, MemoryBytes: treeMemory(o.Pid)}}}); err != nil {
		return res, phaseErr(PhaseConnect, err)
	}
	enter(PhaseCheck)
	m, err := s.recv(PhaseCheck, time.Minute)
	if err != nil {
		return res, err
	}
	if m.GetAccepted() == nil {
		return res, phaseErr(PhaseCheck, fmt.Errorf("expected accepted, got %T", m.Msg))
	}
	res.ID = m.GetAccepted().Id
	s.pageLimit = m.GetAccepted().PageLimit
	if comp == CompressAuto {
		a := &AutoCompress{}
		if a.Link, err = s.probeLink(); err != nil {
			return res, s.abortWith(PhaseCheck, fmt.Errorf("link probe: %w", err))
		}
		if a.Zstd, a.Ratio, err = sampleCompress(o.Pid); err != nil {
			return res, s.abortWith(PhaseCheck, err)
		}
		a.Compress = autoCompress(a.Link, a.Zstd, a.Ratio)
		compressing, res.Auto = a.Compress, a
	}
	// A compressed TLS round is one relayed connection (compress.go); a
	// compressed QUIC round compresses each stream.
	s.streams = o.Streams
	relay := compressing && res.Transport != "quic"
	if relay {
		s.streams = 1
	}
	pages.Streams, res.Streams = s.streams, s.streams
	pages.Dedup = !o.SendAllPages
	// Duplicates are hashed only when the probed link is slower than the
	// hash (SHA-256 on one core, which also runs TLS): on a faster one
	// they cost more time than the bytes they save.
	if res.Auto != nil && res.Auto.Link > dedupHashMaxLink {
		pages.ZeroOnly = true
	}
	if compressing && !relay {
		pages.Compress = pageserver.CompressZstd
	}
	// The lazy pages (post-copy, hybrid) are compressed alike.
	s.lazyCompress = ""
	if compressing {
		s.lazyCompress = pageserver.CompressZstd
	}
	// The reuseport steering check's program, loaded now: the final
	// dump's freeze then has it (its own look before the freeze would
	// otherwise load it as the switch-over begins).
	dumper.PrepareFreeze(ctx, o.Pid)
	if res.Mode == ModePostcopy || (res.Mode == ModeHybrid && o.MaxRounds == 0) {
		// Hybrid without rounds is post-copy.
		return res, s.postcopy(o, res, raw.LocalAddr(), enter)
	}
	enter(PhasePrecopy)

	work := o.WorkDir
	if work == "" {
		if work, err = os.MkdirTemp("", "godwit-migrate-"); err != nil {
			return res, phaseErr(PhasePrecopy, err)
		}
		defer os.RemoveAll(work)
	}
	tracking := false
	// Before the agent is ready, a failure leaves the source as it was.
	locked := false
	// abortedHeld: this side aborted the held copy (abortHeld); the
	// agent's failure then only echoes that Abort.
	abortedHeld := false
	abort := func(p Phase, err error) error {
		// The agent's reason first (a limit it enforced breaks the
		// page stream: that error says less).
		if f := s.agentFailure(); f != nil && !abortedHeld {
			p, err = Phase(f.Phase), fmt.Errorf("agent: %s (here: %v)", f.Message, err)
		}
		_ = s.send(&pb.Envelope{Msg: &pb.Envelope_Abort{Abort: &pb.Abort{Reason: err.Error()}}})
		if locked {
			// The agent drops its lock of the connections and closes
			// the link: a retry finds the destination clean.
			s.waitClosed(lockWait)
		}
		if tracking {
			dumper.EndTracking(o.Pid)
		}
		return phaseErr(p, err)
	}
	if o.MaxRounds > 0 {
		g, err := startGuard(o.Pid)
		if err != nil {
			return res, phaseErr(PhasePrecopy, err)
		}
		defer g.done()
	}

	// The agent makes the tasks and fills them during the rounds
	// (restorer.Pending): trees restored from pre-copy rounds alone (not
	// the lazy final pages of hybrid).
	overlap := false
	switch {
	case o.NoOverlap:
		res.Overlap = &Overlap{State: "off: --no-overlap"}
	case tasks > maxLayoutTasks:
		res.Overlap = &Overlap{State: fmt.Sprintf("off: a tree of %d processes, more than %d", tasks, maxLayoutTasks)}
	case res.Mode != ModePrecopy:
		res.Overlap = &Overlap{State: "off: --mode " + string(res.Mode)}
	default:
		overlap = true
	}
	n := uint32(0)
	var prevDur time.Duration
	memory := treeMemory(o.Pid)
	// Not even one full copy fits the agent's bound: refused before any
	// round freezes the tree.
	if s.pageLimit > 0 && imageBytes(memory) > s.pageLimit {
		return res, abort(PhaseCheck, fmt.Errorf("the tree's %d bytes of memory do not fit the agent's --max-migration-bytes %d", memory, s.pageLimit))
	}
	var prevRound *dumper.PreDumpResult
	for {
		// The final dump may take every page the tree has by then.
		memory = max(memory, treeMemory(o.Pid))
		room := pageRoom{limit: s.pageLimit, used: s.pageUsed, memory: memory}
		if s.pageLimit > 0 && prevRound != nil {
			// The next round's size counted now, just before it: the
			// rounds before say nothing of a program that starts
			// writing after them. Not counted: at worst all memory.
			c, err := dumper.DirtyPages(o.Pid, prevRound)
			room.next, room.counted = c*4096, true
			if err != nil {
				room.next = memory
			}
		}
		if stop, overrun, why := decide(res.Rounds, o.DowntimeBudget, o.MaxRounds, room); stop {
			// Hybrid never overruns: what did not converge comes lazily.
			res.Overrun = overrun && res.Mode != ModeHybrid
			res.PrecopyStop = why
			break
		}
		n++
		port, err := s.startRound(n, false, compressing)
		if err != nil {
			return res, abort(PhasePrecopy, err)
		}
		ps, cp, err := pageTarget(net.JoinHostPort(host, strconv.Itoa(port)), pages, tc, relay)
		if err != nil {
			return res, abort(PhasePrecopy, fmt.Errorf("round %d: %w", n, err))
		}
		po := dumper.PreDumpOptions{Pid: o.Pid, ImagesDir: filepath.Join(work, roundDir(n, false)),
			PageServer: ps, HolderTimeout: 10 * time.Minute}
		if n > 1 {
			po.PrevImagesDir = "../" + roundDir(n-1, false)
		}
		if err := os.Mkdir(po.ImagesDir, 0o700); err != nil {
			return res, abort(PhasePrecopy, err)
		}
		t0 := time.Now()
		tracking = true
		pr, err := dumper.PreDump(ctx, po)
		var st streamStats
		if cp != nil {
			var cerr error
			if st, cerr = cp.finish(); err != nil && cerr != nil {
				err = fmt.Errorf("%w (compressed stream: %v)", err, cerr)
			}
		}
		if err != nil {
			return res, abort(PhasePrecopy, fmt.Errorf("round %d: %w", n, err))
		}
		if overlap {
			// The layout now, while the tree runs: approximate, the
			// final dump's is the one restored.
			l, err := layoutMsg(o.Pid)
			if err == nil && l != nil {
				err = s.send(&pb.Envelope{Msg: &pb.Envelope_Layout{Layout: l}})
			}
			if err != nil {
				return res, abort(PhasePrecopy, fmt.Errorf("round %d: %w", n, err))
			}
		}
		if err := s.endRound(n); err != nil {
			return res, abort(PhasePrecopy, err)
		}
		dur := time.Since(t0)
		r := memRound(n, pr.Mem)
		r.Duration, r.Frozen, r.Wire = dur, pr.Frozen, st.Wire
		if dur > 0 {
			r.Bandwidth = float64(r.Bytes) / dur.Seconds()
		}
		switch {
		case n > 1 && prevDur > 0:
			// What this round took was written while the last one ran.
			r.DirtyRate = float64(r.Bytes) / prevDur.Seconds()
		case n == 1 && dur > 0:
			// The first round took everything: the pages written
			// since its scan are the only measure of the program.
			r.DirtyRate = float64(pr.Pending*4096) / dur.Seconds()
		}
		prevDur, prevRound = dur, pr
		res.Rounds = append(res.Rounds, r)
		if o.OnRound != nil {
			o.OnRound(r)
		}
		testAfterRound(n, o.Notice)
	}

	if res.Mode == ModeHybrid {
		return res, s.hybrid(o, res, n, host, pages, work, raw.LocalAddr(), enter, abort)
	}

	// Freeze: the final dump sends the last delta; its post-dump hook,
	// run while the tree is still frozen and resumable, hands the images
	// over and waits until the agent has the tree rebuilt.
	enter(PhaseFreeze)
	n++
	port, err := s.startRound(n, true, compressing)
	if err != nil {
		return res, abort(PhaseFreeze, err)
	}
	// The final delta is sent while the tree is frozen: hashing each page
	// for duplicates (SHA-256, about 0.6 ms per MiB here) would add to the
	// downtime more than it saves in bytes, and the delta is small by
	// design. The all-zero test stays: it costs next to nothing.
	fp := pages
	fp.ZeroOnly = true
	ps, cp, err := pageTarget(net.JoinHostPort(host, strconv.Itoa(port)), fp, tc, relay)
	if err != nil {
		return res, abort(PhaseFreeze, err)
	}
	final := filepath.Join(work, "final")
	if err := os.Mkdir(final, 0o700); err != nil {
		return res, abort(PhaseFreeze, err)
	}
	do := dumper.Options{Pid: o.Pid, ImagesDir: final, FileLocks: o.FileLocks, CPUCap: o.CPUCap,
		PageServer:     ps,
		TCPEstablished: o.TCPEstablished, SkipInFlight: o.SkipInFlight, NetworkLock: o.NetworkLock,
		ShellJob: o.ShellJob, ExtUnixSk: o.ExtUnixSk, Hold: &dumper.Hold{}}
	o.fileOptions(&do)
	if len(res.Rounds) > 0 {
		do.PrevImagesDir, do.TrackMem = "../"+roundDir(n-1, false), true
	}
	var frozeAt, dumpedAt, imagesAt, readyAt, resumedAt time.Time
	switched, postDump := false, false
	var doubt error
	hookPhase := PhaseFreeze
	// The user's scripts at the migration's own action points (the dump
	// runs them at its own first).
	user := &actions.Scripts{Commands: o.ActionScripts, ImagesDir: final}
	scripts := &actions.Scripts{Commands: o.ActionScripts, ImagesDir: final, Notify: func(action string, _ int) error {
		switch action {
		case actions.PreDump:
			frozeAt = time.Now()
		case actions.PostDump:
			postDump = true
			if err := s.endRound(n); err != nil {
				return err
			}
			dumpedAt = time.Now()
			if err := s.sendImages(final); err != nil {
				return err
			}
			imagesAt = time.Now()
			if o.TCPEstablished {
				if err := s.send(&pb.Envelope{Msg: &pb.Envelope_Lock{Lock: &pb.Lock{}}}); err != nil {
					return err
				}
				m, err := s.recv(PhaseFreeze, time.Minute)
				if err != nil {
					return err
				}
				locked = true
				if m.GetLocked() == nil {
					return fmt.Errorf("expected locked, got %T", m.Msg)
				}
				res.Connections = int(m.GetLocked().Connections)
			}
			if err := user.Run(actions.PreRestore, o.Pid); err != nil {
				return err
			}
			if err := s.send(&pb.Envelope{Msg: &pb.Envelope_Restore{Restore: &pb.Restore{FullFill: o.FullFill,
				TcpEstablished: o.TCPEstablished, ShellJob: o.ShellJob}}}); err != nil {
				return err
			}
			hookPhase = PhaseRestore
			enter(PhaseRestore)
			m, err := s.recv(PhaseRestore, roundWait)
			if err != nil {
				return err
			}
			if m.GetReady() == nil {
				return fmt.Errorf("expected ready, got %T", m.Msg)
			}
			readyAt = time.Now()
			if rd := m.GetReady(); overlap && rd.Overlap != "" {
				res.Overlap = &Overlap{State: rd.Overlap, Tasks: int(rd.PreparedTasks), PreparedPages: rd.PreparedPages, FinalPages: rd.FinalPages}
			}
			gate.readyArrived()
			hookPhase = PhaseSwitchover
			// Before the commit, the agent holds its copy: the source
			// thaws (this hook's error) only once the copy is gone.
			held := func(why error) error {
				abortedHeld = true
				err := s.abortHeld(&o, res.ID, why)
				if errors.Is(err, errInDoubt) {
					doubt = err
				}
				return err
			}
			if err := user.Run(actions.PreResume, o.Pid); err != nil {
				return held(err)
			}
			enter(PhaseSwitchover)
			if !gate.commit() {
				return held(errors.New("interrupted"))
			}
			ok, at, note, err := s.switchOver(&o, res.ID, do.Hold, o.Notice)
			if err != nil {
				if errors.Is(err, errInDoubt) {
					doubt = err
				}
				return err
			}
			switched, resumedAt, res.Note = ok, at, note
		}
		return nil
	}}
	dr, err := dumper.DumpContext(ctx, do, scripts)
	var finalWire uint64
	if cp != nil {
		st, cerr := cp.finish()
		finalWire = st.Wire
		if err != nil && cerr != nil && !switched {
			err = fmt.Errorf("%w (compressed stream: %v)", err, cerr)
		}
	}
	if err != nil && !switched && doubt == nil && postDump {
		// The source tree runs on: the scripts put back what post-dump
		// and pre-restore moved.
		if serr := user.Run(ActionAbort, o.Pid); serr != nil {
			err = errors.Join(err, serr)
		}
	}
	// The connections' lock the dump kept on this host: held (its guard
	// removes it should this process die) until the agent's copy runs.
	var srcLock *netlock.Lock
	if dr != nil && dr.NetLock != nil {
		l, lerr := netlock.Adopt(*dr.NetLock)
		if lerr != nil {
			err = errors.Join(err, fmt.Errorf("source network lock: %w", lerr))
		} else {
			srcLock = l
			defer func() {
				// The tree is gone from here (killed at the switch-over,
				// its sockets closed silently in repair mode): packets
				// of its connections no longer reach this host once the
				// address moved.
				if uerr := srcLock.Unlock(); uerr != nil {
					err = errors.Join(err, phaseErr(PhaseSwitchover, fmt.Errorf("source network unlock: %w", uerr)))
				}
			}()
		}
	}
	switch {
	case err != nil && switched:
		// Past the switch-over: the agent runs its copy and the source
		// is killed.
		res.Note = strings.TrimPrefix(res.Note+"; ", "; ") + fmt.Sprintf("after switch-over: %v", err)
	case doubt != nil:
		// Both copies stopped: only the user can tell which to keep.
		if tracking {
			dumper.EndTracking(o.Pid)
		}
		return res, phaseErr(PhaseSwitchover, doubt)
	case err != nil:
		// The dump rolled back: the source runs on (after Ready only
		// once the agent's copy is known gone).
		return res, abort(hookPhase, err)
	case !switched:
		return res, abort(PhaseSwitchover, errors.New("dump ended without handing over"))
	}
	if dr != nil && dr.Stats != nil && dr.Stats.FrozenTime != nil {
		r := memRound(n, dr.Mem)
		r.Wire, r.Frozen, r.Duration = finalWire, time.Duration(dr.Stats.GetFrozenTime())*time.Microsecond, dumpedAt.Sub(frozeAt)
		res.Rounds = append(res.Rounds, r)
	}
	// The agent resumed when its answer arrived.
	res.Downtime = resumedAt.Sub(frozeAt)
	res.Switchover = &Switchover{Dump: dumpedAt.Sub(frozeAt), Images: imagesAt.Sub(dumpedAt),
		Restore: readyAt.Sub(imagesAt), Resume: resumedAt.Sub(readyAt)}
	if dr != nil {
		res.Switchover.VMAFlags = dr.VMAFlags
	}
	if err := srcLock.Unlock(); err != nil {
		return res, phaseErr(PhaseSwitchover, fmt.Errorf("source network unlock: %w", err))
	}
	if err := user.Run(actions.PostRestore, o.Pid); err != nil {
		// The tree runs on the destination: report, nothing to undo.
		if res.Note != "" {
			res.Note += "; "
		}
		res.Note += err.Error()
	}
	if o.FullFill {
		return res, nil
	}
	select {
	case <-s.done:
		// The link has ended: either the agent said every page is in and
		// closed it before we got here (its PagesIn is still queued), or
		// the switch-over was settled on another connection, which is
		// not told the fill's end.
		if m, err := s.recv(PhasePostcopy, time.Millisecond); err == nil && m.GetPagesIn() != nil {
			res.Postcopy = pagesInResult(m.GetPagesIn())
			return res, nil
		}
		res.Note = strings.TrimPrefix(res.Note+"; ", "; ") + "every page in: not reported (control link lost)"
		return res, nil
	default:
	}
	// The copy runs; the migration is complete when the agent has every
	// page in. A failure now has killed the destination's copy too.
	enter(PhasePostcopy)
	m, err = s.recv(PhasePostcopy, roundWait)
	if err != nil {
		return res, err
	}
	pi := m.GetPagesIn()
	if pi == nil {
		return res, phaseErr(PhasePostcopy, fmt.Errorf("expected pages-in, got %T", m.Msg))
	}
	res.Postcopy = pagesInResult(pi)
	return res, nil
}

// testRoundWait is a test hook (e2e): DIR holds `send` after each
// pre-copy round N, before the next is sized, until DIR/N exists (at most
// a minute), so that a test can change what the program writes between
// two rounds.
const testRoundWait = "GODWIT_TEST_ROUND_WAIT"

func testAfterRound(n uint32, notice func(string)) {
	dir := os.Getenv(testRoundWait)
	if dir == "" {
		return
	}
	path := filepath.Join(dir, strconv.Itoa(int(n)))
	if notice != nil {
		notice(fmt.Sprintf("migrate: test: round %d done, waiting for %s", n, path))
	}
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(path); err == nil {
			return
		}
	}
}

// pagesInResult is the Result's view of the agent's PagesIn.
func pagesInResult(pi *pb.PagesIn) *Postcopy {
	return &Postcopy{Pages: pi.Pages, Faults: pi.Faults, FaultP50: time.Duration(pi.FaultP50Ns),
		FaultP99: time.Duration(pi.FaultP99Ns), Duration: time.Duration(pi.DurationNs)}
}

type sender struct {
	*ctl
	ctx context.Context
	// gate: post-copy and hybrid pass its commit in commitLazy.
	gate *switchGate
	// streams is how many connections each round's pages take.
	streams int
	// lazyCompress is how the lazy pages of post-copy and hybrid travel
	// (pageserver.TransportOptions.Compress).
	lazyCompress string
	// pageLimit is the agent's bound on the migration's page bytes
	// (Accepted.page_limit), pageUsed what its rounds wrote there so far
	// (the last RoundAck.page_bytes).
	pageLimit, pageUsed uint64
}

// memRound is round n's pages: Bytes counts the data sent, not the pages
// that went as zero or duplicate records.
func memRound(n uint32, m dumper.MemStats) Round {
	return Round{N: int(n - 1), Pages: m.Written, Bytes: (m.Written - min(m.Written, m.ZeroSent+m.SameSent)) * 4096,
		ZeroPages: m.ZeroSent, SamePages: m.SameSent}
}

// DefaultStreams is --streams' default for transport ("tls" or "quic").
// One TLS connection's encryption (AES-GCM) runs on one core: its rate
// bounds a stream. Striped, the dump's reading of the memory also
// overlaps the encryption (the stripes' workers encrypt while the dump
// reads the next batch), so even two cores gain: e2e
// TestMigrateTransports measured a migration's first round over 2 TLS
// streams 1.15 to 2.3 times as fast as over one on the 2-core test
// machine (where both lab hosts share the cores; bare page streams, with
// nothing to overlap, were no faster there). TLS gets a stream per core,
// at least 2, at most 4. QUIC gets one: the agent's page server receives
// every QUIC connection on one UDP socket, and striped QUIC measured
// from much slower to no faster (packets dropped).
func DefaultStreams(transport string) int {
	if transport == "quic" {
		return 1
	}
	return min(max(runtime.NumCPU(), 2), 4)
}

// agentFailure is the Failure the agent sent, if one arrives within a
// moment (the rest of what is queued is dropped: the migration ends).
func (s *sender) agentFailure() *pb.Failure {
	t := time.NewTimer(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case r := <-s.in:
			if f := r.m.GetFailure(); f != nil {
				return f
			}
		case <-s.done:
			select {
			case r := <-s.in:
				if f := r.m.GetFailure(); f != nil {
					return f
				}
				continue
			default:
			}
			return nil
		case <-t.C:
			return nil
		}
	}
}

// treeMemory is the resident and swapped memory of pid's processes, which
// the agent bounds the migration's page bytes with.
func treeMemory(pid int) uint64 {
	var n uint64
	for _, p := range treePIDs(pid) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", p))
		if err != nil {
			continue
		}
		for _, ln := range strings.Split(string(b), "\n") {
			f := strings.Fields(ln)
			if len(f) == 3 && (f[0] == "Rss:" || f[0] == "Swap:") && f[2] == "kB" {
				if k, err := strconv.ParseUint(f[1], 10, 64); err == nil {
					n += k << 10
				}
			}
		}
	}
	return n
}

// recv reads the agent's next message; a Failure becomes the agent's
// error with its phase.
func (s *sender) recv(p Phase, limit time.Duration) (*pb.Envelope, error) {
	m, err := s.ctl.recv(limit)
	if err != nil {
		if s.ctx.Err() != nil {
			err = s.ctx.Err()
		}
		return nil, phaseErr(p, fmt.Errorf("agent: %w", err))
	}
	if f := m.GetFailure(); f != nil {
		return nil, phaseErr(Phase(f.Phase), fmt.Errorf("agent: %s", f.Message))
	}
	return m, nil
}

// lockWait bounds how long an aborting source waits for the agent to
// remove its lock of the connections.
const lockWait = 30 * time.Second

// waitClosed reads the control link until the agent closes it (or limit).
func (s *sender) waitClosed(limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if _, err := s.ctl.recv(time.Until(deadline)); err != nil {
			return
		}
	}
}

// probeLink times random bytes over the control stream to the agent
// (bytes per second, TLS included): probeMin at least, then more until
// probeTime passed or probeMax went.
func (s *sender) probeLink() (float64, error) {
	chunk := make([]byte, 1<<20)
	if _, err := rand.Read(chunk); err != nil {
		return 0, err
	}
	t := time.Now()
	sent := 0
	for last := false; !last; {
		sent += len(chunk)
		last = sent >= probeMax || (sent >= probeMin && time.Since(t) >= probeTime)
		if err := s.send(&pb.Envelope{Msg: &pb.Envelope_Probe{Probe: &pb.Probe{Data: chunk, Last: last}}}); err != nil {
			return 0, err
		}
	}
	m, err := s.recv(PhaseCheck, time.Minute)
	if err != nil {
		return 0, err
	}
	if m.GetProbeAck() == nil || m.GetProbeAck().Bytes != uint64(sent) {
		return 0, fmt.Errorf("expected an answer for %d probe bytes, got %v", sent, m)
	}
	return float64(sent) / time.Since(t).Seconds(), nil
}

// pageTarget is where a round's pages go: the page server at addr over
// the transport, or, compressed, a relay to it (finished by the caller).
func pageTarget(addr string, pages pageserver.TransportOptions, tc *tls.Config, compressed bool) (*dumper.PageServer, *compressedPages, error) {
	if !compressed {
		return &dumper.PageServer{Addr: addr, Transport: pages}, nil, nil
	}
	cp, err := dialCompressed(addr, tc)
	if err != nil {
		return nil, nil, err
	}
	// The relay compresses what the dump writes to its socket: zero and
	// duplicate pages still go as records (less to compress).
	return &dumper.PageServer{Socket: cp.sock, Transport: pageserver.TransportOptions{Dedup: pages.Dedup, ZeroOnly: pages.ZeroOnly}}, cp, nil
}

func (s *sender) startRound(n uint32, final, compressed bool) (int, error) {
	rs := &pb.RoundStart{N: n, Final: final, Streams: uint32(s.streams)}
	if compressed {
		rs.Compress, rs.Streams = CompressZstd, 1
	}
	if err := s.send(&pb.Envelope{Msg: &pb.Envelope_RoundStart{RoundStart: rs}}); err != nil {
		return 0, err
	}
	m, err := s.recv(PhasePrecopy, time.Minute)
	if err != nil {
		return 0, err
	}
	if m.GetRoundReady() == nil || m.GetRoundReady().Port == 0 || m.GetRoundReady().Port > 65535 {
		return 0, fmt.Errorf("expected a page server port, got %v", m)
	}
	return int(m.GetRoundReady().Port), nil
}

func (s *sender) endRound(n uint32) error {
	if err := s.send(&pb.Envelope{Msg: &pb.Envelope_RoundDone{RoundDone: &pb.RoundDone{N: n}}}); err != nil {
		return err
	}
	m, err := s.recv(PhasePrecopy, roundWait)
	if err != nil {
		return err
	}
	if m.GetRoundAck() == nil || m.GetRoundAck().N != n {
		return fmt.Errorf("expected ack of round %d, got %v", n, m)
	}
	s.pageUsed = m.GetRoundAck().PageBytes
	return nil
}

// sendImages sends every regular file of the final dump directory (the
// non-memory images; the pages went to the agent's page server).
func (s *sender) sendImages(dir string) error {
	select {
	case <-s.done:
		// Writes may still land in the socket's buffer: fail now.
		return fmt.Errorf("the agent's link ended before the images were sent: %w", s.ctl.err)
	default:
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	buf := make([]byte, fileChunk)
	for _, e := range ents {
		// The network lock record names this host's rules: the agent
		// makes its own lock (Lock).
		if !e.Type().IsRegular() || e.Name() == netlock.RecordFile {
			continue
		}
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			return err
		}
		for {
			k, rerr := io.ReadFull(f, buf)
			last := rerr == io.EOF || rerr == io.ErrUnexpectedEOF
			if rerr != nil && !last {
				f.Close()
				return fmt.Errorf("image %s: %w", e.Name(), rerr)
			}
			if err := s.send(&pb.Envelope{Msg: &pb.Envelope_File{File: &pb.File{Name: e.Name(), Data: buf[:k], Last: last}}}); err != nil {
				f.Close()
				return err
			}
			if last {
				break
			}
		}
		f.Close()
	}
	return nil
}

func splitHostPort(to string) (string, int, error) {
	if to == "" {
		return "", 0, errors.New("--to is required")
	}
	host, ps, err := net.SplitHostPort(to)
	if err != nil {
		if strings.Contains(err.Error(), "missing port") {
			return to, DefaultPort, nil
		}
		return "", 0, fmt.Errorf("--to %q: %w", to, err)
	}
	p, err := strconv.Atoi(ps)
	if err != nil || p <= 0 || p > 65535 {
		return "", 0, fmt.Errorf("--to %q: bad port", to)
	}
	return host, p, nil
}

// dedupHashMaxLink is the probed link speed (bytes/s) above which
// duplicate pages are not looked for. SHA-256 hashes about 1.6 GB/s on one
// core here, the core that also encrypts the stream, and the probe (one
// short stream) reads well under a link's real speed: 225-309 MB/s on
// loopback, whose TLS floor is about 1 GB/s. A 1 Gbit/s link (125 MB/s)
// keeps the hashing, which costs far less there than the bytes it saves.
const dedupHashMaxLink = 200e6

// describeTree lists every PID and TID of pid's tree and the absolute paths
// its tasks have open or mapped or work in (cwd, root), for the
// destination's checks, and how many processes it has.
func describeTree(pid int) ([]int32, []string, int, error) {
	var pids []int32
	seen := map[string]bool{}
	var files []string
	add := func(p string) {
		if strings.HasPrefix(p, "/") && !strings.HasSuffix(p, " (deleted)") && !seen[p] {
			seen[p] = true
			files = append(files, p)
		}
	}
	queue := []int{pid}
	nproc := 0
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", p))
		if err != nil {
			return nil, nil, 0, fmt.Errorf("process %d: %w", p, err)
		}
		pids = append(pids, int32(p))
		nproc++
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			if tid != p {
				pids = append(pids, int32(tid))
			}
			// The restore chdirs and chroots each thread to these: a
			// missing one must fail the check, not the restore after the
			// freeze. Threads may have their own (no CLONE_FS).
			for _, l := range []string{"cwd", "root"} {
				if d, err := os.Readlink(fmt.Sprintf("/proc/%d/task/%d/%s", p, tid, l)); err == nil {
					add(d)
				}
			}
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", p, tid))
			for _, c := range strings.Fields(string(b)) {
				if k, err := strconv.Atoi(c); err == nil {
					queue = append(queue, k)
				}
			}
		}
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p))
		for _, fd := range fds {
			if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", p, fd.Name())); err == nil {
				add(l)
			}
		}
		maps, _ := os.ReadFile(fmt.Sprintf("/proc/%d/maps", p))
		for _, line := range strings.Split(string(maps), "\n") {
			if f := strings.Fields(line); len(f) >= 6 {
				add(strings.Join(f[5:], " "))
			}
		}
	}
	return pids, files, nproc, nil
}

// killTree sends SIGKILL to every process of pid's (frozen) tree.
func killTree(pid int) error {
	var errs []error
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", p))
		for _, t := range tasks {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", p, t.Name()))
			for _, c := range strings.Fields(string(b)) {
				if k, err := strconv.Atoi(c); err == nil {
					queue = append(queue, k)
				}
			}
		}
		if err := unix.Kill(p, unix.SIGKILL); err != nil && err != unix.ESRCH {
			errs = append(errs, fmt.Errorf("kill %d: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// hostCPU is this CPU as a serialized cpuinfo.img entry.
func hostCPU() ([]byte, error) {
	h, err := cpuinfo.Host()
	if err != nil {
		return nil, err
	}
	return proto.Marshal(h.Entry())
}

// postcopy freezes the tree and dumps it lazily (dump --lazy-pages): every
// image but the pages of lazy VMAs goes to the agent, which restores and
// resumes at once; the frozen tree then serves those pages (mutual TLS,
// this host's server certificate, the agent's client one) until the
// agent's lazy-pages daemon has them all, and is killed. The images handed
// over are the point of no return: the tree is never resumed after that,
// so a failure from then on (source or agent lost) loses the program: the
// destination's copy is killed rather than left with missing pages.
func (s *sender) postcopy(o SendOptions, res *Result, local net.Addr, enter func(Phase)) error {
	enter(PhaseFreeze)
	work, err := os.MkdirTemp(o.WorkDir, "godwit-postcopy-")
	if err != nil {
		return s.abortWith(PhaseFreeze, err)
	}
	defer os.RemoveAll(work)
	ip := local.(*net.TCPAddr).IP
	// The page server's port, named in the restore request before the
	// dump serves on it.
	ln, err := net.Listen("tcp", net.JoinHostPort(ip.String(), "0"))
	if err != nil {
		return s.abortWith(PhaseFreeze, err)
	}
	addr := ln.Addr().String()
	ln.Close()
	to, err := o.ServerTLS.pageTransport("tls", "")
	if err != nil {
		return s.abortWith(PhaseFreeze, err)
	}
	host, _, _ := splitHostPort(o.To)
	to.AllowedClients, to.Compress = []string{host}, s.lazyCompress
	// Serving ends with the agent's CLOSE; a Failure from the agent, or
	// its link lost, ends it at once. Started once the restore is asked
	// for: until then the dump's hook talks with the agent itself.
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	w := newLazyWatch()
	var frozeAt, dumpedAt time.Time
	committed := false
	hold := &dumper.Hold{}
	sw := newLazySwitch(&o, work)
	scripts := sw.dumpScripts(func(action string, _ int) error {
		switch action {
		case actions.PreDump:
			frozeAt = time.Now()
			return s.send(&pb.Envelope{Msg: &pb.Envelope_RoundStart{RoundStart: &pb.RoundStart{Final: true, Lazy: true}}})
		case actions.PostDump:
			// The user's post-dump scripts ran (they may have moved
			// the address): a failure from here on runs migrate-abort.
			sw.postDump = true
			dumpedAt = time.Now()
			if err := s.sendImages(work); err != nil {
				return err
			}
			if err := sw.beforeCommit(s, res, PhaseFreeze); err != nil {
				return err
			}
			if err := s.commitLazy(hold, addr, o.TCPEstablished); err != nil {
				return err
			}
			committed = true
			enter(PhasePostcopy)
			go w.run(s, res, cancel)
			if os.Getenv(testSwitchover) != "" && o.Notice != nil {
				o.Notice("migrate: test: committed (post-copy)")
			}
		}
		return nil
	})
	do := dumper.Options{Pid: o.Pid, ImagesDir: work, FileLocks: o.FileLocks, CPUCap: o.CPUCap, Hold: hold}
	o.fileOptions(&do)
	sw.dumpOptions(&do)
	dr, err := dumper.DumpLazyContext(ctx, do, scripts, dumper.LazyServe{Addr: addr, Transport: to})
	if !committed {
		if err == nil {
			err = errors.New("dump ended without handing over")
		}
		return sw.abort(s, PhaseFreeze, err, s.abortWith)
	}
	<-w.received
	if !w.resumedAt.IsZero() {
		res.Downtime = w.resumedAt.Sub(frozeAt)
		res.Switchover = &Switchover{Dump: dumpedAt.Sub(frozeAt)}
		if dr != nil {
			res.Switchover.VMAFlags = dr.VMAFlags
		}
	}
	return sw.finish(dr, res, w.end("post-copy", err, res))
}

// commitLazy is the commit of post-copy and hybrid: from here the source
// never runs again and dies with this process (not thawed by its tracer's
// death while the agent's copy runs); the agent is asked to restore with
// its lazy pages served from addr.
func (s *sender) commitLazy(hold *dumper.Hold, addr string, tcp bool) error {
	// An agent gone before the restore was asked (killed while the
	// pre-restore scripts ran) has no copy: the source runs on. (Gone
	// from here on, it may have one: never known here.)
	select {
	case <-s.done:
		return fmt.Errorf("the agent's link ended before the restore was asked: %w", s.ctl.err)
	default:
	}
	// Past the commit the link's end no longer cancels the serving (the
	// agent closes it after PagesIn, maybe before its lazy connection),
	// and an interrupt no longer kills the pages' only source.
	if s.gate != nil && !s.gate.commit() {
		return errors.New("interrupted")
	}
	if err := hold.KillOnExit(true); err != nil {
		_ = hold.KillOnExit(false)
		return fmt.Errorf("hold the source tree: %w", err)
	}
	if err := s.send(&pb.Envelope{Msg: &pb.Envelope_Restore{Restore: &pb.Restore{PageSource: addr, Compress: s.lazyCompress, TcpEstablished: tcp}}}); err != nil {
		_ = hold.KillOnExit(false)
		return err
	}
	return nil
}

// lazyWatch reads the agent's messages while the frozen source serves its
// lazy pages: Resumed (the downtime's end), then PagesIn (the end). A
// failure from the agent, or its link lost, cancels the serving.
type lazyWatch struct {
	received  chan struct{} // closed when run returns
	err       error         // the link's failure, if any
	resumedAt time.Time
}

func newLazyWatch() *lazyWatch { return &lazyWatch{received: make(chan struct{})} }

func (w *lazyWatch) run(s *sender, res *Result, cancel func()) {
	defer close(w.received)
	for {
		m, err := s.recv(PhasePostcopy, roundWait)
		if err != nil {
			w.err = err
			cancel()
			return
		}
		switch {
		case m.GetResumed() != nil:
			w.resumedAt = s.at
		case m.GetPagesIn() != nil:
			res.Postcopy = pagesInResult(m.GetPagesIn())
			return
		}
	}
}

// end is the outcome once run returned and the serving dump (dumpErr)
// ended: every page in, or the failure that killed the source tree.
func (w *lazyWatch) end(what string, dumpErr error, res *Result) error {
	switch {
	case w.err != nil:
		return fmt.Errorf("%s, the source tree killed: %w", what, w.err)
	case dumpErr != nil:
		return phaseErr(PhasePostcopy, fmt.Errorf("the source tree killed: %w", dumpErr))
	case res.Postcopy == nil:
		return phaseErr(PhasePostcopy, errors.New("the agent did not report every page in"))
	}
	return nil
}

// abortWith tells the agent to remove what it has (the source runs on).
func (s *sender) abortWith(p Phase, err error) error {
	_ = s.send(&pb.Envelope{Msg: &pb.Envelope_Abort{Abort: &pb.Abort{Reason: err.Error()}}})
	return phaseErr(p, err)
}

// hybrid ends the pre-copy rounds (n so far) with a lazy final dump on top
// of them (dump --lazy-pages --prev-images-dir --track-mem): the pages the
// tree wrote since the last round and that the agent can take lazily stay
// in the frozen tree; everything else (the pagemap with its PARENT and
// LAZY entries, the pages of memory that cannot come lazily) goes to the
// agent's page server as the final round, the other images as files.
// The agent restores and resumes at once; its lazy-pages daemon reads the
// round pages from its own images and pulls the rest from the frozen tree
// here, which is killed only when every page is in. As in post-copy, the
// images handed over are the point of no return.
func (s *sender) hybrid(o SendOptions, res *Result, n uint32, host string, pages pageserver.TransportOptions, work string,
	local net.Addr, enter func(Phase), abort func(Phase, error) error) error {
	enter(PhaseFreeze)
	n++
	// The final round's pages go straight from the dump: compressed over
	// QUIC (pages.Compress), as they are over TLS (no relay here).
	port, err := s.startRound(n, true, pages.Compress != "")
	if err != nil {
		return abort(PhaseFreeze, err)
	}
	final := filepath.Join(work, "final")
	if err := os.Mkdir(final, 0o700); err != nil {
		return abort(PhaseFreeze, err)
	}
	// The lazy pages' port, named in the restore request before the
	// dump serves on it.
	ln, err := net.Listen("tcp", net.JoinHostPort(local.(*net.TCPAddr).IP.String(), "0"))
	if err != nil {
		return abort(PhaseFreeze, err)
	}
	addr := ln.Addr().String()
	ln.Close()
	to, err := o.ServerTLS.pageTransport("tls", "")
	if err != nil {
		return abort(PhaseFreeze, err)
	}
	to.AllowedClients, to.Compress = []string{host}, s.lazyCompress
	// Serving ends with the agent's CLOSE; a Failure from the agent, or
	// its link lost, ends it at once.
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	// Started once the restore is asked for: until then the dump's hook
	// talks with the agent itself.
	w := newLazyWatch()
	var frozeAt, dumpedAt, imagesAt time.Time
	committed := false
	hookPhase := PhaseFreeze
	hold := &dumper.Hold{}
	sw := newLazySwitch(&o, final)
	scripts := sw.dumpScripts(func(action string, _ int) error {
		switch action {
		case actions.PreDump:
			frozeAt = time.Now()
		case actions.PostDump:
			// As post-copy's: migrate-abort from here on.
			sw.postDump = true
			if err := s.endRound(n); err != nil {
				return err
			}
			dumpedAt = time.Now()
			if err := s.sendImages(final); err != nil {
				return err
			}
			imagesAt = time.Now()
			if err := sw.beforeCommit(s, res, PhaseFreeze); err != nil {
				return err
			}
			if err := s.commitLazy(hold, addr, o.TCPEstablished); err != nil {
				return err
			}
			committed = true
			hookPhase = PhasePostcopy
			enter(PhasePostcopy)
			go w.run(s, res, cancel)
		}
		return nil
	})
	do := dumper.Options{Pid: o.Pid, ImagesDir: final, FileLocks: o.FileLocks, CPUCap: o.CPUCap,
		PrevImagesDir: "../" + roundDir(n-1, false), TrackMem: true, Hold: hold}
	o.fileOptions(&do)
	sw.dumpOptions(&do)
	dr, err := dumper.DumpLazyContext(ctx, do, scripts, dumper.LazyServe{Addr: addr, Transport: to,
		Pages: &dumper.PageServer{Addr: net.JoinHostPort(host, strconv.Itoa(port)), Transport: pages}})
	if !committed {
		// The dump rolled back: the source runs on.
		if err == nil {
			err = errors.New("dump ended without handing over")
		}
		// The pre-copy rounds' abort (tracking ended) once the scripts
		// put back what they moved.
		return sw.abort(s, hookPhase, err, abort)
	}
	<-w.received
	if dr != nil && dr.Stats != nil {
		// Frozen: the source stays frozen until every page is in (the
		// program runs on the destination meanwhile).
		r := memRound(n, dr.Mem)
		r.Frozen, r.Duration = time.Duration(dr.Stats.GetFrozenTime())*time.Microsecond, dumpedAt.Sub(frozeAt)
		res.Rounds = append(res.Rounds, r)
	}
	if !w.resumedAt.IsZero() {
		res.Downtime = w.resumedAt.Sub(frozeAt)
		res.Switchover = &Switchover{Dump: dumpedAt.Sub(frozeAt), Images: imagesAt.Sub(dumpedAt), Restore: w.resumedAt.Sub(imagesAt)}
		if dr != nil {
			res.Switchover.VMAFlags = dr.VMAFlags
		}
	}
	return sw.finish(dr, res, w.end("hybrid post-copy", err, res))
}

// fileOptions sets the final dump's options for files (see SendOptions).
func (o *SendOptions) fileOptions(do *dumper.Options) {
	do.FD, do.GhostLimit, do.ExtUnix = o.FD, o.GhostLimit, o.ExtUnix
}
