package lazypages

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
	"godwit/uffd"
)

// faultLoop reads every uffd's messages and serves faults first; it is
// the only reader of the uffds, and reads under d.mu so that no copy ever
// runs on a state older than the mm (a copy racing an unread event gets
// EAGAIN from the kernel; one after the read sees the updated state).
func (d *daemon) faultLoop() {
	// A thread of its own: the kernel wakes this very thread for a
	// fault (epoll_wait, then the GET's reply), with no goroutine
	// hand-off between two.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer shortSlice(faultSlice)()
	var evs [16]unix.EpollEvent
	buf := make([]byte, uffd.DefaultBatch*32)
	fbuf := make([]byte, pageSize)
	for {
		n, err := unix.EpollWait(d.ep, evs[:], -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			d.fail(fmt.Errorf("lazy-pages: epoll_wait: %w", err))
			return
		}
		for _, ev := range evs[:n] {
			data := *(*uint64)(unsafe.Pointer(&ev.Fd))
			if data == 0 {
				var b [8]byte
				unix.Read(d.stopfd, b[:])
				continue
			}
			// The background push steps aside while a fault is served:
			// off d.mu and off the CPU (see yieldToFaults).
			d.faulting.Add(1)
			d.mu.Lock()
			t := d.taskByID(uint32(data >> 1))
			if t != nil && data&1 != 0 {
				if len(d.expected) > 0 {
					// No task runs before every task is handed
					// over: this restore failed, and the rest of
					// the tree will never come.
					d.failLocked(fmt.Errorf("lazy-pages: pid %d died before every task of the dump was handed over: the restore failed", t.pid))
					d.mu.Unlock()
					d.faultDone()
					return
				}
				// The task exited: nothing more to serve it.
				d.log.Infof("lazy-pages: pid %d exited with %d pages not in", t.pid, t.st.pending)
				d.dropLocked(t)
				d.checkDoneLocked(nil)
				t = nil
			}
			d.mu.Unlock()
			if t != nil {
				d.serveUffd(t, buf, fbuf)
				d.lastFault.Store(time.Now().UnixNano())
			}
			d.faultDone()
		}
		select {
		case <-d.done:
			return
		default:
		}
	}
}

// faultSlice is the scheduler slice the fault thread asks for: a thread
// that asks for a shorter slice than the running one's preempts it when it
// wakes (EEVDF, Linux 6.12+), so that a fault does not wait behind the
// background push's threads (or anyone's) for the CPU. It runs for a few
// microseconds per fault, well within it.
const faultSlice = 100 * time.Microsecond

// shortSlice asks the scheduler for slice on this (locked) thread, its
// policy and nice value kept, and returns what gives the default slice
// back. A thread not under the fair class, or a kernel without custom
// slices, keeps what it has.
func shortSlice(slice time.Duration) (undo func()) {
	attr, err := unix.SchedGetAttr(0, 0)
	if err != nil || attr.Policy != unix.SCHED_NORMAL {
		return func() {}
	}
	attr.Size, attr.Flags = unix.SizeofSchedAttr, 0
	attr.Runtime = uint64(slice.Nanoseconds())
	if unix.SchedSetAttr(0, attr, 0) != nil {
		return func() {}
	}
	return func() {
		attr.Runtime = 0
		unix.SchedSetAttr(0, attr, 0)
	}
}

// faultDone ends what faultLoop began with d.faulting.Add(1).
func (d *daemon) faultDone() {
	d.faulting.Add(-1)
}

func (d *daemon) taskByID(id uint32) *task {
	for _, t := range d.tasks {
		if t.id == id {
			return t
		}
	}
	return nil
}

