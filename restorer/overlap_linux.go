package restorer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/actions"
	"godwit/internal/images"
	"godwit/internal/inject"
	"godwit/internal/logging"
	"godwit/internal/model"
	"godwit/internal/procfs"
	"godwit/internal/ptrace"
	"godwit/internal/puppet"
)

// Restore overlapped with a migration's pre-copy rounds (DESIGN.md, Beyond
// CRIU 4): Prepare makes the task with its PID and maps its private
// anonymous memory from a layout read while the source still runs;
// ApplyLayout follows the source's layout between rounds; WritePages
// writes each round's pages straight into the task; Finish, at the
// switch-over, takes the final images, keeps what is exactly as they say
// and restores the rest as Restore would.
//
// Exactness: a page the task holds is one a round wrote, of a VMA that has
// stayed mapped since with the same kind and flags; the final images'
// chain resolves such a page to that same round's data (or the final
// delta, written again). Anything else is laid out and filled from the
// images at Finish, and whatever Finish cannot take over exactly
// (ErrNotPrepared) leaves the caller to restore from scratch.

// ErrNotPrepared reports that the final images do not fit the prepared
// task: the caller kills it (Abort) and restores from the images alone.
var ErrNotPrepared = errors.New("prepared task does not fit the final images")

// Pending is a task made and laid out ahead of its final images.
type Pending struct {
	r    *Restorer // phaseLaidOut: one task, its mm the VMAs mapped so far
	pid  int
	tids []int // its threads but the leader, as made
	// special are the vDSO and vvar areas where Prepare put them.
	special []model.VMA
	// written are the pages a round wrote into the task, sorted
	// disjoint [start, end) ranges, all inside mapped VMAs.
	written [][2]uint64
	pages   uint64 // pages written by WritePages
	final   uint64 // pages Finish wrote
	rounds  int
	done    bool
}

// PendingStats is what a Pending did before Finish.
type PendingStats struct {
	Rounds int    // rounds written into the task
	Pages  uint64 // pages written
	// FinalPages are the pages Finish wrote: the final delta and any
	// page the rounds could not place.
	FinalPages uint64
	VMAs       int // VMAs mapped now
}

// prepared reports a VMA Prepare maps ahead: private anonymous memory
// with nothing a later step sets (guards, huge pages, locking) nor a
// kind of its own.
func prepared(v *model.VMA) bool {
	return v.Status&images.VmaAnonPrivate != 0 &&
		v.Status&(images.VmaAreaVdso|images.VmaAreaVvar|images.VmaAreaVsyscall|images.VmaAreaShstk|
			images.VmaAreaSysvipc|images.VmaAreaAioring|images.VmaAnonShared|images.VmaFilePrivate|images.VmaFileShared) == 0 &&
		v.HugePage == 0 && !v.Droppable && len(v.Guards) == 0 && v.Flags&unix.MAP_LOCKED == 0
}

func special(v *model.VMA) bool {
	return v.Status&(images.VmaAreaVdso|images.VmaAreaVvar|images.VmaAreaVsyscall) != 0
}

// sameVMA reports two VMAs that map the same memory the same way (the
// protection aside: Finalize sets the final one).
func sameVMA(a, b *model.VMA) bool {
	return a.Start == b.Start && a.End == b.End && a.Flags == b.Flags && a.Status == b.Status && a.Madv == b.Madv
}

// CheckLayout refuses a layout (untrusted: from the network) that no
// address space can have: unaligned, empty, overlapping or unsorted VMAs,
// or any above the user address space.
func CheckLayout(vmas []model.VMA) error {
	var prev uint64
	for i := range vmas {
		v := &vmas[i]
		switch {
		case v.Start%pageSize != 0 || v.End%pageSize != 0 || v.Start >= v.End:
			return fmt.Errorf("layout: vma %#x-%#x: bad bounds", v.Start, v.End)
		case v.Start < prev:
			return fmt.Errorf("layout: vma %#x-%#x: not sorted or overlapping", v.Start, v.End)
		case v.End > taskSize+pageSize && v.Status&images.VmaAreaVsyscall == 0:
			return fmt.Errorf("layout: vma %#x-%#x: above the user address space", v.Start, v.End)
		}
		prev = v.End
	}
	return nil
}

