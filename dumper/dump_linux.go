package dumper

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/stats"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"godwit/internal/actions"
	"godwit/internal/cpuinfo"
	"godwit/internal/drivers"
	"godwit/internal/images"
	"godwit/internal/inject"
	"godwit/internal/logging"
	"godwit/internal/model"
	"godwit/internal/model/criuimg"
	"godwit/internal/netlock"
	"godwit/internal/pagexfer"
	"godwit/internal/pidfd"
	"godwit/internal/procfs"
	"godwit/internal/ptrace"
	"godwit/internal/turns"
	"godwit/internal/vmaflags"
)

// Result is what a dump did.
type Result struct {
	Pid     int
	Threads []int // of the root, leader first
	Pids    []int // every task of the tree, parents before children
	Method  Method
	Stats   *stats.DumpStatsEntry
	Mem     MemStats
	// Injecting is the time the target spent inside injection sessions
	// (borrowed registers, every signal blocked), a part of its frozen
	// time.
	Injecting time.Duration
	// InjectedCalls counts the syscalls injected into the tree, in
	// InjectionStops ptrace stops (each a round trip through the
	// scheduler: what injection costs).
	InjectedCalls, InjectionStops int
	// InjectionSessions counts the injection sessions opened, and
	// InjectedByNr the injected calls by syscall number (a profile of
	// what the dump still asks the tree itself for).
	InjectionSessions int
	InjectedByNr      map[uintptr]int
	// NetLock is the network lock the dump kept for the restore (nil:
	// none), in the tree's network namespace: a caller that will not
	// restore there removes it (netlock.Adopt there, then Unlock).
	NetLock *netlock.Record
	// VMAFlags says where a dump on top of pre-dump rounds, or a lazy
	// one, read its VMAs' flags while frozen: "kernel" (vmaflags, no page
	// walk) or why smaps was read instead ("" for other dumps).
	VMAFlags string
}

// FormatStats renders the stats as --display-stats prints them (CRIU's
// lines, then the pages skipped, which CRIU's stats have no field for).
func (r *Result) FormatStats() string {
	return images.FormatStats(&stats.StatsEntry{Dump: r.Stats}) +
		fmt.Sprintf("Memory pages skipped (zero page): %d (%#x)\nMemory pages skipped (untouched): %d (%#x)\n",
			r.Mem.Zero, r.Mem.Zero, r.Mem.Untouched, r.Mem.Untouched)
}

// Dump freezes process o.Pid, writes its images into o.ImagesDir, then
// kills it (default), lets it run (o.LeaveRunning) or leaves it stopped
// (o.LeaveStopped). On any error before that last step the process
// resumes untouched and untraced, and o.ImagesDir is as it was: the images
// are written into a staging directory inside it and moved into place
// only when the dump succeeded, inventory.img last.
//
// With o.PageServer the pages go to that page server instead of
// o.ImagesDir, which receives every other image.
func Dump(o Options, scripts *actions.Scripts) (*Result, error) {
	return DumpContext(context.Background(), o, scripts)
}

// DumpContext is Dump that stops when ctx is done (godwit's SIGINT,
// SIGTERM and SIGHUP): the dump rolls back as for any error.
func DumpContext(ctx context.Context, o Options, scripts *actions.Scripts) (*Result, error) {
	if o.PageServer == nil {
		return DumpToContext(ctx, o, scripts, localPages{})
	}
	t, err := dialPageServer(ctx, o.PageServer)
	if err != nil {
		return nil, fmt.Errorf("dump: %w", err)
	}
	defer t.abort()
	// An interruption ends a wait for the server at once.
	defer context.AfterFunc(ctx, t.c.Abort)()
	return DumpToContext(ctx, o, scripts, t)
}

// PageTarget receives a dump's pages.
type PageTarget interface {
	// Open returns the sink for one pagemap (pagemap-PID.img or
	// pagemap-shmem-ID.img, with its pages id).
	Open(d *images.Dir, pagemapName string, pagesID uint32) (pagexfer.Sink, error)
	// Commit makes every page durable (a page server acknowledges them);
	// the dump finishes the task only after it succeeded.
	Commit() error
}

// localPages writes pages into the images directory (pagexfer.ImageSink).
type localPages struct{}

func (localPages) Open(d *images.Dir, name string, id uint32) (pagexfer.Sink, error) {
	return pagexfer.NewImageSink(d, name, id)
}
func (localPages) Commit() error { return nil }

// holdingTarget is a PageTarget that needs the dumped tree frozen after
// the images stand: DumpToContext calls hold before finishing the tree.
type holdingTarget interface {
	hold(ctx context.Context) error
	lazyPages() uint64 // pages left out of the images for it
	// dieWithDumper: the held tree dies if this process does
	// (LazyServe.DieWithServer).
	dieWithDumper() bool
}

// DumpTo is Dump with page data sent to target.
func DumpTo(o Options, scripts *actions.Scripts, target PageTarget) (*Result, error) {
	return DumpToContext(context.Background(), o, scripts, target)
}