// readLocked reads t's pending messages: events update the state at once,
// fault addresses are appended to faults.
func (d *daemon) readLocked(t *task, buf []byte, faults []uint64) ([]uint64, error) {
	var msgs []uffd.Msg
	for {
		// A forked child starts after this (see forkWatchState).
		tick := bootTick()
		var err error
		msgs, err = t.u.Read(buf, msgs[:0])
		for _, m := range msgs {
			switch m.Event {
			case uffd.EventPagefault:
				faults = append(faults, m.Address)
				d.stats.Faults++
			case uffd.EventFork:
				d.stats.Forks++
				if ferr := d.forkLocked(t, m.UFD, tick); ferr != nil {
					return faults, ferr
				}
			case uffd.EventRemap:
				d.stats.Remaps++
				t.st.remap(m.From, m.To, m.Len)
				t.gen++
			case uffd.EventRemove, uffd.EventUnmap:
				if m.Event == uffd.EventRemove {
					d.stats.Removes++
				} else {
					d.stats.Unmaps++
				}
				t.st.clear(m.Start, m.End)
				t.gen++
			}
		}
		if err != nil {
			if errors.Is(err, unix.EAGAIN) {
				return faults, nil
			}
			return faults, err
		}
		if len(msgs)*32 < len(buf) {
			return faults, nil
		}
	}
}

// forkLocked starts serving the child of t: its mm is a copy of t's, so
// what t still lacks, the child lacks too. Its pid is not in the event
// (the kernel sends it from inside fork, before the pid exists): it is
// looked for right after (findKinLocked, watchFork), so that the child
// is killed should lazy-pages fail even once its parent has exited.
func (d *daemon) forkLocked(t *task, ufd int, tick uint64) error {
	u, err := uffd.FromFDNegotiated(ufd, t.u.Features())
	if err != nil {
		unix.Close(ufd)
		return err
	}
	// The parent goes on once the event is read: the child may be
	// listed among its children, or even have gone to a reaper among its
	// ancestors, by now. It started after tick.
	parents := t.pids()
	f := &forkWatchState{parents: parents, ancestors: ancestorsOf(parents), tick: tick}
	d.nextID++
	c := &task{id: d.nextID, pidfd: -1, u: u, pm: t.pm, st: t.st.clone(), push: t.push, fork: f}
	if d.guard != nil {
		if err := d.guard.add(c.id, 0, u.Fd(), -1); err != nil {
			u.Close()
			return err
		}
		// Should the daemon die before the child is known, the guard
		// looks for it itself.
		if err := d.guard.fork(c.id, f); err != nil {
			d.log.Warnf("lazy-pages: %v", err)
		}
	}
	if err := d.epollAdd(u.Fd(), uint64(c.id)<<1); err != nil {
		u.Close()
		return err
	}
	d.tasks = append(d.tasks, c)
	d.log.Infof("lazy-pages: pid %d forked: serving the child (%d pages to go)", t.pid, c.st.pending)
	// The parent may exit at once (a daemonizing fork): spin briefly
	// here, where the child is listed within microseconds, then go on
	// polling off the fault loop.
	if !d.findKinLocked(c, f, 2*time.Millisecond) {
		c.kinPending = true
		go d.watchFork(c, f)
	}
	d.kickPusher()
	d.checkDoneLocked(c)
	return nil
}

// pids are the processes t stands for: its own, or its kin.
func (t *task) pids() []int {
	if t.pid > 0 {
		return []int{t.pid}
	}
	var out []int
	for _, k := range t.kin {
		out = append(out, k.pid)
	}
	return out
}

// kinProc is a process killed with a forked child task (see task.kin).
type kinProc struct{ pid, pidfd int }

// watchFork polls for the pid of the forked child c until it is found,
// its parents are all gone, or c is no longer served.
func (d *daemon) watchFork(c *task, f *forkWatchState) {
	deadline := time.Now().Add(forkWatch)
	var dead time.Time
	for {
		d.mu.Lock()
		if c.gone || d.findKinLocked(c, f, 0) {
			d.mu.Unlock()
			return
		}
		if dead.IsZero() && !f.alive() {
			// The orphan may take a moment to show at its reaper.
			dead = time.Now()
		}
		if (!dead.IsZero() && time.Since(dead) > forkOrphanWatch) || time.Now().After(deadline) {
			d.log.Warnf("lazy-pages: the pid of a child forked by pid %v is not known: it cannot be killed should lazy-pages fail", f.parents)
			d.mu.Unlock()
			return
		}
		d.mu.Unlock()
		time.Sleep(time.Millisecond)
	}
}

// forkWatch bounds how long watchFork looks for a forked child,
// forkOrphanWatch how long after its parents are gone.
const (
	forkWatch       = 10 * time.Second
	forkOrphanWatch = time.Second
)