// pick returns the VMAs of vmas Prepare maps: the special ones and the
// prepared ones.
func pick(vmas []model.VMA) (sel, spec []model.VMA) {
	for i := range vmas {
		switch v := &vmas[i]; {
		case special(v):
			spec = append(spec, *v)
			sel = append(sel, *v)
		case prepared(v):
			sel = append(sel, *v)
		}
	}
	return sel, spec
}

// Layout is a running process as Prepare and ApplyLayout take it: its
// PID, its other threads' TIDs and its mappings.
type Layout struct {
	Pid  int
	Tids []int // the threads but the leader
	VMAs []model.VMA
}

// Prepare makes task l.Pid and its threads as godwit's child and maps the
// private anonymous VMAs of l (read while the source runs), writable for
// WritePages. The task stays traced and stopped until Finish or Abort.
func Prepare(o Options, l Layout) (*Pending, error) {
	pid, vmas := l.Pid, l.VMAs
	if err := CheckLayout(vmas); err != nil {
		return nil, err
	}
	if pid <= 1 {
		return nil, fmt.Errorf("prepare: bad pid %d", pid)
	}
	if err := waitPidFree(pid, 0); err != nil {
		return nil, fmt.Errorf("prepare: %w", err)
	}
	sel, spec := pick(vmas)
	k := &model.Task{Pid: pid, Sid: pid, Pgid: pid, State: model.Alive, Threads: []*model.Thread{{Tid: pid}},
		MM: &model.MM{VMAs: sel}}
	for _, tid := range l.Tids {
		if tid <= 1 || tid == pid {
			return nil, fmt.Errorf("prepare: bad tid %d", tid)
		}
		if err := waitPidFree(tid, 0); err != nil {
			return nil, fmt.Errorf("prepare: %w", err)
		}
		k.Threads = append(k.Threads, &model.Thread{Tid: tid})
	}
	tree := &model.Tree{Tasks: []*model.Task{k}, Files: map[model.ID]*model.File{}}
	ti := &taskImages{pid: pid, tree: tree, task: k, threads: k.Threads, mm: k.MM, shmem: map[uint64]*images.PageReader{}}
	ti.tasks = []*taskImages{ti}
	r := &Restorer{o: o, scripts: &actions.Scripts{}, img: ti, start: time.Now(), prepared: true, log: logging.Default(),
		opened: nil, shmAt: map[uint64]shmMapping{}, shmShared: map[uint64]bool{}, ghostAt: map[[2]uint64]shmMapping{}}
	t := &taskRun{Restorer: r, idx: 0, img: ti, log: r.log.Task(pid)}
	r.tasks, r.root = []*taskRun{t}, t
	// Clear of every VMA, those mapped only at Finish too.
	win, err := pickWindow(vmas)
	if err != nil {
		return nil, r.fail("prepare", err)
	}
	r.tr = ptrace.New()
	p, err := puppet.Start(puppet.Options{Tracer: r.tr, Base: win.base})
	if err != nil {
		return nil, r.fail("prepare: start puppet", err)
	}
	runner := mapRunner(r.tr, p.Pid, win)
	scratch := mapScratch(r.tr, p.Pid, win)
	t.win, t.stubOff, t.runner, t.scratchMapped, t.tr = win, p.SyscallAddr-win.base, runner == nil, scratch == nil, r.tr
	err = r.tr.Do(func() error {
		task, err := p.CloneWith(pid, unix.CLONE_PARENT)
		if task != nil {
			t.task, t.threads = task, []int{pid}
		}
		if kerr := p.Kill(); kerr != nil && err == nil {
			err = fmt.Errorf("kill puppet %d: %w", p.Pid, kerr)
		}
		if err != nil {
			return err
		}
		// The threads now, on the puppet's own stack (clone3's
		// arguments): the layout unmaps it.
		if err := t.makeThreads(); err != nil {
			return fmt.Errorf("threads: %w", err)
		}
		s, err := t.begin(pid)
		if err != nil {
			return err
		}
		return s.End(t.layout(s))
	})
	if err != nil {
		return nil, r.fail("prepare", err)
	}
	r.phase = phaseLaidOut
	return &Pending{r: r, pid: pid, tids: slices.Clone(l.Tids), special: spec}, nil
}