// DumpToContext is DumpTo that stops when ctx is done.
func DumpToContext(ctx context.Context, o Options, scripts *actions.Scripts, target PageTarget) (*Result, error) {
	pid := o.Pid
	if pid <= 0 {
		return nil, fmt.Errorf("bad pid %d", pid)
	}
	// Held from the first check: every later step verifies that pid
	// still names this process (see pidfd.Proc.Verify).
	proc, err := pidfd.Open(pid)
	if err != nil {
		return nil, err
	}
	defer proc.Close()
	if err := Check(pid); err != nil {
		return nil, err
	}
	if err := proc.Verify(); err != nil {
		return nil, err
	}
	if o.LeaveRunning && o.LeaveStopped {
		return nil, errors.New("dump: --leave-running and --leave-stopped exclude each other")
	}
	final, err := images.Open(o.ImagesDir, true)
	if err != nil {
		return nil, fmt.Errorf("dump: %w", err)
	}
	defer final.Close()
	var rb rollback
	defer rb.run() // no-op once disarmed
	stage, err := images.NewStaging(final)
	if err != nil {
		return nil, fmt.Errorf("dump: %w", err)
	}
	rb.add(stage.Abort)
	dir := stage.Dir()
	track, err := prepareChain(ctx, o, dir)
	if err != nil {
		return nil, err
	}
	defer track.finish(false) // no-op once finished
	// On top of pre-dump rounds, or lazy (a migration's switch-over):
	// the VMAs' flags come from the kernel's VMAs (vmaflags), not from
	// smaps, whose page walk would grow the frozen time with the memory
	// size. The table of flag names is learnt now, before the freeze.
	var names *vmaflags.Names
	vmaFlags := ""
	if _, lazy := target.(*lazyTarget); lazy || track != nil && track.pt != nil {
		if names, err = vmaflags.Calibrate(); err != nil {
			logging.FromContext(ctx).Infof("dump %d: VMA flags read from smaps while frozen: %v", pid, err)
			names, vmaFlags = nil, "smaps: "+err.Error()
		}
	}
	if err := interrupted(ctx); err != nil {
		return nil, fmt.Errorf("dump %d: %w", pid, err)
	}
	if err := scripts.Run(actions.PreDump, pid); err != nil {
		return nil, fmt.Errorf("dump: %w", err)
	}
	if err := proc.Verify(); err != nil {
		return nil, fmt.Errorf("dump: after the pre-dump script: %w", err)
	}
	if err := writeCPUInfo(dir, o.CPUCap); err != nil {
		return nil, fmt.Errorf("dump: %w", err)
	}
	if err := interrupted(ctx); err != nil {
		return nil, fmt.Errorf("dump %d: %w", pid, err)
	}
	ds, err := drivers.Ordered()
	if err != nil {
		return nil, fmt.Errorf("dump: %w", err)
	}

	PrepareFreeze(ctx, pid)
	if err := interrupted(ctx); err != nil {
		return nil, fmt.Errorf("dump %d: %w", pid, err)
	}

	tr := ptrace.New()
	// Runs last (deferred first): detaches whatever is still attached.
	defer tr.Close()
	if o.Hold != nil {
		o.Hold.killOnExit = tr.KillOnExit
		defer func() { o.Hold.killOnExit = nil }()
	}
	if atFreeze != nil {
		atFreeze()
	}
	t0 := time.Now()
	var tids []int
	if o.FreezeCgroup != "" {
		// The cgroup is thawed inside, on success and on error.
		tids, err = freezeViaCgroup(tr, o.FreezeCgroup, pid)
		if err != nil {
			// Seized threads, stopped or not, are detached by the
			// tracer's Close.
			return nil, fmt.Errorf("dump: %w", err)
		}
	} else if tids, err = tr.FreezeProcess(pid, seizeOptions(pid)); err != nil {
		return nil, fmt.Errorf("dump: %w", err)
	}
	// A tree is spread over several tracer threads, but only when its
	// pages go to the images directory and nothing else needs one
	// tracer (a pre-dump chain, a held lazy dump).
	pool := newTracerPool(tr, 1)
	if _, local := target.(localPages); local && track == nil && o.Hold == nil {
		pool = newTracerPool(tr, dumpTracers)
	}
	// Deferred after tr.Close: ends the workers first (a tracee still
	// attached is detached by its tracer's exit).
	defer pool.close()
	thawErr := error(nil)
	var tree []*frozenTask
	rb.add(func() {
		// Detach untouched: also right for a task that turned out
		// not to be the one checked. Children first, so that no
		// parent runs while a child is still held.
		if tree == nil {
			thawErr = tr.Do(func() error { return tr.ThawProcess(pid, false) })
			return
		}
		thawErr = finishTree(tree, func(t *frozenTask) error { return t.tr.ThawProcess(t.pid, false) })
	})
	// Seized by number: the pidfd tells whether that was our process.
	if err := proc.Verify(); err != nil {
		rb.run()
		return nil, fmt.Errorf("dump: after seizing: %w", err)
	}
	tree, err = freezeTree(pool, pid, tids)
	if err != nil {
		rb.run()
		if thawErr != nil {
			err = errors.Join(err, fmt.Errorf("resume: %w", thawErr))
		}
		return nil, fmt.Errorf("dump %d: %w", pid, err)
	}
	frozenAt := time.Now()
	logging.FromContext(ctx).Infof("dump %d: froze %d tasks (%d threads in the root) in %v", pid, len(tree), len(tids), frozenAt.Sub(t0))
	if o.Admit != nil {
		if err := o.Admit(pids(tree)); err != nil {
			rb.run()
			return nil, fmt.Errorf("dump %d: %w", pid, errors.Join(err, thawErr))
		}
	}
	tns := time.Now()
	nsRec, err := treeNetns(tree)
	var own ownNamespaces
	if err == nil {
		own, err = treeNamespaces(tree)
	}
	var utsNS *model.UTSNamespace
	var ipcNS *model.IPCNamespace
	if err == nil {
		utsNS, ipcNS, err = readNamespaces(tree, own)
	}
	if err == nil {
		err = treeSessions(tree, o.ShellJob)
	}
	if err != nil {
		rb.run()
		return nil, fmt.Errorf("dump %d: %w", pid, errors.Join(err, thawErr))
	}
	tnl := time.Now()
	nl, err := lockNetwork(ctx, o.NetworkLock, pid, scripts)
	if err != nil {
		rb.run()
		return nil, fmt.Errorf("dump %d: %w", pid, errors.Join(err, thawErr))
	}
	logging.FromContext(ctx).Debugf("dump %d: namespaces and sessions: %v, network lock: %v", pid, tnl.Sub(tns), time.Since(tnl))
	rb.add(func() {
		if err := unlockNetwork(nl, pid, scripts); err != nil {
			logging.FromContext(ctx).Errorf("dump %d: %v", pid, err)
		}
	})
	if o.TCPEstablished && !nl.Netns() {
		t := time.Now()
		var live []int
		for _, ft := range tree {
			if !ft.zombie {
				live = append(live, ft.pid)
			}
		}
		if err := lockTreeConns(nl, live); err != nil {
			rb.run()
			return nil, fmt.Errorf("dump %d: %w", pid, errors.Join(err, thawErr))
		}
		logging.FromContext(ctx).Infof("dump %d: %d connections and their listeners locked (%s) in %v", pid, nl.Count(), nl.Method(), time.Since(t))
	}
	d := &dumpRun{ctx: ctx, pid: pid, tids: tids, tree: tree, tr: tr, pool: pool, dir: dir, method: o.Method, sinks: target.Open, log: logging.FromContext(ctx), drivers: ds, track: track, vmaNames: names, vmaFlags: vmaFlags,
		ghostLimit: o.GhostLimit, fdOpts: o.FD, fileLocks: o.FileLocks, tcpEstablished: o.TCPEstablished, skipInFlight: o.SkipInFlight, netLock: nl,
		shellJob: o.ShellJob, extUnix: drivers.ExtUnix{All: o.ExtUnixSk, Inos: o.ExtUnix}, extTTY: o.ExtTTY, utsNS: utsNS, ipcNS: ipcNS}
	// Connections read in repair mode: out of it again if the tasks
	// resume (added last, so run before they are thawed).
	rb.add(func() {
		if err := d.files.ReleaseRepaired(true); err != nil {
			d.log.Warnf("dump %d: %v", pid, err)
		}
	})
	// The links --link-remap made go with a dump that fails.
	rb.add(func() {
		if d.files == nil {
			return
		}
		if err := d.files.RemoveLinks(); err != nil {
			d.log.Warnf("dump %d: %v", pid, err)
		}
	})
	d.sh, d.mu = d, &sync.Mutex{}
	tc := time.Now()
	err = d.collect()
	d.step(tc, "collect")
	if err == nil {
		tc = time.Now()
		err = target.Commit()
		d.step(tc, "commit pages")
		d.mem.ZeroSent, d.mem.SameSent = dedupedBy(target)
	}
	if rec, ok := nl.Record(); err == nil && ok && !o.LeaveRunning && !o.LeaveStopped {
		// The tree will be gone: its restore removes the lock.
		err = writeNetLockRecord(dir, rec)
	}
	if err == nil {
		// The restore checks it does not put the tree in godwit's namespace.
		err = writeNetnsRecord(dir, nsRec)
	}
	if err == nil {
		err = interrupted(ctx)
	}
	if err == nil {
		// The images go into place while the task can still resume.
		tc = time.Now()
		err = stage.Commit()
		d.step(tc, "images in place")
	}
	injecting, injCalls, injSessions, injStops, injByNr := pool.injection()
	if err != nil {
		rb.run()
		if thawErr != nil {
			err = errors.Join(err, fmt.Errorf("resume: %w", thawErr))
		}
		return nil, fmt.Errorf("dump %d: %w", pid, err)
	}
	// From here the images are in o.ImagesDir: a failure takes them out
	// and puts back the earlier dump they replaced. An interruption is
	// honoured up to the post-dump script, which may hand the images on
	// (copy them, start a restore elsewhere): once it ran, the dump
	// stands.
	var undoErr error
	rb.add(func() { undoErr = stage.Rollback() }) // names where an earlier dump was kept
	err = interrupted(ctx)
	if err == nil {
		err = scripts.Run(actions.PostDump, pid)
	}
	if err != nil {
		rb.run()
		err = errors.Join(err, undoErr)
		if thawErr != nil {
			err = errors.Join(err, thawErr)
		}
		return nil, fmt.Errorf("dump %d: %w", pid, err)
	}
	rb.disarm()
	stage.Keep()
	track.finish(true)
	if o.AutoDedup && track != nil {
		if err := dedupChain(ctx, final, pid); err != nil {
			d.log.Warnf("dump %d: --auto-dedup: %v", pid, err)
		}
	}
	var holdErr error
	if h, ok := target.(holdingTarget); ok {
		// The tree stays frozen while the target needs its memory
		// (dump --lazy-pages), then is finished as any dump.
		if h.dieWithDumper() {
			holdErr = exitKillTree(tree)
		}
		if holdErr == nil {
			holdErr = h.hold(ctx)
		}
	}
	var ferrs []error
	// Left running, the connections leave repair mode before the tasks
	// use them again.
	resume := o.LeaveRunning || o.LeaveStopped
	if resume {
		if err := d.files.ReleaseRepaired(true); err != nil {
			ferrs = append(ferrs, err)
		}
	}
	if !resume {
		// Every task is sent its SIGKILL first, so that they die at
		// once (on every CPU) while the tracers reap them one by one:
		// a kill and its wait each in turn cost a task's whole exit
		// apiece. Traced and stopped, none runs another instruction,
		// and none can have gone (its pid is still its own).
		for _, t := range tree {
			if !t.zombie {
				_ = unix.Kill(t.pid, unix.SIGKILL)
			}
		}
	}
	if err := finishTree(tree, func(t *frozenTask) error {
		switch {
		case o.LeaveRunning:
			return t.tr.ThawProcess(t.pid, false)
		case o.LeaveStopped:
			return t.tr.ThawProcess(t.pid, true)
		default:
			return t.tr.KillProcess(t.pid)
		}
	}); err != nil {
		ferrs = append(ferrs, err)
	}
	// Killed, the tasks' connections close with these copies, in repair
	// mode: silently.
	if !resume {
		if err := d.files.ReleaseRepaired(false); err != nil {
			ferrs = append(ferrs, err)
		}
	}
	if resume {
		// The connections are the tree's again.
		if err := unlockNetwork(nl, pid, scripts); err != nil {
			ferrs = append(ferrs, err)
		}
	}
	var kept *netlock.Record
	if !resume && o.UnlockKilled && !nl.Netns() {
		if err := nl.Unlock(); err != nil {
			ferrs = append(ferrs, err)
		}
	} else if !resume {
		if rec, ok := nl.Keep(); ok {
			d.log.Infof("dump %d: network lock %s kept for the restore", pid, rec.Name)
			kept = &rec
		}
	}
	ferr := errors.Join(ferrs...)
	frozen := time.Since(frozenAt)
	d.log.Infof("dump %d: %d pages written (%d scanned, %d zero, %d untouched) by %v; frozen %v, %v of it in injection sessions",
		pid, d.mem.Written, d.mem.Scanned, d.mem.Zero, d.mem.Untouched, d.method, frozen, injecting)
	res := &Result{Pid: pid, Threads: tids, Pids: pids(tree), Method: d.method, Mem: d.mem, Injecting: injecting, InjectedCalls: injCalls, NetLock: kept,
		VMAFlags: d.vmaFlags, InjectionStops: injStops, InjectionSessions: injSessions, InjectedByNr: injByNr}
	res.Stats = &stats.DumpStatsEntry{
		FreezingTime:       proto.Uint32(uint32(frozenAt.Sub(t0).Microseconds())),
		FrozenTime:         proto.Uint32(uint32(frozen.Microseconds())),
		MemdumpTime:        proto.Uint32(uint32(d.mem.DumpTime.Microseconds())),
		MemwriteTime:       proto.Uint32(uint32(d.mem.WriteTime.Microseconds())),
		PagesScanned:       proto.Uint64(d.mem.Scanned),
		PagesSkippedParent: proto.Uint64(d.parentPages),
		PagesWritten:       proto.Uint64(d.mem.Written),
		PagesLazy:          proto.Uint64(0),
	}
	if h, ok := target.(holdingTarget); ok {
		res.Stats.PagesLazy = proto.Uint64(h.lazyPages())
	}
	if ferr != nil {
		return res, errors.Join(holdErr, fmt.Errorf("dump %d: images written, but finishing failed: %w", pid, ferr))
	}
	serr := images.WriteDumpStats(final, o.WorkDir, res.Stats)
	if holdErr != nil {
		return res, fmt.Errorf("dump %d: %w", pid, holdErr)
	}
	if serr != nil {
		return res, fmt.Errorf("dump %d: %w", pid, serr)
	}
	return res, nil
}

