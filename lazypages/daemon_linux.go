package lazypages

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/images"
	"godwit/internal/logging"
	"godwit/internal/model"
	"godwit/internal/model/criuimg"
	"godwit/pageserver"
	"godwit/uffd"
)

// SocketName is the lazy-pages socket in the work directory (CRIU's name).
const SocketName = "lazy-pages.socket"

// Options configure the lazy-pages daemon.
type Options struct {
	ImagesDir string // the dump: pstree, pagemaps (and pages, when local)
	WorkDir   string // holds the socket; "" means ImagesDir
	// PageServer, when set ("host:port"), is where page data comes from
	// (GET); otherwise from the pages images in ImagesDir.
	PageServer string
	Transport  pageserver.TransportOptions
	// FaultPages is how many pages a sequential reader's fault brings at
	// first (default 16; an isolated fault brings its page alone),
	// PushPages how many a background copy (default 256).
	FaultPages, PushPages int
	// PushConns is how many connections to the page server the
	// background push keeps busy at once (default 2), each with a
	// receiving thread of its own.
	PushConns int
	// NoGuard runs without the guard process (tests of the guard's
	// absence only): a daemon killed then leaves its tasks to zero-filled
	// pages.
	NoGuard bool
	// Guard, if set, is a guard started ahead with StartGuard (Run
	// owns it from the call on, and ends it as its own).
	Guard *Guard
	Log   *logging.Logger
	// Ready, if set, is called once the socket listens.
	Ready func()

	pushPause time.Duration // tests: slow the background push down
}

// Stats are what one daemon run did.
type Stats struct {
	Tasks                 int
	FaultPages, PushPages uint64 // pages copied on faults / in the background
	ZeroPages             uint64
	// LocalPages and RemotePages count the pages read from the local
	// images (the dump, its parent images) and from the page server (a
	// page a fault and the push both wanted may be read twice).
	LocalPages, RemotePages uint64
	Faults                  uint64
	// Events followed while pages were missing.
	Forks, Remaps, Removes, Unmaps uint64
	FirstHandoff, AllPagesIn       time.Time
	// FaultTimes are how long the first MaxFaultTimes faults took from
	// the daemon reading them to their pages copied in (the faulting
	// thread wakes right after).
	FaultTimes []time.Duration
}

// MaxFaultTimes bounds Stats.FaultTimes.
const MaxFaultTimes = 1 << 16

// task is one mm being served.
type task struct {
	id    uint32
	pid   int // 0 for a forked child whose pid is not known
	pidfd int // -1 without pid
	// kin are, for a forked child whose pid is not known for sure, the
	// children its parent gained at that fork (several when forks race):
	// killed with it, so that it never outlives a failed daemon.
	kin []kinProc
	// kinPending: the forked child's pid is still being looked for.
	kinPending bool
	fork       *forkWatchState // how to look for it
	u          *uffd.Uffd
	pm         *pagemap // the dump's pages (a child uses its parent's)
	st         *mmState
	gen        uint64 // bumped by every event that changes the mm
	gone       bool
	push       uint64 // background cursor
	// lastEnd is the end of the last fault's pages, lastWin its window.
	lastEnd, lastWin uint64
	running          bool // the restore let it go (resumed)
	// nbLo-nbHi are the neighbours of the last fault, asked and not
	// copied yet: a fault there waits for them (their copy wakes it)
	// rather than asking again. nbWait are those faults' pages, woken
	// once the neighbours are settled, copied or not.
	nbLo, nbHi uint64
	nbWait     []uint64
}

type daemon struct {
	o        Options
	log      *logging.Logger
	dir      *images.Dir
	expected map[int]bool // pids of the dump not handed over yet
	pms      map[int]*pagemap
	faultSrc source
	// pushSrcs are the background push's lanes: one connection each.
	pushSrcs []source
	// nbSrc brings fault windows' neighbours: asked on nbAsk, into the
	// buffers of nbPool.
	nbSrc  source
	nbAsk  chan pushItem
	nbPool chan []byte
	guard  *guard
	// guardEnded: serve finished the guard (release ends it otherwise).
	guardEnded bool

	mu     sync.Mutex
	tasks  []*task
	nextID uint32
	ep     int
	stopfd int
	kick   chan struct{} // wakes the pusher
	err    error         // the failure that ends the daemon
	// faulting counts uffds whose faults are being served; the push
	// waits for them.
	faulting  atomic.Int32
	lastFault atomic.Int64  // unix ns: the end of the last fault served
	done      chan struct{} // closed when every page of every task is in, or on failure
	stats     Stats
}

