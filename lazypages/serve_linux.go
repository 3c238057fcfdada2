package lazypages

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
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
	var evs [16]unix.EpollEvent
	buf := make([]byte, uffd.DefaultBatch*32)
	fbuf := make([]byte, maxFaultPages*pageSize)
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
			d.mu.Lock()
			t := d.taskByID(uint32(data >> 1))
			if t != nil && data&1 != 0 {
				if len(d.expected) > 0 {
					// No task runs before every task is handed
					// over: this restore failed, and the rest of
					// the tree will never come.
					d.failLocked(fmt.Errorf("lazy-pages: pid %d died before every task of the dump was handed over: the restore failed", t.pid))
					d.mu.Unlock()
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
			}
		}
		select {
		case <-d.done:
			return
		default:
		}
	}
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
		var err error
		msgs, err = t.u.Read(buf, msgs[:0])
		for _, m := range msgs {
			switch m.Event {
			case uffd.EventPagefault:
				faults = append(faults, m.Address)
				d.stats.Faults++
			case uffd.EventFork:
				d.stats.Forks++
				if ferr := d.forkLocked(t, m.UFD); ferr != nil {
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
// what t still lacks, the child lacks too. Its pid is not known yet (the
// fork is not finished when the event is read); killing t's descendants
// covers it.
func (d *daemon) forkLocked(t *task, ufd int) error {
	u, err := uffd.FromFDNegotiated(ufd, t.u.Features())
	if err != nil {
		unix.Close(ufd)
		return err
	}
	d.nextID++
	c := &task{id: d.nextID, pidfd: -1, u: u, pm: t.pm, st: t.st.clone(), push: t.push}
	if d.guard != nil {
		if err := d.guard.add(c.id, 0, u.Fd(), -1); err != nil {
			u.Close()
			return err
		}
	}
	if err := d.epollAdd(u.Fd(), uint64(c.id)<<1); err != nil {
		u.Close()
		return err
	}
	d.tasks = append(d.tasks, c)
	d.log.Infof("lazy-pages: pid %d forked: serving the child (%d pages to go)", t.pid, c.st.pending)
	d.kickPusher()
	d.checkDoneLocked(c)
	return nil
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
	d.faulting.Add(1)
	defer d.faulting.Add(-1)
	for retry := 0; ; retry++ {
		if retry > 10000 {
			return faults, fmt.Errorf("lazy-pages: pid %d: cannot resolve the fault at %#x", t.pid, addr)
		}
		d.mu.Lock()
		if t.gone {
			d.mu.Unlock()
			return faults, nil
		}
		// A fault right after the last one's pages is a sequential
		// reader: the window doubles (to maxFaultPages), else it starts
		// over at FaultPages.
		win := uint64(d.o.FaultPages)
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
		b := fbuf[:r.n*pageSize]
		// The faulting page alone first: its thread runs on while the
		// neighbours are fetched and copied.
		if err := d.faultSrc.read(t.pm, r.src, b[:pageSize]); err != nil {
			d.mu.Lock()
			e := sourceErr(t, err)
			d.mu.Unlock()
			return faults, e
		}
		d.mu.Lock()
		if t.gone || t.gen != gen {
			d.mu.Unlock()
			continue
		}
		n, err := t.u.CopySkipExisting(r.dst, unsafe.Pointer(&b[0]), pageSize, 0)
		if err == nil {
			t.st.clear(r.dst, r.dst+pageSize)
			d.stats.FaultPages += n / pageSize
			if n < pageSize {
				t.u.Wake(page, pageSize)
			}
			// The program is here: the background push goes on from
			// just after it.
			t.lastEnd, t.lastWin = r.dst+uint64(len(b)), max(win, uint64(d.o.FaultPages))
			t.push = t.lastEnd
			d.mu.Unlock()
			if r.n > 1 {
				return d.faultNeighbours(t, r, b, gen, buf, faults)
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

// faultNeighbours brings the rest of a fault's window (the faulting page
// is in): what cannot land now stays pending for the push.
func (d *daemon) faultNeighbours(t *task, r run, b []byte, gen uint64, buf []byte, faults []uint64) ([]uint64, error) {
	rest := b[pageSize:]
	if err := d.faultSrc.read(t.pm, r.src+pageSize, rest); err != nil {
		d.mu.Lock()
		e := sourceErr(t, err)
		d.mu.Unlock()
		return faults, e
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if t.gone || t.gen != gen {
		return faults, nil
	}
	n, err := t.u.CopySkipExisting(r.dst+pageSize, unsafe.Pointer(&rest[0]), uint64(len(rest)), 0)
	d.stats.FaultPages += n / pageSize
	if err != nil {
		return d.afterCopyErr(t, err, buf, faults)
	}
	t.st.clear(r.dst+pageSize, r.dst+uint64(len(b)))
	return faults, nil
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

// pusher copies what no fault asked for, task by task, in address order:
// a fetcher plans runs and reads their data (over its own page-server
// connection) while the copier puts the previous run into the task.
func (d *daemon) pusher() {
	const depth = 2
	pool := make(chan []byte, depth+1)
	for i := 0; i < depth+1; i++ {
		pool <- make([]byte, d.o.PushPages*pageSize)
	}
	items := make(chan pushItem, depth)
	var inflight atomic.Int32
	go d.pushFetch(items, pool, &inflight)
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
		if t.gone || t.gen != it.gen {
			// The mm changed since the plan: the pages stay pending
			// and are planned again.
			d.mu.Unlock()
		} else if it.zero {
			n, err = zeropage(t.u, r.dst, r.n*pageSize)
			d.stats.ZeroPages += n / pageSize
			d.pushDone(t, r, err, &stuck)
		} else {
			var cut bool
			if cut, err = d.pushCopy(t, r, it.b, it.gen); cut {
				d.mu.Unlock()
			} else {
				d.pushDone(t, r, err, &stuck)
			}
		}
		if it.b != nil {
			pool <- it.b
		}
		inflight.Add(-1)
		d.kickPusher()
		if d.o.pushPause > 0 {
			time.Sleep(d.o.pushPause)
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

// pushFetch plans the next pending run from each task's cursor and
// fetches its data. Runs not copied yet are not planned twice: once the
// cursor wraps round, it waits for the runs in flight to land first.
func (d *daemon) pushFetch(items chan<- pushItem, pool chan []byte, inflight *atomic.Int32) {
	for {
		select {
		case <-d.done:
			return
		default:
		}
		d.mu.Lock()
		var it pushItem
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
		if it.t == nil {
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
			continue
		}
		inflight.Add(1)
		d.mu.Unlock()
		if !it.zero {
			var b []byte
			select {
			case b = <-pool:
			case <-d.done:
				return
			}
			// A fault in progress goes first: its fetch must not queue
			// behind ours (at the page server, on the CPU).
			for i := 0; i < 100 && d.faulting.Load() > 0; i++ {
				time.Sleep(20 * time.Microsecond)
			}
			it.b = b[:it.r.n*pageSize]
			if err := d.pushSrc.read(it.t.pm, it.r.src, it.b); err != nil {
				d.mu.Lock()
				e := sourceErr(it.t, err)
				d.mu.Unlock()
				d.fail(e)
				return
			}
		}
		select {
		case items <- it:
		case <-d.done:
			return
		}
	}
}

// killTask kills t (and every descendant of it) by SIGKILL and returns
// the pids killed. A forked child without a known pid dies with its
// parent's descendants.
func killTask(t *task) []int {
	if t.pid == 0 {
		return nil
	}
	return killTree(t.pid, t.pidfd)
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
		ents, _ := os.ReadDir("/proc/" + strconv.Itoa(p) + "/task")
		for _, e := range ents {
			b, err := os.ReadFile("/proc/" + strconv.Itoa(p) + "/task/" + e.Name() + "/children")
			if err != nil {
				continue
			}
			for _, f := range strings.Fields(string(b)) {
				c, err := strconv.Atoi(f)
				if err != nil || seen[c] {
					continue
				}
				seen[c] = true
				out = append(out, c)
				queue = append(queue, c)
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

// pushCopy copies b to r.dst in pieces, clearing each piece in the state
// as it lands. It is called and returns with d.mu held; cut reports that
// the mm changed (or t went) between pieces: the rest stays pending.
func (d *daemon) pushCopy(t *task, r run, b []byte, gen uint64) (cut bool, err error) {
	for off := uint64(0); off < uint64(len(b)); {
		if off > 0 {
			d.mu.Unlock()
			d.mu.Lock()
			if t.gone || t.gen != gen {
				return true, nil
			}
		}
		k := min(uint64(len(b))-off, pushCopyPages*pageSize)
		n, err := t.u.CopySkipExisting(r.dst+off, unsafe.Pointer(&b[off]), k, 0)
		d.stats.PushPages += n / pageSize
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