// writeCPUInfo writes cpuinfo.img when --cpu-cap asks for CPU checks
// (any mode but none), so that restore can compare the CPUs.
func writeCPUInfo(dir *images.Dir, capArg string) error {
	if capArg == "" {
		return nil
	}
	caps, err := cpuinfo.ParseCaps(capArg)
	if err != nil {
		return err
	}
	if caps&cpuinfo.CapAll == 0 {
		return nil
	}
	return cpuinfo.Dump(dir)
}

// dumpRun is one dump in progress, and a copy of it per task being
// collected (forTask): pid, tids, tr, runner, early and method are the
// task's; sh is the dump's own, whose mem, written, pagesID,
// parentPages, vmaFlags and method the copies change only under mu.
type dumpRun struct {
	ctx    context.Context
	sh     *dumpRun
	mu     *sync.Mutex
	pid    int   // the task being collected
	runner bool  // its scratch holds the batch runner
	tids   []int // its threads
	tree   []*frozenTask
	tr     *ptrace.Tracer // the task's tracer
	pool   *tracerPool
	// privID is the pages id of the task's private pagemap, and shmIDs
	// those of the shared anonymous objects it dumps (by shmid), given
	// out in tree order (reserve).
	privID  uint32
	shmIDs  map[uint64]uint32
	dir     *images.Dir
	method  Method
	sinks   func(d *images.Dir, pagemapName string, pagesID uint32) (pagexfer.Sink, error)
	log     *logging.Logger
	written []string
	mem     MemStats
	drivers []drivers.Driver // every kind of state, in order
	pagesID uint32           // the last pages id given out
	// track, with --prev-images-dir --track-mem, writes each task's private pages
	// against the parent images (predump_linux.go).
	track *trackedDump
	// vmaNames, when set, names the VMAs' flags read through vmaflags
	// (frozenSmaps).
	vmaNames    *vmaflags.Names
	vmaFlags    string // Result.VMAFlags
	parentPages uint64
	// early is the task's private memory being dumped while the rest of
	// its state is collected (earlyPrivate), nil otherwise.
	early      *earlyPrivate
	ghostLimit uint64 // --ghost-limit, 0: the default
	fdOpts     drivers.FDOptions
	fileLocks  bool // --file-locks
	netLock    *netlock.Lock
	// tcpEstablished, skipInFlight: --tcp-established, --skip-in-flight.
	tcpEstablished, skipInFlight bool
	// files is the tree's file table, which holds the connections read
	// in repair mode until the dump ends.
	files    *drivers.Files
	shellJob bool // --shell-job: ttys of a terminal outside the tree
	extUnix  drivers.ExtUnix
	extTTY   [][2]uint64
	// utsNS and ipcNS are the tree's own UTS and IPC namespaces (nil:
	// godwit's), read right after the freeze.
	utsNS *model.UTSNamespace
	ipcNS *model.IPCNamespace
}