// Run serves lazy pages until every task of the dump has been handed over
// by its restore and all their pages are in (then the page server, if any,
// is told it may go), or until a failure: the page source lost, ctx
// cancelled. A failure kills the tasks being served: post-copy cannot go
// on without its source, and a task must never see a page it did not
// have.
func Run(ctx context.Context, o Options) (Stats, error) {
	if o.FaultPages <= 0 {
		o.FaultPages = 16
	}
	// A fault's window lives in a buffer of maxFaultPages pages.
	o.FaultPages = min(o.FaultPages, maxFaultPages)
	if o.PushPages <= 0 {
		o.PushPages = 256
	}
	if o.PushConns <= 0 {
		o.PushConns = defaultPushConns
	}
	o.PushConns = min(o.PushConns, maxPushConns)
	if o.WorkDir == "" {
		o.WorkDir = o.ImagesDir
	}
	d := &daemon{o: o, log: o.Log, pms: map[int]*pagemap{}, expected: map[int]bool{},
		kick: make(chan struct{}, 1), done: make(chan struct{}), ep: -1, stopfd: -1}
	if d.log == nil {
		d.log = logging.Default()
	}
	defer raiseProcs()()
	if o.Guard != nil {
		d.guard = o.Guard.g
	}
	defer d.release()
	if err := d.open(ctx); err != nil {
		return Stats{}, err
	}
	err := d.serve(ctx)
	return d.stats, err
}

func (d *daemon) open(ctx context.Context) error {
	dir, err := images.Open(d.o.ImagesDir, false)
	if err != nil {
		return fmt.Errorf("lazy-pages: %w", err)
	}
	d.dir = dir
	tree, err := criuimg.Read(dir)
	if err != nil {
		return fmt.Errorf("lazy-pages: read images in %s: %w", d.o.ImagesDir, err)
	}
	for _, t := range tree.Tasks {
		// Every live task's restore hands its uffd over; dead ones
		// (zombies of the tree) have no memory.
		if t.State != model.Dead && t.State != model.Zombie {
			d.expected[t.Pid] = true
		}
	}
	if d.o.PageServer != "" {
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		// The fault connection, the neighbours', then the push's lanes.
		var dialed []source
		for range 2 + d.o.PushConns {
			c, err := dialSource(dctx, d.o.PageServer, d.o.Transport)
			if err != nil {
				for _, s := range dialed {
					s.close(false)
				}
				return fmt.Errorf("lazy-pages: %w", err)
			}
			dialed = append(dialed, &tieredSource{remote: c})
		}
		d.faultSrc, d.nbSrc, d.pushSrcs = dialed[0], dialed[1], dialed[2:]
	} else {
		d.faultSrc, d.nbSrc = &tieredSource{}, &tieredSource{}
		for range d.o.PushConns {
			d.pushSrcs = append(d.pushSrcs, &tieredSource{})
		}
	}
	d.nbAsk = make(chan pushItem, neighbourDepth)
	d.nbPool = make(chan []byte, neighbourDepth)
	for range neighbourDepth {
		d.nbPool <- make([]byte, maxFaultPages*pageSize)
	}
	if d.ep, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return fmt.Errorf("lazy-pages: epoll: %w", err)
	}
	if d.stopfd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return fmt.Errorf("lazy-pages: eventfd: %w", err)
	}
	if err := d.epollAdd(d.stopfd, 0); err != nil {
		return err
	}
	if d.guard == nil && !d.o.NoGuard {
		if d.guard, err = startGuard(); err != nil {
			return fmt.Errorf("lazy-pages: %w", err)
		}
	}
	return nil
}

// epoll data: 0 is the stop eventfd; otherwise task id<<1 | 1 for a pidfd.
func (d *daemon) epollAdd(fd int, data uint64) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	*(*uint64)(unsafe.Pointer(&ev.Fd)) = data
	if err := unix.EpollCtl(d.ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("lazy-pages: epoll_ctl add %d: %w", fd, err)
	}
	return nil
}