// forkWatchState is what watching a fork for its child needs.
type forkWatchState struct {
	parents, ancestors []int
	tick               uint64 // boot time before the fork event was read, in clock ticks
}

// userHZ is the unit of /proc/PID/stat's starttime (USER_HZ, 100 on
// every architecture Linux exports it for).
const userHZ = 100

// bootTick is the boot time now in /proc's clock ticks, less one so that
// a process started from now on has a starttime at or above it.
func bootTick() uint64 {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) != nil {
		return 0
	}
	t := uint64(ts.Nano()) / (1e9 / userHZ)
	return max(t, 1) - 1
}

// orphansOf lists the children of roots started at or after tick, with
// registered only those whose memory is still registered with a userfaultfd
// (the flag goes with the uffd's last close, so a task no longer served
// has none), except those skip names: the candidates for a forked child
// of unknown pid.
func orphansOf(roots []int, tick uint64, registered bool, skip func(int) bool) []int {
	var out []int
	seen := map[int]bool{}
	for _, r := range roots {
		for _, c := range childrenOf(r) {
			if seen[c] || skip(c) {
				continue
			}
			seen[c] = true
			st, err := procfs.ReadStat(c)
			if err != nil || st.Starttime < tick || (registered && !uffdRegistered(c)) {
				continue
			}
			out = append(out, c)
		}
	}
	return out
}

func (f *forkWatchState) alive() bool {
	for _, p := range f.parents {
		if !zombieOrGone(p) {
			return true
		}
	}
	return false
}

// newChildren are the children of pids started since the fork event
// that are not served tasks themselves (with orphan, only those whose
// memory is registered with a userfaultfd).
func (d *daemon) newChildren(f *forkWatchState, pids []int, orphan bool) []int {
	return orphansOf(pids, f.tick, orphan, func(p int) bool {
		for _, t := range d.tasks {
			if t.pid == p {
				return true
			}
		}
		return false
	})
}

// findKinLocked looks, for up to spin, for the children the parents
// gained since the fork event and, when there are any, makes them c's
// kin: each is opened by pidfd and handed to the guard. With several
// forks racing (or forks within a clock tick) each unknown child gets
// every new pid, a superset of itself: only killed should lazy-pages
// fail, when the whole tree goes. Once the parents are gone, their child went to a reaper among
// their ancestors: a new child there whose memory is registered with a
// userfaultfd is taken for it.
func (d *daemon) findKinLocked(c *task, f *forkWatchState, spin time.Duration) bool {
	deadline := time.Now().Add(spin)
	for {
		pids := d.newChildren(f, f.parents, false)
		if len(pids) == 0 && !f.alive() {
			pids = d.newChildren(f, f.ancestors, true)
		}
		var kin []kinProc
		for _, pid := range pids {
			fd, err := unix.PidfdOpen(pid, 0)
			if err != nil {
				continue // gone already
			}
			kin = append(kin, kinProc{pid: pid, pidfd: fd})
		}
		if len(kin) > 0 {
			c.kinPending = false
			c.kin = append(c.kin, kin...)
			for _, k := range kin {
				if d.guard != nil {
					if err := d.guard.kin(c.id, k.pid, k.pidfd); err != nil {
						d.log.Warnf("lazy-pages: %v", err)
					}
				}
			}
			d.log.Infof("lazy-pages: the child forked by pid %v is among %v", f.parents, c.pids())
			return true
		}
		if !time.Now().Before(deadline) {
			return false
		}
		runtime.Gosched()
	}
}