func (d *dumpRun) note(name string) {
	d.mu.Lock()
	d.sh.written = append(d.sh.written, name)
	d.mu.Unlock()
}

// step logs how long a step of the task's dump took (-v4): the profile
// of a frozen time.
func (d *dumpRun) step(since time.Time, format string, args ...any) {
	if d.log.Enabled(4) {
		d.log.Debugf("dump %d: %s: %v", d.pid, fmt.Sprintf(format, args...), time.Since(since))
	}
}

func (d *dumpRun) interrupted() error { return interrupted(d.ctx) }

// collect reads every task of the frozen tree and writes every image;
// inventory.img last. The tasks share one file table, so that an open
// file description inherited by fork is one file of the tree. Each task
// is read on its tracer's thread, the tracers at once; what the tasks
// share (the file table, kernel object ids, shared memory, pages ids) is
// read in each task's turn, in tree order, as one thread would; tasks
// that share an fd table (CLONE_FILES) are dumped whole one after
// another (treeShared.fdTable).
func (d *dumpRun) collect() error {
	fl := drivers.NewFiles()
	if d.ghostLimit != 0 {
		fl.GhostLimit = d.ghostLimit
	}
	fl.FileLocks = d.fileLocks
	fl.FDOptions = d.fdOpts
	fl.NetLock = d.netLock
	fl.TCPEstablished, fl.SkipInFlight = d.tcpEstablished, d.skipInFlight
	var err error
	if fl.TreeNetns, err = drivers.NetnsOf(d.pid); err != nil {
		return err
	}
	for _, t := range d.extTTY {
		if fl.ExtTTY == nil {
			fl.ExtTTY = map[[2]uint64]bool{}
		}
		fl.ExtTTY[t] = true
	}
	d.files = fl
	sh := &treeShared{shm: map[uint64]int{}, turns: turns.New(len(d.tree))}
	tasks := make([]*model.Task, len(d.tree))
	failed := make([]error, len(d.tree))
	byTracer := map[*ptrace.Tracer][]int{}
	var order []*ptrace.Tracer
	for i, ft := range d.tree {
		if ft.zombie {
			ppid := ft.ppid
			if i == 0 {
				ppid = 0
			}
			// As CRIU: the pstree entry and a core with the state
			// and the wait status, nothing else.
			tasks[i] = &model.Task{Pid: ft.pid, Ppid: ppid, Pgid: ft.pgid, Sid: ft.sid,
				State: model.Dead, ExitCode: ft.exitCode, Comm: ft.comm}
			sh.turns.Skip(i)
			continue
		}
		if _, ok := byTracer[ft.tr]; !ok {
			order = append(order, ft.tr)
		}
		byTracer[ft.tr] = append(byTracer[ft.tr], i)
	}
	if err := sh.groupFDTables(d.tree); err != nil {
		return err
	}
	// The copies are made before any task runs: the tasks then write
	// d's shared fields (under d.mu).
	runs := make([]*dumpRun, len(d.tree))
	for _, is := range byTracer {
		for _, i := range is {
			runs[i] = d.forTask(i)
		}
	}
	var wg sync.WaitGroup
	for _, tr := range order {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = tr.Do(func() error {
				for _, i := range byTracer[tr] {
					if sh.turns.Aborted() {
						sh.skip(i)
						continue
					}
					tasks[i], failed[i] = runs[i].safeCollectTask(fl, sh, i)
					if failed[i] != nil {
						sh.abort()
					}
					sh.skip(i) // turns it did not take or leave
				}
				return nil
			})
		}()
	}
	wg.Wait()
	// The earliest failure in tree order that is not a task that waited
	// for its turn when another failed.
	var waited error
	for i, err := range failed {
		if err == nil {
			continue
		}
		if errors.Is(err, turns.ErrAborted) {
			if waited == nil {
				waited = err
			}
			continue
		}
		if i == 0 {
			return err
		}
		return fmt.Errorf("task %d: %w", d.tree[i].pid, err)
	}
	if waited != nil {
		return waited
	}
	tree := &model.Tree{Tasks: tasks, UTS: d.sh.utsNS, IPC: d.sh.ipcNS}
	t := time.Now()
	if err := d.writeTrackedShared(); err != nil {
		return err
	}
	tree.Files = fl.Table()
	if err := checkShared(tree); err != nil {
		return err
	}
	if err := fl.CheckFiles(tree, d.shellJob, d.extUnix); err != nil {
		return err
	}
	d.step(t, "shared memory and checks")
	t = time.Now()
	defer d.step(t, "images written")
	return criuimg.Write(d.dir, tree, d.note)
}