// PID is the prepared task's.
func (p *Pending) PID() int { return p.pid }

// Stats says what was done so far.
func (p *Pending) Stats() PendingStats {
	return PendingStats{Rounds: p.rounds, Pages: p.pages, FinalPages: p.final, VMAs: len(p.r.img.mm.VMAs) - len(p.special)}
}

func (p *Pending) check(what string) error {
	if p.done {
		return fmt.Errorf("prepared task %d: %s after Finish or Abort", p.pid, what)
	}
	return p.r.need(phaseLaidOut, what)
}

// ApplyLayout follows the source's layout: VMAs gone or changed are
// unmapped (with the pages written there), new ones mapped. A moved vDSO
// cannot be followed: an error, after which the caller Aborts.
func (p *Pending) ApplyLayout(l Layout) error {
	if err := p.check("apply layout"); err != nil {
		return err
	}
	vmas := l.VMAs
	if l.Pid != p.pid || !sameTids(l.Tids, p.tids) {
		// Threads are made before the layout (clone3 on the puppet's
		// stack): none can be added now.
		return p.r.fail("apply layout", fmt.Errorf("the threads changed (%v, prepared %v)", l.Tids, p.tids))
	}
	if err := CheckLayout(vmas); err != nil {
		return p.r.fail("apply layout", err)
	}
	sel, spec := pick(vmas)
	if !sameSpecial(spec, p.special) {
		return p.r.fail("apply layout", errors.New("the vdso or vvar area moved"))
	}
	t := p.r.root
	var keep, drop []model.VMA
	for _, c := range t.img.mm.VMAs {
		if special(&c) {
			continue
		}
		if i := slices.IndexFunc(sel, func(n model.VMA) bool { return sameVMA(&c, &n) }); i >= 0 {
			keep = append(keep, c)
		} else {
			drop = append(drop, c)
		}
	}
	var add []model.VMA
	for _, n := range sel {
		if special(&n) || slices.ContainsFunc(keep, func(c model.VMA) bool { return sameVMA(&c, &n) }) {
			continue
		}
		if overlapsAny([]model.VMA{n}, t.win.base-windowGuard, t.win.base+windowSize+windowGuard) {
			continue // left to Finish (which then restores from scratch)
		}
		add = append(add, n)
	}
	err := p.r.tr.Do(func() error {
		s, err := t.begin(p.pid)
		if err != nil {
			return err
		}
		b := &batch{s: s}
		for _, c := range drop {
			b.add(inject.C(fmt.Sprintf("unmap vma %#x-%#x", c.Start, c.End), unix.SYS_MUNMAP, c.Start, c.End-c.Start), nil)
		}
		// mapVMAs maps what t.keep does not name, after the unmaps.
		all := slices.Concat(p.special, keep, add)
		slices.SortFunc(all, func(a, b model.VMA) int { return cmpU64(a.Start, b.Start) })
		t.img.mm.VMAs = all
		t.keep = map[uint64]bool{}
		for _, v := range slices.Concat(p.special, keep) {
			t.keep[v.Start] = true
		}
		err = t.mapVMAs(s, b)
		t.keep = nil
		return s.End(err)
	})
	if err != nil {
		return p.r.fail("apply layout", err)
	}
	for _, c := range drop {
		p.written = subRange(p.written, c.Start, c.End)
	}
	return nil
}