// ancestorsOf lists the ancestors of pids, nearest first.
func ancestorsOf(pids []int) []int {
	var out []int
	seen := map[int]bool{}
	for _, p := range pids {
		for i := 0; i < 256; i++ {
			st, err := procfs.ReadStat(p)
			if err != nil || st.Ppid <= 0 || seen[st.Ppid] {
				break
			}
			p = st.Ppid
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

func zombieOrGone(pid int) bool {
	st, err := procfs.ReadStat(pid)
	return err != nil || st.State == 'Z' || st.State == 'X'
}

// uffdRegistered tells whether pid has memory registered with a
// userfaultfd for missing pages ("um" in smaps' VmFlags).
func uffdRegistered(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/smaps")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmFlags:"); ok && slices.Contains(strings.Fields(rest), "um") {
			return true
		}
	}
	return false
}

func (d *daemon) serveUffd(t *task, buf, fbuf []byte) {
	d.mu.Lock()
	faults, err := d.readLocked(t, buf, nil)
	if err != nil {
		d.failLocked(fmt.Errorf("lazy-pages: pid %d: %w", t.pid, err))
		d.mu.Unlock()
		return
	}
	d.mu.Unlock()
	read := time.Now()
	for len(faults) > 0 {
		a := faults[0]
		faults = faults[1:]
		var err error
		if faults, err = d.serveFault(t, a, buf, fbuf, faults); err != nil {
			d.fail(err)
			return
		}
		took := time.Since(read)
		d.mu.Lock()
		if len(d.stats.FaultTimes) < MaxFaultTimes {
			d.stats.FaultTimes = append(d.stats.FaultTimes, took)
		}
		d.mu.Unlock()
	}
	d.mu.Lock()
	d.checkDoneLocked(t)
	d.mu.Unlock()
}

func sameEntry(pm *pagemap) func(a, b uint64) bool {
	return func(a, b uint64) bool { return pm.entry(a) == pm.entry(b) }
}

// serveFault answers a fault at addr: a zero page where the dump had
// none, else up to FaultPages pages of the same pagemap entry from addr
// on. An error is fatal to the daemon.
func (d *daemon) serveFault(t *task, addr uint64, buf, fbuf []byte, faults []uint64) ([]uint64, error) {
	page := addr &^ (pageSize - 1)
	for retry := 0; ; retry++ {
		if retry > 10000 {
			return faults, fmt.Errorf("lazy-pages: pid %d: cannot resolve the fault at %#x", t.pid, addr)
		}
		d.mu.Lock()
		if t.gone {
			d.mu.Unlock()
			return faults, nil
		}
		if page >= t.nbLo && page < t.nbHi {
			// On its way: its copy wakes the thread.
			t.nbWait = append(t.nbWait, page)
			d.mu.Unlock()
			return faults, nil
		}
		// A fault right after the last one's pages is a sequential
		// reader: its window doubles (from FaultPages to maxFaultPages).
		// An isolated fault brings its page alone, as CRIU's does: its
		// neighbours would cost the next fault their transfer and copy
		// (on a CPU it may need), for pages a random reader seldom
		// touches next; the push brings them.
		win := uint64(1)
		if page >= t.lastEnd && page < t.lastEnd+uint64(d.o.FaultPages)*pageSize {
			win = min(2*t.lastWin, maxFaultPages)
		}
		r, ok := t.st.runAt(page, win, sameEntry(t.pm))
		zero := !ok || t.pm.entry(r.src) < 0
		if zero {
			if !ok {
				r = run{dst: page, n: 1} // not ours to fill: memory the task zapped or grew
			}
			n, err := zeropage(t.u, r.dst, r.n*pageSize)
			if err == nil || errors.Is(err, unix.EEXIST) {
				if ok {
					t.st.clear(r.dst, r.dst+r.n*pageSize)
					d.stats.ZeroPages += n / pageSize
				}
				if n < r.n*pageSize {
					t.u.Wake(page, pageSize)
				}
				d.mu.Unlock()
				return faults, nil
			}
			var rerr error
			faults, rerr = d.afterCopyErr(t, err, buf, faults)
			d.mu.Unlock()
			if rerr != nil {
				return faults, rerr
			}
			if uffd.IsGone(err) {
				t.u.Wake(page, pageSize) // the thread faults again, or gets SIGSEGV
				return faults, nil
			}
			continue
		}
		gen := t.gen
		d.mu.Unlock()
		// The faulting page alone on the fault connection; its
		// neighbours, once it is in, on a connection of their own,
		// copied by the neighbour goroutine when they come: the
		// faulting thread runs on as soon as its page is in, and the
		// next fault waits for no neighbours.
		if err := d.faultSrc.read(t.pm, r.src, fbuf[:pageSize]); err != nil {
			return faults, d.lostSource(t, err)
		}
		d.mu.Lock()
		if t.gone || t.gen != gen {
			d.mu.Unlock()
			continue
		}
		n, err := t.u.CopySkipExisting(r.dst, unsafe.Pointer(&fbuf[0]), pageSize, 0)
		if err == nil {
			t.st.clear(r.dst, r.dst+pageSize)
			d.stats.FaultPages += n / pageSize
			if n < pageSize {
				t.u.Wake(page, pageSize)
			}
			// The program is here: the background push goes on from
			// just after it.
			t.lastEnd, t.lastWin = r.dst+r.n*pageSize, max(win, uint64(d.o.FaultPages))
			t.push = t.lastEnd
			var nb pushItem
			if r.n > 1 {
				nb = d.planNeighbours(t, run{dst: r.dst + pageSize, src: r.src + pageSize, n: r.n - 1}, gen)
			}
			d.mu.Unlock()
			if nb.t != nil {
				d.askNeighbours(nb)
			}
			return faults, nil
		}
		var rerr error
		faults, rerr = d.afterCopyErr(t, err, buf, faults)
		d.mu.Unlock()
		if rerr != nil {
			return faults, rerr
		}
		if uffd.IsGone(err) {
			t.u.Wake(page, pageSize)
			return faults, nil
		}
	}
}

func (d *daemon) lostSource(t *task, err error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return sourceErr(t, err)
}

// neighbourDepth bounds the fault windows whose neighbours are in flight.
const neighbourDepth = 4

// planNeighbours takes a buffer for the rest of a fault's window and
// marks it in flight (under d.mu). With every buffer in use the
// neighbours are left to the push (the returned item has no task).
func (d *daemon) planNeighbours(t *task, r run, gen uint64) pushItem {
	select {
	case b := <-d.nbPool:
		t.nbLo, t.nbHi = r.dst, r.dst+r.n*pageSize
		return pushItem{t: t, r: r, gen: gen, b: b[:r.n*pageSize]}
	default:
		return pushItem{}
	}
}

// askNeighbours hands a planned neighbour run to the neighbour
// goroutine, which asks the source for it: the fault thread goes back to
// the faults at once (a send wakes the page server, on a CPU the program
// may need). It never blocks: a run holds one of neighbourDepth buffers.
func (d *daemon) askNeighbours(it pushItem) {
	d.nbAsk <- it
}

// neighbours asks for fault windows' neighbours and copies them as they
// arrive, in the order asked. Pages that cannot land stay pending for the
// push.
func (d *daemon) neighbours() {
	stuck := 0
	for {
		var it pushItem
		select {
		case it = <-d.nbAsk:
		case <-d.done:
			return
		}
		if err := d.nbSrc.send(it.t.pm, it.r.src, it.r.n); err != nil {
			d.fail(d.lostSource(it.t, err))
			return
		}
		got, err := d.nbSrc.recv(it.t.pm, it.r.src, it.b)
		if err != nil {
			d.fail(d.lostSource(it.t, err))
			return
		}
		t, r := it.t, it.r
		r.n = got
		d.mu.Lock()
		if t.gone || t.gen != it.gen || got == 0 {
			d.mu.Unlock()
		} else if cut, err := d.pushCopy(t, r, it.b[:got*pageSize], it.gen, true); cut {
			d.mu.Unlock()
		} else {
			d.pushDone(t, r, err, &stuck)
		}
		// The faults that waited for these pages: woken, they run on
		// (their page is in) or fault again and are served anew.
		d.mu.Lock()
		if t.nbLo == it.r.dst {
			t.nbLo, t.nbHi = 0, 0
			if !t.gone {
				for _, a := range t.nbWait {
					t.u.Wake(a, pageSize)
				}
			}
			t.nbWait = t.nbWait[:0]
		}
		d.mu.Unlock()
		d.nbPool <- it.b[:cap(it.b)]
	}
}

// afterCopyErr handles a failed copy under d.mu: EAGAIN means an event is
// waiting, so it is read now; ENOENT/ESRCH mean the range or the task is
// gone. Anything else is fatal.
func (d *daemon) afterCopyErr(t *task, err error, buf []byte, faults []uint64) ([]uint64, error) {
	switch {
	case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.ENOENT):
		f, rerr := d.readLocked(t, buf, faults)
		return f, rerr
	case errors.Is(err, unix.ESRCH):
		d.dropLocked(t)
		d.checkDoneLocked(nil)
		return faults, nil
	}
	return faults, fmt.Errorf("lazy-pages: pid %d: %w", t.pid, err)
}