// treeShared is what the tasks of a tree share while each is collected:
// the kernel objects' ids and the shared anonymous objects dumped
// (shmid → pid), used in each task's turn only.
type treeShared struct {
	kobj  kobjAlloc
	shm   map[uint64]int
	turns *turns.Turns
	// fdTable is, by task, the turns of the tasks sharing its fd table
	// (CLONE_FILES; nil where it shares it with none) and its place in
	// them. A task holds its turn there for the whole of its dump: its
	// injected fds (the vmsplice pipes, the drivers' injected calls)
	// are in the table every sharer's fds are read from.
	fdTable []fdTableTurn
}

type fdTableTurn struct {
	turns *turns.Turns
	pos   int
}

// groupFDTables gives the tasks of tree that share an fd table their
// turns, in tree order. The tree is frozen: no task joins a table.
func (sh *treeShared) groupFDTables(tree []*frozenTask) error {
	var a kobjAlloc
	sh.fdTable = make([]fdTableTurn, len(tree))
	members := map[model.ID][]int{}
	for i, ft := range tree {
		if ft.zombie {
			continue // no fd table
		}
		id, err := a.id(1, ft.pid) // kcmpKinds[1]: KCMP_FILES
		if err != nil {
			return fmt.Errorf("task %d: fd table: %w", ft.pid, err)
		}
		members[id] = append(members[id], i)
	}
	for _, is := range members {
		if len(is) < 2 {
			continue
		}
		ts := turns.New(len(is))
		for pos, i := range is {
			sh.fdTable[i] = fdTableTurn{turns: ts, pos: pos}
		}
	}
	return nil
}

// enterFDTable waits until every task before task i sharing its fd table
// is dumped; leaveFDTable lets the next go on.
func (sh *treeShared) enterFDTable(i int) error {
	if g := sh.fdTable[i]; g.turns != nil {
		return g.turns.Enter(g.pos)
	}
	return nil
}

func (sh *treeShared) leaveFDTable(i int) {
	if g := sh.fdTable[i]; g.turns != nil {
		g.turns.Leave(g.pos)
	}
}

// skip passes every turn of task i it did not take or leave.
func (sh *treeShared) skip(i int) {
	sh.turns.Skip(i)
	if g := sh.fdTable[i]; g.turns != nil {
		g.turns.Skip(g.pos)
	}
}

// abort ends every wait for a turn (a task failed).
func (sh *treeShared) abort() {
	sh.turns.Abort()
	for _, g := range sh.fdTable {
		if g.turns != nil {
			g.turns.Abort()
		}
	}
}

// forTask is d's copy for the tree's task i.
func (d *dumpRun) forTask(i int) *dumpRun {
	ft := d.tree[i]
	td := *d
	td.pid, td.tids, td.tr = ft.pid, ft.tids, ft.tr
	td.runner, td.early, td.privID, td.shmIDs = false, nil, 0, nil
	return &td
}

// safeCollectTask is collectTask that turns a panic into an error, so
// that the failure path still resumes the tree (the injection sessions
// are ended by their deferred calls while the panic unwinds).
func (d *dumpRun) safeCollectTask(fl *drivers.Files, sh *treeShared, i int) (task *model.Task, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("internal error: %v", r)
		}
	}()
	ppid := d.tree[i].ppid
	if i == 0 {
		ppid = 0 // the root of the dumped tree, as CRIU writes it
	}
	return d.collectTask(fl, ppid, sh, i)
}