func (d *daemon) release() {
	d.mu.Lock()
	for _, t := range d.tasks {
		d.dropLocked(t)
	}
	d.mu.Unlock()
	for _, pm := range d.pms {
		pm.close()
	}
	if d.ep >= 0 {
		unix.Close(d.ep)
	}
	if d.stopfd >= 0 {
		unix.Close(d.stopfd)
	}
	if d.dir != nil {
		d.dir.Close()
	}
	if d.guard != nil && !d.guardEnded {
		// Run failed before serving: the guard holds nothing.
		_ = d.guard.finish(false)
	}
}

func (d *daemon) serve(ctx context.Context) error {
	sock := filepath.Join(d.o.WorkDir, SocketName)
	if c, err := net.DialTimeout("unix", sock, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("lazy-pages: another lazy-pages daemon listens on %s", sock)
	}
	os.Remove(sock) // a stale socket of an earlier run
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return fmt.Errorf("lazy-pages: listen on %s: %w", sock, err)
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(sock, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("lazy-pages: %w", err)
	}
	if d.o.Ready != nil {
		d.o.Ready()
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	// workers use the sources: they end before the sources close.
	var workers sync.WaitGroup
	defer workers.Wait()
	wg.Add(2)
	workers.Add(2)
	go func() { defer wg.Done(); d.accept(ln) }()
	go func() { defer workers.Done(); d.pusher() }()
	go func() { defer workers.Done(); d.neighbours() }()
	go func() {
		defer wg.Done()
		select {
		case <-ctx.Done():
			d.fail(fmt.Errorf("lazy-pages: interrupted: %w", ctx.Err()))
		case <-d.done:
		}
		ln.Close()
	}()
	if d.guard != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-d.guard.exited:
				d.fail(fmt.Errorf("lazy-pages: the guard process ended: %v", d.guard.exitErr))
			case <-d.done:
			}
		}()
	}
	d.faultLoop()
	<-d.done
	d.mu.Lock()
	ferr := d.err
	d.mu.Unlock()
	complete := ferr == nil
	sources := append([]source{d.faultSrc, d.nbSrc}, d.pushSrcs...)
	if !complete {
		// Unblocks a worker waiting on a reply.
		for _, s := range sources {
			if s != nil {
				s.close(false)
			}
		}
	}
	// No worker may wait for a GET reply while Close reads the rest.
	workers.Wait()
	d.stats.LocalPages, d.stats.RemotePages = pagesFrom(sources...)
	for _, s := range sources {
		if s == nil {
			continue
		}
		if cerr := s.close(complete); cerr != nil && ferr == nil {
			// Every page is in: the tasks run on; the source only
			// did not hear that it may go.
			d.log.Warnf("lazy-pages: telling the page server we are done: %v", cerr)
		}
	}
	if d.guard != nil {
		d.guardEnded = true
		if gerr := d.guard.finish(complete); gerr != nil && ferr == nil {
			ferr = gerr
		}
	}
	return ferr
}

// accept takes restores' handoffs until every task of the dump came.
func (d *daemon) accept(ln *net.UnixListener) {
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		d.handoff(c)
		c.Close()
	}
}

func (d *daemon) handoff(c *net.UnixConn) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		sock := int(fd)
		unix.SetNonblock(sock, false)
		// A peer that connects and says nothing must not hold up the
		// others' handoffs for long.
		tv := unix.Timeval{Sec: 10}
		unix.SetsockoptTimeval(sock, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		unix.SetsockoptTimeval(sock, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
		if cred, err := unix.GetsockoptUcred(sock, unix.SOL_SOCKET, unix.SO_PEERCRED); err != nil || (cred.Uid != 0 && int(cred.Uid) != os.Geteuid()) {
			d.log.Errorf("lazy-pages: connection from uid %d refused", cred.Uid)
			return
		}
		h, ufd, err := uffd.RecvHandoff(sock)
		if err != nil {
			d.log.Errorf("lazy-pages: %v", err)
			uffd.AnswerHandoff(sock, err)
			return
		}
		err = d.addTask(h, ufd)
		if err != nil {
			d.log.Errorf("lazy-pages: task %d: %v", h.Pid, err)
		} else {
			d.log.Infof("lazy-pages: serving task %d: %d lazy ranges", h.Pid, len(h.Ranges))
		}
		uffd.AnswerHandoff(sock, err)
	})
}