// zeropage maps zero pages over [dst, dst+length), skipping pages already
// present. Returns the bytes mapped.
func zeropage(u *uffd.Uffd, dst, length uint64) (uint64, error) {
	var total uint64
	for off := uint64(0); off < length; {
		n, err := u.Zeropage(dst+off, length-off, 0)
		total += n
		off += n
		if err == nil {
			return total, nil
		}
		if !errors.Is(err, unix.EEXIST) {
			return total, err
		}
		off += pageSize
	}
	return total, nil
}

// pushItem is one run the push fetched (or found zero) for the copier.
type pushItem struct {
	t    *task
	r    run
	gen  uint64
	zero bool
	b    []byte
}

// pushDepth is how many background runs each lane of the push has in
// flight at once: asked of the source, arriving, or waiting to be copied.
// Several requests in flight keep the link busy while the copier works;
// a buffer each.
const pushDepth = 2

// defaultPushConns is how many lanes (connections) the push uses by
// default, maxPushConns the most it may use (with the fault and the
// neighbours' connections, within a page server's 8 per peer).
const (
	defaultPushConns = 2
	maxPushConns     = 4
)

// pusher copies what no fault asked for, task by task, in address order,
// as a pipeline: the planner picks runs and asks the source for them
// ahead (pushPlan), a receiver per lane reads its lane's replies into
// buffers (pushRecv, on a thread of its own, so that the lanes' receives
// and the copy run on different CPUs), and the copier (here) puts them
// into the tasks.
func (d *daemon) pusher() {
	lanes := len(d.pushSrcs)
	depth := max(4, pushDepth*lanes)
	pool := make(chan []byte, depth)
	for range depth {
		pool <- make([]byte, d.o.PushPages*pageSize)
	}
	slots := make(chan struct{}, depth)
	asked := make([]chan pushItem, lanes)
	for i := range asked {
		asked[i] = make(chan pushItem, depth)
	}
	items := make(chan pushItem, depth)
	var inflight atomic.Int32
	// They end with the pusher: the sources close after that.
	var sub sync.WaitGroup
	defer sub.Wait()
	sub.Add(1 + lanes)
	go func() { defer sub.Done(); d.pushPlan(asked, slots, &inflight) }()
	for i := range lanes {
		go func() { defer sub.Done(); d.pushRecv(d.pushSrcs[i], asked[i], items, pool) }()
	}
	stuck := 0
	for {
		var it pushItem
		select {
		case it = <-items:
		case <-d.done:
			return
		}
		t, r := it.t, it.r
		var err error
		var n uint64
		d.mu.Lock()
		switch {
		case t.gone || t.gen != it.gen || r.n == 0:
			// The mm changed since the plan: the pages stay pending
			// and are planned again.
			d.mu.Unlock()
		case it.zero:
			n, err = zeropage(t.u, r.dst, r.n*pageSize)
			d.stats.ZeroPages += n / pageSize
			d.pushDone(t, r, err, &stuck)
		default:
			var cut bool
			if cut, err = d.pushCopy(t, r, it.b, it.gen, false); cut {
				d.mu.Unlock()
			} else {
				d.pushDone(t, r, err, &stuck)
			}
		}
		if it.b != nil {
			pool <- it.b[:cap(it.b)]
		}
		inflight.Add(-1)
		<-slots
		d.kickPusher()
		if d.o.pushPause > 0 {
			time.Sleep(d.o.pushPause)
		}
	}
}