// collectTask reads everything of the frozen task d.pid.
func (d *dumpRun) collectTask(fl *drivers.Files, ppid int, sh *treeShared, i int) (*model.Task, error) {
	pid := d.pid
	// The tasks sharing its fd table one after another, from before the
	// first read of it to after the last injected fd is closed.
	if err := sh.enterFDTable(i); err != nil {
		return nil, err
	}
	defer sh.leaveFDTable(i)
	t0 := time.Now()
	d.early = nil
	if err := checkSeccomp(d.tr, pid, d.tids); err != nil {
		return nil, err
	}
	task := &model.Task{Pid: pid, Ppid: ppid, State: model.Alive, MM: &model.MM{}}
	dc := &drivers.Dump{Pid: pid, Task: task, Files: fl, Log: d.log}
	if d.vmaNames != nil {
		dc.Smaps = d.frozenSmaps
	}
	// Threads: registers first (rseq aborted as the kernel would on the
	// way out), before any injection changes them.
	for _, tid := range d.tids {
		if _, err := d.tr.AbortRseq(tid); err != nil {
			return nil, fmt.Errorf("thread %d: %w", tid, err)
		}
		ts, err := d.tr.ThreadState(tid)
		if err != nil {
			return nil, fmt.Errorf("thread %d: %w", tid, err)
		}
		if tid == pid && ts.Stop.GroupStop() {
			task.State, task.StopSignal = model.Stopped, int(ts.Stop.Sig)
		}
		th := &model.Thread{
			Tid: tid, Regs: ts.Regs, XState: ts.XState, Sigmask: ts.Sigmask, Pending: siginfos(ts.Pending),
			Rseq: model.Rseq{Pointer: ts.Rseq.AbiPointer, Size: ts.Rseq.AbiSize, Signature: ts.Rseq.Signature},
		}
		for _, k := range d.drivers {
			if c, ok := k.(drivers.ThreadCollector); ok {
				if err := c.CollectThread(dc, th); err != nil {
					return nil, fmt.Errorf("thread %d: %w", tid, err)
				}
			}
		}
		task.Threads = append(task.Threads, th)
	}
	shared, err := d.tr.PeekSiginfo(pid, true)
	if err != nil {
		return nil, err
	}
	task.SharedSignals = siginfos(shared)
	d.step(t0, "threads")
	// What the tasks share, in tree order.
	if err := sh.turns.Enter(i); err != nil {
		return nil, err
	}
	defer sh.turns.Leave(i)
	if d.track != nil && d.track.pt != nil {
		// On top of pre-dump rounds: the private pages go while smaps
		// is read (a page walk as long as the scan).
		t := time.Now()
		e, err := d.startEarlyPrivate()
		if err != nil {
			return nil, err
		}
		defer e.wait() // never left running past a failure
		d.early = e
		d.step(t, "early private pages started")
	}
	// Everything visible from outside before any injection (an
	// unsupported fd fails the dump cheaply), the VMAs before the
	// scratch mapping exists.
	for _, k := range d.drivers {
		if c, ok := k.(drivers.Collector); ok {
			t := time.Now()
			if err := c.Collect(dc); err != nil {
				return nil, err
			}
			d.step(t, "collect %s", k.Name())
		}
	}
	if err := d.interrupted(); err != nil {
		return nil, err
	}
	if e := d.early; e != nil {
		if err := e.wait(); err != nil {
			return nil, err
		}
		if err := e.check(task.MM.VMAs); err != nil {
			return nil, err
		}
	}
	t := time.Now()
	if task.IDs, err = sh.kobj.ids(pid); err != nil {
		return nil, err
	}
	d.step(t, "kernel object ids")
	d.reserve(sh.shm, task.MM.VMAs)
	sh.turns.Leave(i)
	d.step(t0, "state visible from outside")
	if err := d.inject(dc); err != nil {
		return nil, err
	}
	return task, nil
}

// reserve gives out, in the task's turn, the pages ids of its private
// pagemap and of the shared anonymous objects it dumps: those no task
// before it in the tree dumped (shm, shmid → pid), in the order
// DumpShared opens them. A dump on top of pre-dump rounds opens its
// pagemaps as it goes instead (one tracer: tree order).
func (d *dumpRun) reserve(shm map[uint64]int, vmas []VMA) {
	if d.track != nil && d.track.pt != nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.sh.pagesID++
	d.privID = d.sh.pagesID
	d.shmIDs = map[uint64]uint32{}
	for _, v := range vmas {
		if !v.SharedAnon() {
			continue
		}
		if o, ok := shm[v.Shmid]; ok && o != d.pid {
			continue
		}
		shm[v.Shmid] = d.pid
		if _, ok := d.shmIDs[v.Shmid]; !ok {
			d.sh.pagesID++
			d.shmIDs[v.Shmid] = d.sh.pagesID
		}
	}
}

// checkShared refuses kernel objects shared between tasks that the
// restore cannot share again yet: an mm (CLONE_VM without CLONE_THREAD)
// or signal handlers (CLONE_SIGHAND, which needs CLONE_VM); and a task in
// other namespaces than the root's (treeNamespaces has compared each with
// godwit's already).
func checkShared(t *model.Tree) error {
	vm := map[model.ID]int{}
	sighand := map[model.ID]int{}
	root := t.Root()
	for _, k := range t.Tasks {
		if k.State == model.Dead {
			continue
		}
		if k.IDs.NS != root.IDs.NS {
			// Restore makes every task in godwit's namespaces.
			return fmt.Errorf("task %d is in other namespaces than task %d: not supported yet", k.Pid, root.Pid)
		}
		if o, ok := vm[k.IDs.VM]; ok {
			return fmt.Errorf("task %d shares its address space with task %d (CLONE_VM): not supported yet", k.Pid, o)
		}
		vm[k.IDs.VM] = k.Pid
		if o, ok := sighand[k.IDs.Sighand]; ok {
			return fmt.Errorf("task %d shares its signal handlers with task %d (CLONE_SIGHAND): not supported yet", k.Pid, o)
		}
		sighand[k.IDs.Sighand] = k.Pid
	}
	return nil
}