func (d *daemon) addTask(h uffd.Handoff, ufd int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	fail := func(err error) error { unix.Close(ufd); return err }
	if d.err != nil {
		return fail(d.err)
	}
	if !d.expected[h.Pid] {
		return fail(fmt.Errorf("pid %d is not a task of %s, or was handed over already", h.Pid, d.o.ImagesDir))
	}
	want := uint64(uffd.FeatureNonCoop)
	if h.Features&want != want {
		return fail(fmt.Errorf("the userfaultfd lacks %s", uffd.FeatureNames(want&^h.Features)))
	}
	rs := make([][2]uint64, len(h.Ranges))
	for i, r := range h.Ranges {
		rs[i] = [2]uint64{r.Start, r.End}
	}
	pm, err := d.pagemapOf(h.Pid)
	if err != nil {
		return fail(err)
	}
	if err := pm.checkRanges(rs, d.o.PageServer != ""); err != nil {
		return fail(err)
	}
	u, err := uffd.FromFDNegotiated(ufd, h.Features)
	if err != nil {
		return fail(err)
	}
	pidfd, err := unix.PidfdOpen(h.Pid, 0)
	if err != nil {
		u.Close()
		return fmt.Errorf("pidfd_open(%d): %w", h.Pid, err)
	}
	d.nextID++
	t := &task{id: d.nextID, pid: h.Pid, pidfd: pidfd, u: u, pm: pm, st: newState(rs)}
	if d.guard != nil {
		if err := d.guard.add(t.id, t.pid, u.Fd(), pidfd); err != nil {
			u.Close()
			unix.Close(pidfd)
			return err
		}
	}
	if err := d.epollAdd(u.Fd(), uint64(t.id)<<1); err != nil {
		d.dropLocked(t)
		return err
	}
	if err := d.epollAdd(pidfd, uint64(t.id)<<1|1); err != nil {
		d.dropLocked(t)
		return err
	}
	delete(d.expected, h.Pid)
	d.tasks = append(d.tasks, t)
	d.stats.Tasks++
	if d.stats.FirstHandoff.IsZero() {
		d.stats.FirstHandoff = time.Now()
	}
	d.kickPusher()
	d.checkDoneLocked(t)
	return nil
}

func (d *daemon) pagemapOf(pid int) (*pagemap, error) {
	if pm, ok := d.pms[pid]; ok {
		return pm, nil
	}
	pm, err := openPagemap(d.dir, pid, d.o.PageServer != "")
	if err != nil {
		return nil, err
	}
	d.pms[pid] = pm
	return pm, nil
}

func (d *daemon) kickPusher() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// dropLocked stops serving t: its uffd closes here and in the guard, so
// the kernel handles its faults again.
func (d *daemon) dropLocked(t *task) {
	if t.gone {
		return
	}
	t.gone = true
	if d.ep >= 0 {
		unix.EpollCtl(d.ep, unix.EPOLL_CTL_DEL, t.u.Fd(), nil)
		if t.pidfd >= 0 {
			unix.EpollCtl(d.ep, unix.EPOLL_CTL_DEL, t.pidfd, nil)
		}
	}
	if d.guard != nil {
		d.guard.drop(t.id)
	}
	t.u.Close()
	if t.pidfd >= 0 {
		unix.Close(t.pidfd)
	}
	for _, k := range t.kin {
		unix.Close(k.pidfd)
	}
	t.kin = nil
	out := d.tasks[:0]
	for _, o := range d.tasks {
		if o != t {
			out = append(out, o)
		}
	}
	d.tasks = out
}

// checkDoneLocked drops t once all its pages are in and ends the daemon
// once every task is done.
func (d *daemon) checkDoneLocked(t *task) {
	if t != nil && !t.gone && t.st.pending == 0 {
		d.dropLocked(t)
	}
	if len(d.expected) == 0 && len(d.tasks) == 0 && d.err == nil {
		select {
		case <-d.done:
		default:
			d.stats.AllPagesIn = time.Now()
			close(d.done)
			d.wakeLoop()
		}
	}
}