// pushRecv reads the data of the runs asked on its lane src, in the order
// asked.
func (d *daemon) pushRecv(src source, asked <-chan pushItem, items chan<- pushItem, pool chan []byte) {
	runtime.LockOSThread() // a thread of its own: the copier has another
	defer runtime.UnlockOSThread()
	for {
		var it pushItem
		select {
		case it = <-asked:
		case <-d.done:
			return
		}
		if !it.zero {
			var b []byte
			select {
			case b = <-pool:
			case <-d.done:
				return
			}
			got, err := src.recv(it.t.pm, it.r.src, b[:it.r.n*pageSize])
			if err != nil {
				d.fail(d.lostSource(it.t, err))
				return
			}
			// Pages the source did not send stay pending: planned
			// again once the cursor comes round.
			it.r.n = got
			it.b = b[:got*pageSize]
		}
		select {
		case items <- it:
		case <-d.done:
			return
		}
	}
}

// pushDone settles a copied run; called with d.mu held, returns with it
// released.
func (d *daemon) pushDone(t *task, r run, err error, stuck *int) {
	switch {
	case err == nil:
		*stuck = 0
		t.st.clear(r.dst, r.dst+r.n*pageSize)
		d.checkDoneLocked(t)
		d.mu.Unlock()
	case errors.Is(err, unix.ESRCH):
		d.dropLocked(t)
		d.checkDoneLocked(nil)
		d.mu.Unlock()
	case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.ENOENT):
		// An event is on its way: the fault loop reads it; the pages
		// stay pending.
		if *stuck++; *stuck > 100000 {
			d.failLocked(fmt.Errorf("lazy-pages: pid %d: cannot fill %#x-%#x: %v, and no event explains it", t.pid, r.dst, r.dst+r.n*pageSize, err))
		}
		d.mu.Unlock()
		time.Sleep(20 * time.Microsecond)
	default:
		d.failLocked(fmt.Errorf("lazy-pages: pid %d: fill %#x-%#x: %w", t.pid, r.dst, r.dst+r.n*pageSize, err))
		d.mu.Unlock()
	}
}