// inject runs everything that needs injected calls, and the memory dump,
// with one scratch mapping. Injection sessions are bursts: one to map the
// scratch, run the drivers' injected collection and make the vmsplice
// pipes, one per other thread, one per page batch (in the vmsplice
// source), one to remove the pipes and one to unmap the scratch, so the
// target never waits in a session while godwit writes files or talks to
// a page server. The scratch is unmapped and every session ended before
// inject returns, on success and on error.
func (d *dumpRun) inject(dc *drivers.Dump) (err error) {
	var scratch uint64
	var md *MemoryDumper
	defer func() {
		if md != nil {
			d.mu.Lock()
			d.sh.mem.add(md.Stats())
			d.mu.Unlock()
			if cerr := md.Close(); cerr != nil && err == nil {
				err = cerr
			}
		}
		if scratch == 0 {
			return
		}
		if _, uerr := d.tr.InjectSyscall(d.pid, unix.SYS_MUNMAP, scratch, scratchSize); uerr != nil && err == nil {
			err = fmt.Errorf("unmap scratch: %w", uerr)
		}
	}()
	task := dc.Task
	ti := time.Now()
	s, err := d.tr.BeginInjection(d.pid)
	if err != nil {
		return err
	}
	var ls *inject.Session
	err = func() error {
		// Executable at once where the task may have such memory: the
		// runner then needs no mprotect (two stops). The task is frozen
		// while the scratch exists, and it is gone before it runs.
		exec := true
		addr, err := s.Syscall(unix.SYS_MMAP, 0, scratchSize, unix.PROT_READ|unix.PROT_WRITE|unix.PROT_EXEC,
			unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
		if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
			// PR_SET_MDWE, an LSM or a seccomp filter refuses it.
			exec = false
			addr, err = s.Syscall(unix.SYS_MMAP, 0, scratchSize, unix.PROT_READ|unix.PROT_WRITE,
				unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
		}
		if err != nil {
			return fmt.Errorf("map scratch: %w", err)
		}
		scratch = addr
		ls = inject.Wrap(s, d.pid, addr, scratchSize)
		d.runner = d.mapRunner(ls, exec)
		// Every driver's planned calls in one batch.
		if err := drivers.CollectAllInjected(d.drivers, dc, ls, task.Threads[0]); err != nil {
			return err
		}
		if d.method == MethodVmsplice {
			if md, err = NewInjectingMemoryDumper(d.pid, d.tr, d.pid, s, addr); err != nil {
				// E.g. the task is at its RLIMIT_NOFILE and cannot
				// make the pipes: read its memory from outside.
				d.log.Warnf("dump %d: vmsplice transfer unavailable (%v), using process_vm_readv", d.pid, err)
				d.method, md = MethodReadv, nil
				d.mu.Lock()
				d.sh.method = MethodReadv
				d.mu.Unlock()
			}
		}
		return nil
	}()
	if err == nil && md == nil && len(task.Threads) == 1 {
		err = d.unmapScratchAndEnd(ls, &scratch)
	} else if eerr := s.End(); eerr != nil && err == nil {
		err = eerr
	}
	if err != nil {
		return err
	}
	for i, th := range task.Threads[1:] {
		if err := d.interrupted(); err != nil {
			return err
		}
		ts, err := inject.Begin(d.tr, d.pid, th.Tid, scratch, scratchSize)
		if err != nil {
			return fmt.Errorf("thread %d: %w", th.Tid, err)
		}
		if d.runner {
			ts.SetBatch(scratch+scratchRunner, scratchTable)
		}
		err = drivers.CollectAllThreadInjected(d.drivers, dc, ts, th)
		if err == nil && md == nil && i == len(task.Threads)-2 {
			err = d.unmapScratchAndEnd(ts, &scratch)
		} else {
			err = ts.End(err)
		}
		if err != nil {
			return err
		}
	}
	d.step(ti, "injected collection")
	if err := d.interrupted(); err != nil {
		return err
	}
	if md == nil {
		// process_vm_readv needs nothing in the target: the scratch is
		// gone before the long transfer (the last session that used it
		// removed it), so that a godwit killed during it (SIGKILL,
		// where nothing rolls back) leaves no trace.
		if scratch != 0 {
			_, err := d.tr.InjectSyscall(d.pid, unix.SYS_MUNMAP, scratch, scratchSize)
			scratch = 0
			if err != nil {
				return fmt.Errorf("unmap scratch: %w", err)
			}
		}
		var err error
		if md, err = NewMemoryDumper(d.pid); err != nil {
			return err
		}
	}
	md.SetContext(d.ctx)
	d.log.Infof("dump %d: transferring pages (%v)", d.pid, d.method)
	t := time.Now()
	defer d.step(t, "memory and scratch removed")
	return d.dumpMemory(md, task.MM.VMAs)
}

// mapRunner puts the batch runner in the last page of the scratch and
// makes it executable (unless exec: it is already), for batches of
// injected calls in s (and the task's other threads). A task that may not
// gain executable memory (PR_SET_MDWE, a seccomp filter on mprotect) gets
// its calls one by one.
func (d *dumpRun) mapRunner(s *inject.Session, exec bool) bool {
	at := s.Scratch() + scratchRunner
	if err := ptrace.WriteMem(d.pid, at, ptrace.BatchCode); err != nil {
		d.log.Warnf("dump %d: batch runner: %v: injecting calls one by one", d.pid, err)
		return false
	}
	if exec {
		s.SetBatch(at, scratchTable)
		return true
	}
	if _, err := s.Call("batch runner: mprotect", unix.SYS_MPROTECT, at, 4096, unix.PROT_READ|unix.PROT_EXEC); err != nil {
		d.log.Warnf("dump %d: %v: injecting calls one by one", d.pid, err)
		return false
	}
	s.SetBatch(at, scratchTable)
	return true
}

// unmapScratchAndEnd removes the scratch (*scratch, zeroed once gone)
// as the last call of session s, which used it last, and ends s: at the
// session's syscall instruction, not through the runner, which is in it
// (inject.Session.EndWith). Saves a session of its own and a stop.
func (d *dumpRun) unmapScratchAndEnd(s *inject.Session, scratch *uint64) error {
	if err := s.EndWith("unmap scratch", unix.SYS_MUNMAP, *scratch, scratchSize); err != nil {
		return err
	}
	*scratch = 0
	return nil
}

// dumpMemory sends the pages through md (no injection session open: the
// vmsplice source opens its own per batch).
func (d *dumpRun) dumpMemory(md *MemoryDumper, vmas []VMA) (err error) {
	if e := d.early; e != nil {
		// Sent already, while the state was collected.
		d.early = nil
		md.addStats(e.st)
		d.setParentPages(e.parent)
		return d.track.addShared(d.pid, vmas)
	}
	tracked := d.track != nil && d.track.pt != nil
	// Each pagemap gets the next pages id of the dump, from 1 as
	// CRIU's: given out as it goes on top of pre-dump rounds, else
	// reserved in the task's turn.
	open := d.openPagemap
	if !tracked {
		open = func(name string) (pagexfer.Sink, error) { return d.openPagemapID(name, d.privID) }
	}
	sink, err := open(images.PagemapImg(d.pid))
	if err != nil {
		return err
	}
	if tracked {
		var st MemStats
		var parent uint64
		st, parent, err = d.track.writePrivate(d.pid, vmas, sink)
		d.setParentPages(parent)
		md.addStats(st)
	} else {
		err = md.DumpPrivate(vmas, sink)
	}
	if cerr := sink.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if tracked {
		// Against the parent images, once every task is scanned.
		return d.track.addShared(d.pid, vmas)
	}
	// A shared anonymous object is dumped whole, once, by the first task
	// of the tree that maps it (reserve chose them).
	var fresh []VMA
	for _, v := range vmas {
		if v.SharedAnon() && d.shmIDs[v.Shmid] == 0 {
			continue
		}
		fresh = append(fresh, v)
	}
	return md.DumpShared(fresh, func(shmid uint64) (pagexfer.Sink, error) {
		return d.openPagemapID(images.PagemapShmemImg(shmid), d.shmIDs[shmid])
	})
}

// setParentPages records the pages a dump on top of pre-dump rounds left
// in the parent images.
func (d *dumpRun) setParentPages(n uint64) {
	d.mu.Lock()
	d.sh.parentPages = n
	d.mu.Unlock()
}

// openPagemap opens the sink of one pagemap with the dump's next pages
// id (from 1, as CRIU's).
func (d *dumpRun) openPagemap(name string) (pagexfer.Sink, error) {
	d.mu.Lock()
	d.sh.pagesID++
	id := d.sh.pagesID
	d.mu.Unlock()
	return d.openPagemapID(name, id)
}

// openPagemapID opens the sink of one pagemap with pages id id.
func (d *dumpRun) openPagemapID(name string, id uint32) (pagexfer.Sink, error) {
	d.note(name)
	d.note(images.PagesImg(id))
	return d.sinks(d.dir, name, id)
}

// frozenSmaps reads a frozen task's VMAs as smaps shows them, from
// /proc/PID/maps and the kernel's VMA flags (vmaflags.Smaps: no page
// walk), or from smaps itself when a flag was not learnt (hugetlb, a
// flag the calibration could not make) or the two lists disagree.
func (d *dumpRun) frozenSmaps(pid int) ([]procfs.SmapsEntry, error) {
	t := time.Now()
	sm, err := vmaflags.Smaps(pid, d.vmaNames)
	d.mu.Lock()
	defer d.mu.Unlock()
	if err == nil {
		d.step(t, "VMA flags without smaps")
		if d.sh.vmaFlags == "" {
			d.sh.vmaFlags = "kernel"
		}
		return sm, nil
	}
	d.log.Infof("dump %d: reading smaps: %v", pid, err)
	if !strings.HasPrefix(d.sh.vmaFlags, "smaps") {
		d.sh.vmaFlags = fmt.Sprintf("smaps: task %d: %v", pid, err)
	}
	return procfs.ReadSmaps(pid)
}

// earlyPrivate is a frozen task's private memory dumped against the
// pre-dump rounds in the background while the rest of its state is
// collected: the pages need only the ranges and kinds of the mappings,
// which /proc/PID/maps gives at once, while smaps, which the image needs
// for the VMAs' flags, walks every page table (~18 ms per GiB). The two
// lists come from one frozen address space; check proves it.
type earlyPrivate struct {
	vmas   []VMA // from /proc/PID/maps
	done   chan struct{}
	st     MemStats
	parent uint64
	err    error
}

func (d *dumpRun) startEarlyPrivate() (*earlyPrivate, error) {
	vmas, err := roundVMAs(d.pid)
	if err != nil {
		return nil, err
	}
	sink, err := d.openPagemap(images.PagemapImg(d.pid))
	if err != nil {
		return nil, err
	}
	e := &earlyPrivate{vmas: vmas, done: make(chan struct{})}
	pid, track := d.pid, d.track
	go func() {
		defer close(e.done)
		e.st, e.parent, e.err = track.writePrivate(pid, vmas, sink)
		if cerr := sink.Close(); e.err == nil {
			e.err = cerr
		}
	}()
	return e, nil
}

func (e *earlyPrivate) wait() error {
	<-e.done
	return e.err
}

// check verifies that the mappings read from smaps (vmas) are the ones
// the early dump walked, in everything the walk looks at.
func (e *earlyPrivate) check(vmas []VMA) error {
	type walked struct {
		start, end          uint64
		prot                int
		private, shm, plain bool
	}
	list := func(vs []VMA) []walked {
		var out []walked
		for i := range vs {
			v := &vs[i]
			if v.Private() || trackedShm(v) {
				out = append(out, walked{v.Start, v.End, int(v.Prot), v.Private(), trackedShm(v), plainAnon(v)})
			}
		}
		return out
	}
	a, b := list(e.vmas), list(vmas)
	if !slices.Equal(a, b) {
		return fmt.Errorf("memory: the mappings in maps (%d dumped) and smaps (%d) differ on a frozen task", len(a), len(b))
	}
	return nil
}

// nsIDs reads the namespace ids: the inode of each /proc/PID/ns link (a
// task in godwit's namespaces gets the same ids as the inventory's root).
func nsIDs(pid int) model.Namespaces {
	get := func(name string) uint32 {
		var st unix.Stat_t
		if err := unix.Stat(procfs.Path(pid, "ns/"+name), &st); err != nil {
			return 0
		}
		return uint32(st.Ino)
	}
	return model.Namespaces{
		Pid: get("pid"), Net: get("net"), IPC: get("ipc"), UTS: get("uts"),
		Mnt: get("mnt"), User: get("user"), Cgroup: get("cgroup"), Time: get("time"),
	}
}