func sameTids(a, b []int) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// sameSpecial compares where two layouts have the vDSO (the vvar areas
// sit beside it, at the same distance on one kernel; images record them
// merged, /proc/PID/smaps apart).
func sameSpecial(a, b []model.VMA) bool {
	vdso := func(vs []model.VMA) []model.VMA {
		var out []model.VMA
		for _, v := range vs {
			if v.Status&images.VmaAreaVdso != 0 {
				out = append(out, v)
			}
		}
		return out
	}
	return slices.EqualFunc(vdso(a), vdso(b), func(x, y model.VMA) bool { return x.Start == y.Start && x.End == y.End })
}

// WritePages writes the pages round dir holds for the task (its pagemap's
// present entries) that fall in mapped VMAs, streaming from the pages
// file; the others are left to Finish.
func (p *Pending) WritePages(ctx context.Context, dir string) error {
	if err := p.check("write pages"); err != nil {
		return err
	}
	d, err := images.Open(dir, false)
	if err != nil {
		return fmt.Errorf("round %s: %w", dir, err)
	}
	defer d.Close()
	name := images.PagemapImg(p.pid)
	pr, err := images.OpenPages(d, name)
	if errors.Is(err, fs.ErrNotExist) && !d.Exists(name) {
		p.rounds++
		return nil // nothing of this task in the round
	}
	if err != nil {
		return fmt.Errorf("round %s: %w", dir, imgErr(name, err))
	}
	defer pr.Close()
	t := p.r.root
	var mapped [][2]uint64
	for _, v := range t.img.mm.VMAs {
		if !special(&v) {
			mapped = append(mapped, [2]uint64{v.Start, v.End})
		}
	}
	src := &clippedSource{pr: pr}
	var runs [][2]uint64
	for e := range pr.Ranges() {
		if !e.Present() {
			continue
		}
		for _, c := range interRanges([][2]uint64{{e.Vaddr, e.End()}}, mapped) {
			src.runs = append(src.runs, images.PageRange{Vaddr: c[0], NrPages: (c[1] - c[0]) / pageSize, Flags: e.Flags,
				Offset: e.Offset + int64(c[0]-e.Vaddr)})
			runs = append(runs, c)
		}
	}
	before := t.pagesRestored
	err = p.r.tr.Do(func() error { return t.fillPages(interruptibleSource(ctx, src)) })
	p.pages += t.pagesRestored - before
	if err != nil {
		return p.r.fail("write pages", err)
	}
	for _, c := range runs {
		p.written = addRange(p.written, c[0], c[1])
	}
	p.rounds++
	return nil
}

// Abort kills the prepared task (by PID) and releases its tracer.
func (p *Pending) Abort() {
	if p == nil || p.done {
		return
	}
	p.done = true
	p.r.Abort()
}

// Finish restores the tree of the final images in o.ImagesDir onto the
// prepared task, as RestoreContext does. ErrNotPrepared (wrapped, with the
// reason) means the task was killed without anything of it having run,
// nor the pre-restore scripts: the caller restores from the images alone.
// After any other error the task is gone too.
func (p *Pending) Finish(ctx context.Context, o Options, scripts *actions.Scripts) (*Restorer, error) {
	if err := p.check("finish"); err != nil {
		return nil, err
	}
	p.done = true
	notPrepared := func(err error) error {
		p.r.Abort()
		return fmt.Errorf("%w: %w", ErrNotPrepared, err)
	}
	o.LazyPages = false // the final delta is small: written at once
	if err := checkNetns(o); err != nil {
		return nil, notPrepared(err)
	}
	nl, err := adoptNetLock(o)
	if err != nil {
		return nil, notPrepared(err)
	}
	r, err := newRestorer(o, scripts, logging.FromContext(ctx), append([]int{p.pid}, p.tids...))
	if err != nil {
		if nl != nil {
			keepNetLock(nl, logging.FromContext(ctx), 0)
		}
		return nil, notPrepared(err)
	}
	r.netLock = nl
	if err := p.fits(r); err != nil {
		r.close()
		return nil, notPrepared(err)
	}
	// The task is r's from here: r.fail kills it.
	old, t := p.r.root, r.root
	t.win, t.stubOff, t.runner, t.scratchMapped, t.tr = old.win, old.stubOff, old.runner, old.scratchMapped, p.r.tr
	t.task, t.threads = old.task, old.threads
	r.tr = p.r.tr
	old.task, p.r.tr = nil, nil
	p.r.Abort() // its tracer and task are r's now: nothing left to kill
	if err := p.layout(ctx, r); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotPrepared, err)
	}
	// The pre-restore scripts after the last ErrNotPrepared: the
	// caller's restore from the images runs them again.
	if err := scripts.Run(actions.PreRestore, 0); err != nil {
		return nil, r.fail("pre-restore", err)
	}
	// Last before Finalize: signals could be sent to the task until now.
	if err := p.drainSignals(r); err != nil {
		return nil, r.fail("signals sent to the prepared task", err)
	}
	steps := []struct {
		name string
		run  func() error
	}{
		{"", func() error { return r.interrupted(ctx) }},
		{"finalize", r.Finalize},
		{"", func() error { return r.interrupted(ctx) }},
		{"resume", r.Resume},
	}
	for _, step := range steps {
		t0 := time.Now()
		if err := step.run(); err != nil {
			return nil, err
		}
		if step.name != "" {
			r.log.Debugf("restore %d: %s: %v", r.PID(), step.name, time.Since(t0))
		}
	}
	return r, nil
}