// pushPlan plans the next pending run from each task's cursor and asks
// the source for its data, up to pushDepth runs ahead. Runs not copied
// yet are not planned twice: once the cursor wraps round, it waits for the
// runs in flight to land first.
func (d *daemon) pushPlan(asked []chan pushItem, slots chan struct{}, inflight *atomic.Int32) {
	for lane := 0; ; lane = (lane + 1) % len(asked) {
		select {
		case slots <- struct{}{}:
		case <-d.done:
			return
		}
		var it pushItem
		for it.t == nil {
			select {
			case <-d.done:
				return
			default:
			}
			d.mu.Lock()
			waiting := false
			for _, c := range d.tasks {
				if !c.resumed() {
					waiting = true
					continue
				}
				a, ok := c.st.nextPending(c.push)
				if !ok {
					continue
				}
				if a < c.push && inflight.Load() > 0 {
					waiting = true // wrapped round: let what is in flight land
					continue
				}
				r, _ := c.st.runAt(a, uint64(d.o.PushPages), sameEntry(c.pm))
				c.push = r.dst + r.n*pageSize
				it = pushItem{t: c, r: r, gen: c.gen, zero: c.pm.entry(r.src) < 0}
				break
			}
			if it.t != nil {
				inflight.Add(1)
				d.mu.Unlock()
				break
			}
			d.mu.Unlock()
			var tick <-chan time.Time
			if waiting {
				tick = time.After(time.Millisecond)
			}
			select {
			case <-d.kick:
			case <-tick:
			case <-d.done:
				return
			}
		}
		if !it.zero {
			// A fault in progress goes first: its request must not
			// queue behind ours (at the page server, on the CPU).
			d.yieldToFaults()
			if err := d.pushSrcs[lane].send(it.t.pm, it.r.src, it.r.n); err != nil {
				d.fail(d.lostSource(it.t, err))
				return
			}
		}
		select {
		case asked[lane] <- it:
		case <-d.done:
			return
		}
	}
}

// killTask kills t (and every descendant of it) by SIGKILL and returns
// the pids killed: a forked child is killed through its kin.
func killTask(t *task) []int {
	var out []int
	if t.pid > 0 {
		out = killTree(t.pid, t.pidfd)
	}
	for _, k := range t.kin {
		out = append(out, killTree(k.pid, k.pidfd)...)
	}
	return out
}

// killTree kills pid through pidfd (immune to pid reuse) and, by pid, the
// descendants found under it now.
func killTree(pid, pidfd int) []int {
	desc := descendants(pid)
	if pidfd >= 0 {
		unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0)
	} else {
		unix.Kill(pid, unix.SIGKILL)
	}
	for _, c := range desc {
		unix.Kill(c, unix.SIGKILL)
	}
	return append([]int{pid}, desc...)
}