func (d *daemon) wakeLoop() {
	var one [8]byte
	one[0] = 1
	unix.Write(d.stopfd, one[:])
}

// fail ends the daemon with err, killing every task still served.
func (d *daemon) fail(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failLocked(err)
}

func (d *daemon) failLocked(err error) {
	if d.err != nil {
		return
	}
	select {
	case <-d.done:
		return // finished already
	default:
	}
	var killed []int
	var unknown int
	for _, t := range append([]*task(nil), d.tasks...) {
		if t.kinPending && t.fork != nil {
			// A last look: its parent may have exited just now.
			d.findKinLocked(t, t.fork, 0)
		}
		if t.pid == 0 && len(t.kin) == 0 {
			unknown++
		}
		killed = append(killed, killTask(t)...)
		d.dropLocked(t)
	}
	if len(killed) > 0 {
		err = fmt.Errorf("%w; killed %v", err, killed)
	}
	if unknown > 0 {
		err = fmt.Errorf("%w; %d forked children of unknown pid were not killed", err, unknown)
	}
	d.err = err
	close(d.done)
	d.wakeLoop()
}

// missingLocked names what t still lacks.
func missingText(t *task) string {
	ms := t.st.missing()
	if len(ms) == 0 {
		return "no pages"
	}
	m := ms[0]
	s := fmt.Sprintf("%d pages, first %#x-%#x", t.st.pending, m.dst, m.dst+m.n*pageSize)
	if m.src != m.dst {
		s += fmt.Sprintf(" (dumped at %#x)", m.src)
	}
	return s
}

// sourceErr is the error of a task whose pages can no longer come.
func sourceErr(t *task, err error) error {
	who := fmt.Sprintf("pid %d", t.pid)
	if t.pid == 0 {
		who = fmt.Sprintf("a child of pid %d", t.pm.pid)
	}
	return fmt.Errorf("lazy-pages: page source lost (%v): %s never arrived in %s (post-copy cannot go on without its source)", err, missingText(t), who)
}

// Format renders the stats for --display-stats.
func (s Stats) Format() string {
	d := time.Duration(0)
	if !s.FirstHandoff.IsZero() && !s.AllPagesIn.IsZero() {
		d = s.AllPagesIn.Sub(s.FirstHandoff)
	}
	return fmt.Sprintf("Lazy tasks: %d\nFaults: %d\nPages on faults: %d\nPages pushed: %d\nZero pages: %d\n"+
		"Pages from local images: %d\nPages from the page server: %d\n"+
		"Forks, remaps, removes, unmaps followed: %d, %d, %d, %d\nAll pages in after: %v\n",
		s.Tasks, s.Faults, s.FaultPages, s.PushPages, s.ZeroPages, s.LocalPages, s.RemotePages, s.Forks, s.Remaps, s.Removes, s.Unmaps, d)
}

// procs counts the daemons running in this process and keeps the
// GOMAXPROCS they found.
var procs struct {
	sync.Mutex
	n, prev int
	raised  bool
}

// raiseProcs gives the Go scheduler a P for each of the daemon's threads
// that block in syscalls (the fault loop in epoll_wait and on the page
// server's socket, the push receiver in recv, the copier in UFFDIO_COPY)
// on top of one per CPU, until the last daemon ends. With one P per CPU,
// a fault thread that wakes while the push threads hold every P in
// syscalls waits for the runtime's sysmon to take one back (tens of µs to
// ms): the kernel, not the Go scheduler, should decide who runs, and it
// runs a thread that just woke first.
func raiseProcs() func() {
	procs.Lock()
	defer procs.Unlock()
	if procs.n == 0 {
		procs.prev = runtime.GOMAXPROCS(0)
		procs.raised = false
		if want := runtime.NumCPU() + 3; procs.prev < want {
			runtime.GOMAXPROCS(want)
			procs.raised = true
		}
	}
	procs.n++
	return func() {
		procs.Lock()
		defer procs.Unlock()
		if procs.n--; procs.n != 0 || !procs.raised {
			return
		}
		if os.Getenv("GOMAXPROCS") != "" {
			runtime.GOMAXPROCS(procs.prev)
			return
		}
		// The runtime's default again, which follows the cgroup's
		// CPU limit as it changes (an explicit number would not).
		runtime.SetDefaultGOMAXPROCS()
	}
}