// maxDrained bounds the signals drainSignals takes from one thread: the
// default RLIMIT_SIGPENDING is in the tens of thousands; past this many,
// someone here keeps signalling the PID and the task is not taken over.
const maxDrained = 4096

// drainSignals takes away every signal sent to the prepared task on this
// host while it waited (its PID is visible here from Prepare on, every
// signal blocked, so they pile up pending): the restored program gets the
// final images' pending signals (Finalize), not these. rt_sigtimedwait
// with a zero timeout in each thread, until EAGAIN; a SIGSTOP (never
// blocked) the tracer took at an injection and would send again on
// detach is dropped. Fails when signals keep coming.
func (p *Pending) drainSignals(r *Restorer) error {
	t := r.root
	tids := append([]int{p.pid}, p.tids...)
	return r.tr.Do(func() error {
		for _, tid := range tids {
			st, err := procfs.ReadTaskStatus(p.pid, tid)
			if err != nil {
				return err
			}
			if st.SigPnd|st.ShdPnd == 0 {
				continue
			}
			s, err := t.begin(tid)
			if err != nil {
				return err
			}
			var buf [24]byte // a full sigset_t, then a zero struct timespec
			binary.NativeEndian.PutUint64(buf[:8], ^uint64(0))
			at, err := s.Put(0, buf[:])
			if err != nil {
				return s.End(err)
			}
			n := 0
			for ; n < maxDrained; n++ {
				_, err := s.Call("take a signal sent to the prepared task", unix.SYS_RT_SIGTIMEDWAIT, at, 0, at+8, 8)
				if en, ok := errnoOf(err); ok && en == unix.EAGAIN {
					break
				}
				if err != nil {
					return s.End(err)
				}
			}
			if n == maxDrained {
				return s.End(fmt.Errorf("thread %d: more than %d signals sent to it", tid, maxDrained))
			}
			if err := s.End(nil); err != nil {
				return err
			}
			r.log.Infof("prepared task %d: thread %d: dropped %d signals sent to it here", p.pid, tid, n)
		}
		// After every thread's calls: a SIGSTOP (or one a thread
		// dequeued while running them) is in the tracer's stash.
		for _, tid := range tids {
			sigs, err := r.tr.DropStashed(tid)
			if err != nil {
				return err
			}
			if len(sigs) > 0 {
				r.log.Infof("prepared task %d: thread %d: dropped signals %v sent to it here", p.pid, tid, sigs)
			}
		}
		for _, tid := range tids {
			st, err := procfs.ReadTaskStatus(p.pid, tid)
			if err != nil {
				return err
			}
			if st.SigPnd|st.ShdPnd != 0 {
				return fmt.Errorf("thread %d: signals %#x pending after draining", tid, st.SigPnd|st.ShdPnd)
			}
		}
		return nil
	})
}