func descendants(pid int) []int {
	var out []int
	seen := map[int]bool{pid: true}
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range childrenOf(p) {
			if seen[c] {
				continue
			}
			seen[c] = true
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// childrenOf lists pid's children, from every thread's children file.
func childrenOf(pid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	for _, e := range ents {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + e.Name() + "/children")
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				out = append(out, c)
			}
		}
	}
	return out
}

// maxFaultPages bounds the window of a sequential reader's faults.
const maxFaultPages = 256

// pushCopyPages bounds one background copy under d.mu, so that a fault
// waits for at most that much (the lock is let go between copies).
const pushCopyPages = 16

// yieldToFaults waits (off d.mu) while the fault loop serves faults, and
// until none came for faultQuiet, at most yieldMax in all: the program's
// faults must wait neither for d.mu behind a background copy nor for a
// CPU behind the push's threads (there may be only two CPUs). A program
// that faults all the time still lets the push on, slowly.
func (d *daemon) yieldToFaults() {
	var t *time.Timer
	deadline := time.Now().Add(yieldMax)
	for {
		now := time.Now()
		if !now.Before(deadline) {
			return
		}
		// A fault being served counts as one now. The push sleeps
		// on a timer rather than being woken by each fault's end: a
		// wake-up per fault would take a CPU from the next fault.
		last := d.lastFault.Load()
		if d.faulting.Load() > 0 {
			last = now.UnixNano()
		}
		quiet := time.Duration(last) + faultQuiet - time.Duration(now.UnixNano())
		if quiet <= 0 {
			return
		}
		wait := min(quiet, deadline.Sub(now))
		if t == nil {
			t = time.NewTimer(wait)
			defer t.Stop()
		} else {
			t.Reset(wait)
		}
		select {
		case <-t.C:
		case <-d.done:
			return
		}
	}
}

// faultQuiet is how long after a fault the push stays aside (a program
// touching missing pages one after another faults again within it), and
// yieldMax the longest the push waits at a time.
const (
	faultQuiet = 300 * time.Microsecond
	yieldMax   = 10 * time.Millisecond
)

// copyPiece is how much one background UFFDIO_COPY may take under d.mu:
// pushCopyPages while faults are being served (a fault waits for d.mu at
// most that long), everything in one call when none came for faultQuiet
// (each call costs a lookup of the mm and of the range in the kernel).
func (d *daemon) copyPiece(fault bool) uint64 {
	if fault || d.faulting.Load() > 0 || time.Now().UnixNano()-d.lastFault.Load() < int64(faultQuiet) {
		return pushCopyPages * pageSize
	}
	return maxFaultPages * pageSize
}

// pushCopy copies b to r.dst in pieces, clearing each piece in the state
// as it lands. It is called and returns with d.mu held; cut reports that
// the mm changed (or t went) between pieces: the rest stays pending.
func (d *daemon) pushCopy(t *task, r run, b []byte, gen uint64, fault bool) (cut bool, err error) {
	for off := uint64(0); off < uint64(len(b)); {
		if off > 0 {
			d.mu.Unlock()
			if !fault {
				d.yieldToFaults()
			}
			d.mu.Lock()
			if t.gone || t.gen != gen {
				return true, nil
			}
		}
		k := min(uint64(len(b))-off, d.copyPiece(fault))
		n, err := t.u.CopySkipExisting(r.dst+off, unsafe.Pointer(&b[off]), k, 0)
		if fault {
			d.stats.FaultPages += n / pageSize
		} else {
			d.stats.PushPages += n / pageSize
		}
		if err != nil {
			return false, err
		}
		t.st.clear(r.dst+off, r.dst+off+k)
		off += k
	}
	return false, nil
}

// resumed reports whether the restore let t run (no tracer left). Until
// then the background push leaves it alone: it would take the CPU the
// restore needs, and the program's start is what the user waits for;
// faults are served all along.
func (t *task) resumed() bool {
	if t.running || t.pid == 0 {
		return true
	}
	st, err := procfs.ReadStatus(t.pid)
	t.running = err != nil || st.TracerPid == 0
	return t.running
}