// fits refuses final images the prepared task cannot become exactly.
func (p *Pending) fits(r *Restorer) error {
	if len(r.tasks) != 1 {
		return fmt.Errorf("a tree of %d tasks", len(r.tasks))
	}
	if r.root.img.pid != p.pid {
		return fmt.Errorf("root %d, prepared %d", r.root.img.pid, p.pid)
	}
	if namespaceFlags(r.img.tree, r.o.JoinedNS) != 0 {
		return errors.New("a UTS or IPC namespace of its own (the prepared task is in godwit's)")
	}
	var tids []int
	for _, th := range r.root.img.threads[1:] {
		tids = append(tids, th.Tid)
	}
	if !sameTids(tids, p.tids) {
		return fmt.Errorf("threads %v, prepared %v", tids, p.tids)
	}
	if r.o.RestoreSibling {
		return errors.New("--restore-sibling")
	}
	vmas := r.root.img.mm.VMAs
	var spec []model.VMA
	for i := range vmas {
		if special(&vmas[i]) {
			spec = append(spec, vmas[i])
		}
	}
	if !sameSpecial(spec, p.special) {
		return errors.New("the vdso or vvar area moved")
	}
	w := p.r.root.win
	if overlapsAny(vmas, w.base-windowGuard, w.base+windowSize+windowGuard) {
		return fmt.Errorf("a VMA took the window %#x", w.base)
	}
	if pr := r.root.img.pages; pr != nil {
		for e := range pr.Ranges() {
			if e.Flags&images.PageLazy != 0 && e.Flags&(images.PagePresent|images.PageInParent) == 0 {
				return fmt.Errorf("pages %#x-%#x left on the dumping host", e.Vaddr, e.End())
			}
		}
	}
	return nil
}

// layout makes r's task the final images' one: its session and group,
// the VMAs that differ unmapped and mapped again, the pages
// written ahead but gone since zeroed, and every page not already in
// written. Fails killing the task (r.fail).
func (p *Pending) layout(ctx context.Context, r *Restorer) error {
	t := r.root
	vmas := t.img.mm.VMAs
	mine := p.r.root.img.mm.VMAs
	kept := map[uint64]bool{}
	var drop []model.VMA
	for i := range mine {
		c := &mine[i]
		if special(c) {
			kept[c.Start] = true
			continue
		}
		if j := slices.IndexFunc(vmas, func(v model.VMA) bool { return sameVMA(c, &v) }); j >= 0 && prepared(&vmas[j]) {
			kept[c.Start] = true
		} else {
			drop = append(drop, *c)
		}
	}
	written := p.written
	for _, c := range drop {
		written = subRange(written, c.Start, c.End)
	}
	// Pages of kept VMAs the final pagemap no longer lists were dropped
	// (MADV_DONTNEED, or never there): zero.
	var listed [][2]uint64
	if pr := t.img.pages; pr != nil {
		for e := range pr.Ranges() {
			listed = addRange(listed, e.Vaddr, e.End())
		}
	}
	zero := written
	for _, l := range listed {
		zero = subRange(zero, l[0], l[1])
	}
	t0 := time.Now()
	err := r.tr.Do(func() error {
		if err := r.grow(t, map[int][]*taskRun{}); err != nil {
			return err
		}
		if err := r.setGroups(); err != nil {
			return err
		}
		s, err := t.begin(p.pid)
		if err != nil {
			return err
		}
		b := &batch{s: s}
		for _, c := range drop {
			b.add(inject.C(fmt.Sprintf("unmap vma %#x-%#x", c.Start, c.End), unix.SYS_MUNMAP, c.Start, c.End-c.Start), nil)
		}
		for _, z := range zero {
			b.add(inject.C(fmt.Sprintf("zero dropped pages %#x-%#x", z[0], z[1]), unix.SYS_MADVISE, z[0], z[1]-z[0], unix.MADV_DONTNEED), nil)
		}
		t.keep = kept
		err = t.mapVMAs(s, b)
		t.keep = nil
		if err == nil {
			// Kept VMAs were mapped writable with the protection of the
			// round that mapped them (sameVMA ignores it: a VMA
			// mprotect'ed as a whole is kept): Finalize gives every one
			// its final protection, whatever it was mapped with.
			for i := range vmas {
				v := &vmas[i]
				if !kept[v.Start] || special(v) {
					continue
				}
				t.writable[v.Start] = true
				t.protFix = append(t.protFix, vmaProt{start: v.Start, end: v.End, prot: v.Prot})
			}
		}
		return s.End(err)
	})
	if err != nil {
		return r.fail("layout onto the prepared task", err)
	}
	r.forkTime = time.Since(t0)
	r.phase = phaseLaidOut
	// The pages: every page not in written (through the chain), and the
	// final delta over written.
	err = r.tr.Do(func() error {
		pr := t.img.pages
		if pr == nil {
			return nil
		}
		var a *clippedSource
		if t.img.chain != nil {
			if err := t.fillPages(interruptibleSource(ctx, t.img.chain.SourceExcept(written))); err != nil {
				return err
			}
		} else {
			a = &clippedSource{pr: pr}
		}
		bsrc := &clippedSource{pr: pr}
		for e := range pr.Ranges() {
			if !e.Present() {
				continue
			}
			in := interRanges([][2]uint64{{e.Vaddr, e.End()}}, written)
			if a != nil {
				out := [][2]uint64{{e.Vaddr, e.End()}}
				for _, c := range in {
					out = subRange(out, c[0], c[1])
				}
				a.runs = appendRuns(a.runs, e, out)
			}
			bsrc.runs = appendRuns(bsrc.runs, e, in)
		}
		if a != nil {
			if err := t.fillPages(interruptibleSource(ctx, a)); err != nil {
				return err
			}
		}
		if err := t.fillPages(interruptibleSource(ctx, bsrc)); err != nil {
			return err
		}
		return t.fillShmem()
	})
	p.final = t.pagesRestored
	if err != nil {
		return r.fail("fill pages", err)
	}
	return nil
}

func appendRuns(runs []images.PageRange, e images.PageRange, rs [][2]uint64) []images.PageRange {
	for _, c := range rs {
		runs = append(runs, images.PageRange{Vaddr: c[0], NrPages: (c[1] - c[0]) / pageSize, Flags: e.Flags,
			Offset: e.Offset + int64(c[0]-e.Vaddr)})
	}
	return runs
}

// Ranges: sorted, disjoint [start, end) pairs.

// addRange adds [a, b) to rs, merging.
func addRange(rs [][2]uint64, a, b uint64) [][2]uint64 {
	if a >= b {
		return rs
	}
	out := make([][2]uint64, 0, len(rs)+1)
	i := 0
	for ; i < len(rs) && rs[i][1] < a; i++ {
		out = append(out, rs[i])
	}
	for ; i < len(rs) && rs[i][0] <= b; i++ {
		a, b = min(a, rs[i][0]), max(b, rs[i][1])
	}
	out = append(out, [2]uint64{a, b})
	return append(out, rs[i:]...)
}

// subRange removes [a, b) from rs.
func subRange(rs [][2]uint64, a, b uint64) [][2]uint64 {
	if a >= b {
		return rs
	}
	out := make([][2]uint64, 0, len(rs)+1)
	for _, r := range rs {
		if r[1] <= a || r[0] >= b {
			out = append(out, r)
			continue
		}
		if r[0] < a {
			out = append(out, [2]uint64{r[0], a})
		}
		if r[1] > b {
			out = append(out, [2]uint64{b, r[1]})
		}
	}
	return out
}

// interRanges is the intersection of two range lists.
func interRanges(x, y [][2]uint64) [][2]uint64 {
	var out [][2]uint64
	i, j := 0, 0
	for i < len(x) && j < len(y) {
		a, b := max(x[i][0], y[j][0]), min(x[i][1], y[j][1])
		if a < b {
			out = append(out, [2]uint64{a, b})
		}
		if x[i][1] < y[j][1] {
			i++
		} else {
			j++
		}
	}
	return out
}
