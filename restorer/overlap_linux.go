package restorer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/actions"
	"godwit/internal/images"
	"godwit/internal/inject"
	"godwit/internal/logging"
	"godwit/internal/model"
	"godwit/internal/pagexfer"
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

// Pending is a task, or a tree of tasks, made and laid out ahead of its
// final images.
type Pending struct {
	r *Restorer // phaseLaidOut: the tasks, their mms the VMAs mapped so far
	// tasks are the prepared tasks, in r.tasks' order (parents before
	// children), the root first.
	tasks []*pendingTask
	// tree: prepared from a tree's layout, sessions and process groups
	// made at Prepare (children cannot join a session made after them);
	// else one task, its session made at Finish.
	tree bool
	// shm are the shared anonymous objects prepared, by shmid.
	shm    map[uint64]*pendingShm
	pages  uint64 // pages written by WritePages
	final  uint64 // pages Finish wrote
	rounds int
	done   bool
}

// pendingTask is one prepared task.
type pendingTask struct {
	pid, ppid, sid, pgid int
	tids                 []int // its threads but the leader, as made
	// add are the threads of the final images Finish makes, drop those
	// it ends (fits).
	add, drop []int
	// special are the vDSO and vvar areas where Prepare put them.
	special []model.VMA
	// written are the pages a round wrote into the task, sorted
	// disjoint [start, end) ranges, all inside mapped VMAs.
	written [][2]uint64
}

// pendingShm is a shared anonymous object prepared: made once, mapped by
// every mapping the layout had (maps, in task order), kept while every
// later layout and the final images have exactly those.
type pendingShm struct {
	maps []shmMap
	size uint64
	// written are the object's pages (offsets) a round wrote.
	written [][2]uint64
}

// shmMap is one mapping of a shared anonymous object.
type shmMap struct {
	pid int
	vma model.VMA
}

func sameShmMaps(a, b []shmMap) bool {
	return slices.EqualFunc(a, b, func(x, y shmMap) bool {
		return x.pid == y.pid && sameVMA(&x.vma, &y.vma) && x.vma.Pgoff == y.vma.Pgoff && x.vma.Shmid == y.vma.Shmid
	})
}

// shmMapsOf lists the mappings of every shared anonymous object in the
// tasks' VMAs, in task order then address order, and each object's size
// (its largest mapped end, as the images' restore makes it).
func shmMapsOf(pids []int, vmas [][]model.VMA) (map[uint64][]shmMap, map[uint64]uint64) {
	maps, size := map[uint64][]shmMap{}, map[uint64]uint64{}
	for i, vs := range vmas {
		for _, v := range vs {
			if v.SharedAnon() {
				maps[v.Shmid] = append(maps[v.Shmid], shmMap{pid: pids[i], vma: v})
				size[v.Shmid] = max(size[v.Shmid], v.Pgoff+v.End-v.Start)
			}
		}
	}
	// By task, then address: the images' tree order may not be the
	// layout's.
	for _, ms := range maps {
		slices.SortFunc(ms, func(a, b shmMap) int {
			if a.pid != b.pid {
				return a.pid - b.pid
			}
			return cmpU64(a.vma.Start, b.vma.Start)
		})
	}
	return maps, size
}

// PendingStats is what a Pending did before Finish.
type PendingStats struct {
	Tasks  int    // tasks prepared
	Shared int    // shared anonymous objects prepared (kept so far)
	Rounds int    // rounds written into the tasks
	Pages  uint64 // pages written
	// FinalPages are the pages Finish wrote: the final delta and any
	// page the rounds could not place.
	FinalPages uint64
	VMAs       int // VMAs mapped now, in every task
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

// preparedShared reports a shared anonymous VMA (MAP_SHARED|MAP_ANONYMOUS,
// not SysV IPC) Prepare may map ahead, with its object: nothing a later
// step sets, and an object id to know it by.
func preparedShared(v *model.VMA) bool {
	return v.Status&images.VmaAnonShared != 0 && v.Shmid != 0 &&
		v.Status&(images.VmaAreaVdso|images.VmaAreaVvar|images.VmaAreaVsyscall|images.VmaAreaShstk|
			images.VmaAreaSysvipc|images.VmaAreaAioring|images.VmaAnonPrivate|images.VmaFilePrivate|images.VmaFileShared) == 0 &&
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

// pick returns the VMAs of vmas Prepare maps: the special ones, the
// prepared ones, and those of the shared objects in shm.
func pick(vmas []model.VMA, shm map[uint64]bool) (sel, spec []model.VMA) {
	for i := range vmas {
		switch v := &vmas[i]; {
		case special(v):
			spec = append(spec, *v)
			sel = append(sel, *v)
		case prepared(v), v.SharedAnon() && shm[v.Shmid]:
			sel = append(sel, *v)
		}
	}
	return sel, spec
}

// pickShared returns the shared anonymous objects of the tasks' VMAs that
// can be prepared: every mapping of each preparedShared.
func pickShared(vmas [][]model.VMA) map[uint64]bool {
	ok := map[uint64]bool{}
	for _, vs := range vmas {
		for i := range vs {
			v := &vs[i]
			if !v.SharedAnon() {
				continue
			}
			if was, seen := ok[v.Shmid]; !seen || was {
				ok[v.Shmid] = preparedShared(v)
			}
		}
	}
	return ok
}

// Layout is a running process as Prepare and ApplyLayout take it: its
// PID, its other threads' TIDs and its mappings. A tree's root layout
// also lists the tree's other tasks (Tasks, parents before children),
// and every task of a tree its parent, session and process group.
type Layout struct {
	Pid  int
	Tids []int // the threads but the leader
	VMAs []model.VMA
	// Ppid, Sid, Pgid: a tree's task's (unused for one task).
	Ppid, Sid, Pgid int
	// Tasks are the tree's tasks but the root (on the root's layout).
	Tasks []Layout
}

// all is the root's layout then the tree's other tasks'.
func (l *Layout) all() []Layout {
	root := *l
	root.Tasks = nil
	return append([]Layout{root}, l.Tasks...)
}

// MaxTreeTasks bounds the tasks of a tree prepared ahead.
const MaxTreeTasks = 1024

// checkTree refuses a tree layout (untrusted) that cannot be made as
// given: a PID or TID used twice or not a process's, a parent that is not
// an earlier task, a session or group led from outside the tree (godwit's
// session or another host's: only the final images say which, so the
// tree is not made ahead), a nested tree.
func checkTreeLayout(ls []Layout) error {
	if len(ls) > MaxTreeTasks {
		return fmt.Errorf("layout: %d tasks, more than %d", len(ls), MaxTreeTasks)
	}
	procs, ids := map[int]bool{}, map[int]bool{}
	for _, l := range ls {
		procs[l.Pid] = true
	}
	for i, l := range ls {
		if l.Pid <= 1 {
			return fmt.Errorf("layout: bad pid %d", l.Pid)
		}
		if len(l.Tasks) > 0 {
			return fmt.Errorf("layout: task %d lists tasks of its own", l.Pid)
		}
		if i > 0 && !ids[l.Ppid] {
			return fmt.Errorf("layout: task %d: parent %d is not an earlier task", l.Pid, l.Ppid)
		}
		if ids[l.Pid] {
			return fmt.Errorf("layout: pid %d used twice", l.Pid)
		}
		ids[l.Pid] = true
		for _, tid := range l.Tids {
			if tid <= 1 || ids[tid] || procs[tid] {
				return fmt.Errorf("layout: task %d: bad tid %d", l.Pid, tid)
			}
			ids[tid] = true
		}
		if !procs[l.Sid] || !procs[l.Pgid] {
			return fmt.Errorf("layout: task %d: session %d or process group %d is led from outside the tree", l.Pid, l.Sid, l.Pgid)
		}
		if err := CheckLayout(l.VMAs); err != nil {
			return fmt.Errorf("task %d: %w", l.Pid, err)
		}
	}
	return nil
}

// Prepare makes task l.Pid and its threads as godwit's child (with a
// tree's layout, every task of it, each made by its parent, in its
// session and process group) and maps the private anonymous VMAs of
// each (read while the source runs), writable for WritePages. The tasks
// stay traced and stopped until Finish or Abort.
func Prepare(o Options, l Layout) (*Pending, error) {
	ls := l.all()
	tree := len(ls) > 1
	if tree {
		if err := checkTreeLayout(ls); err != nil {
			return nil, err
		}
	} else {
		if err := CheckLayout(l.VMAs); err != nil {
			return nil, err
		}
		if l.Pid <= 1 {
			return nil, fmt.Errorf("prepare: bad pid %d", l.Pid)
		}
		for _, tid := range l.Tids {
			if tid <= 1 || tid == l.Pid {
				return nil, fmt.Errorf("prepare: bad tid %d", tid)
			}
		}
	}
	p := &Pending{tree: tree, shm: map[uint64]*pendingShm{}}
	var ks []*model.Task
	var every []model.VMA
	var pids []int
	var all, sels [][]model.VMA
	for _, x := range ls {
		all = append(all, x.VMAs)
	}
	shmOK := pickShared(all)
	for _, x := range ls {
		for _, id := range append([]int{x.Pid}, x.Tids...) {
			if err := waitPidFree(id, 0); err != nil {
				return nil, fmt.Errorf("prepare: %w", err)
			}
		}
		sel, spec := pick(x.VMAs, shmOK)
		pids, sels = append(pids, x.Pid), append(sels, sel)
		k := &model.Task{Pid: x.Pid, Ppid: x.Ppid, Sid: x.Sid, Pgid: x.Pgid, State: model.Alive,
			Threads: []*model.Thread{{Tid: x.Pid}}, MM: &model.MM{VMAs: sel}}
		if !tree {
			// Its session and group come at Finish, from the images.
			k.Ppid, k.Sid, k.Pgid = 0, x.Pid, x.Pid
		}
		for _, tid := range x.Tids {
			k.Threads = append(k.Threads, &model.Thread{Tid: tid})
		}
		ks = append(ks, k)
		every = append(every, x.VMAs...)
		p.tasks = append(p.tasks, &pendingTask{pid: k.Pid, ppid: k.Ppid, sid: k.Sid, pgid: k.Pgid,
			tids: slices.Clone(x.Tids), special: spec})
	}
	mt := &model.Tree{Tasks: ks, Files: map[model.ID]*model.File{}}
	r := &Restorer{o: o, scripts: &actions.Scripts{}, start: time.Now(), prepared: true, log: logging.Default(),
		opened: nil, shmAt: map[uint64]shmMapping{}, shmShared: map[uint64]bool{}, ghostAt: map[[2]uint64]shmMapping{}}
	maps, shmSize := shmMapsOf(pids, sels)
	for id, ms := range maps {
		p.shm[id] = &pendingShm{maps: ms, size: shmSize[id]}
		r.shmShared[id] = slices.ContainsFunc(ms, func(m shmMap) bool { return m.pid != ms[0].pid })
	}
	var tis []*taskImages
	for i, k := range ks {
		ti := &taskImages{pid: k.Pid, tree: mt, task: k, threads: k.Threads, mm: k.MM, shmem: map[uint64]*images.PageReader{},
			shmSize: shmSize}
		tis = append(tis, ti)
		r.tasks = append(r.tasks, &taskRun{Restorer: r, idx: i, img: ti, log: r.log.Task(k.Pid)})
	}
	tis[0].tasks = tis
	r.img, r.root = tis[0], r.tasks[0]
	p.r = r
	// Clear of every VMA of every task, those mapped only at Finish too.
	win, err := pickWindow(sortedVMAs(every))
	if err != nil {
		return nil, r.fail("prepare", err)
	}
	r.tr = ptrace.New()
	pup, err := puppet.Start(puppet.Options{Tracer: r.tr, Base: win.base})
	if err != nil {
		return nil, r.fail("prepare: start puppet", err)
	}
	runner := mapRunner(r.tr, pup.Pid, win)
	scratch := mapScratch(r.tr, pup.Pid, win)
	for _, t := range r.tasks {
		t.win, t.stubOff, t.runner, t.scratchMapped, t.tr = win, pup.SyscallAddr-win.base, runner == nil, scratch == nil, r.tr
	}
	err = r.tr.Do(func() error {
		var err error
		if tree {
			err = r.createTree(pup)
		} else {
			var task *puppet.Puppet
			task, err = pup.CloneWith(l.Pid, unix.CLONE_PARENT)
			if task != nil {
				r.root.task, r.root.threads = task, []int{l.Pid}
			}
		}
		if kerr := pup.Kill(); kerr != nil && err == nil {
			err = fmt.Errorf("kill puppet %d: %w", pup.Pid, kerr)
		}
		if err != nil {
			return err
		}
		// The threads now, on the puppet's own stack (clone3's
		// arguments): the layout unmaps it.
		for _, t := range r.tasks {
			if err := t.makeThreads(); err != nil {
				return fmt.Errorf("task %d: threads: %w", t.img.pid, err)
			}
		}
		for _, t := range r.tasks {
			s, err := t.begin(t.img.pid)
			if err != nil {
				return err
			}
			if err := s.End(t.layout(s)); err != nil {
				return fmt.Errorf("task %d: %w", t.img.pid, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, r.fail("prepare", err)
	}
	r.phase = phaseLaidOut
	return p, nil
}

// sortedVMAs is vs sorted by start (several tasks' VMAs overlap).
func sortedVMAs(vs []model.VMA) []model.VMA {
	vs = slices.Clone(vs)
	slices.SortFunc(vs, func(a, b model.VMA) int { return cmpU64(a.Start, b.Start) })
	return vs
}

// PID is the prepared root task's.
func (p *Pending) PID() int { return p.tasks[0].pid }

// PIDs are the prepared tasks', the root first.
func (p *Pending) PIDs() []int {
	out := make([]int, len(p.tasks))
	for i, t := range p.tasks {
		out[i] = t.pid
	}
	return out
}

// Stats says what was done so far.
func (p *Pending) Stats() PendingStats {
	st := PendingStats{Tasks: len(p.tasks), Shared: len(p.shm), Rounds: p.rounds, Pages: p.pages, FinalPages: p.final}
	for i, t := range p.r.tasks {
		st.VMAs += len(t.img.mm.VMAs) - len(p.tasks[i].special)
	}
	return st
}

func (p *Pending) check(what string) error {
	if p.done {
		return fmt.Errorf("prepared task %d: %s after Finish or Abort", p.PID(), what)
	}
	return p.r.need(phaseLaidOut, what)
}

// sameTask compares a prepared task with a later layout's (or image's)
// view of it: PID and, in a tree, parent, session and group. Its threads
// are the final images' business (newThreads).
func (p *Pending) sameTask(pt *pendingTask, pid, ppid, sid, pgid int) error {
	switch {
	case pid != pt.pid:
		return fmt.Errorf("task %d, prepared %d", pid, pt.pid)
	case p.tree && (ppid != pt.ppid && pt != p.tasks[0] || sid != pt.sid || pgid != pt.pgid):
		// (The root's parent is outside the tree: the images say 0.)
		return fmt.Errorf("task %d: parent, session, group %d %d %d, prepared %d %d %d", pid, ppid, sid, pgid, pt.ppid, pt.sid, pt.pgid)
	}
	return nil
}

// threadChanges returns the threads of tids (a task's in the final
// images, but its leader) the prepared task lacks, and those it has that
// the images do not: Finish makes the first and ends the others.
func threadChanges(pt *pendingTask, tids []int) (add, drop []int) {
	for _, tid := range pt.tids {
		if !slices.Contains(tids, tid) {
			drop = append(drop, tid)
		}
	}
	for _, tid := range tids {
		if !slices.Contains(pt.tids, tid) {
			add = append(add, tid)
		}
	}
	return add, drop
}

// ApplyLayout follows the source's layout: in each task, VMAs gone or
// changed are unmapped (with the pages written there), new ones mapped.
// Threads are left as prepared (the final images say which remain). A
// moved vDSO, or tasks that appeared, ended or moved, cannot be followed:
// an error, after which the caller Aborts.
func (p *Pending) ApplyLayout(l Layout) error {
	if err := p.check("apply layout"); err != nil {
		return err
	}
	ls := l.all()
	if len(ls) != len(p.tasks) {
		return p.r.fail("apply layout", fmt.Errorf("a tree of %d tasks, prepared %d", len(ls), len(p.tasks)))
	}
	byPid := map[int]*Layout{}
	for i := range ls {
		byPid[ls[i].Pid] = &ls[i]
	}
	type change struct {
		t          *taskRun
		pt         *pendingTask
		keep, drop []model.VMA
		add        []model.VMA
	}
	var pids []int
	var vmas [][]model.VMA
	for _, pt := range p.tasks {
		x := byPid[pt.pid]
		if x == nil {
			return p.r.fail("apply layout", fmt.Errorf("task %d is not in the layout (it ended, or the root changed)", pt.pid))
		}
		if err := p.sameTask(pt, x.Pid, x.Ppid, x.Sid, x.Pgid); err != nil {
			return p.r.fail("apply layout", err)
		}
		if err := CheckLayout(x.VMAs); err != nil {
			return p.r.fail("apply layout", fmt.Errorf("task %d: %w", x.Pid, err))
		}
		pids, vmas = append(pids, x.Pid), append(vmas, x.VMAs)
	}
	// A shared object is kept while its mappings, in every task, are
	// the prepared ones; else it is unmapped everywhere (its pages with
	// it) and left to Finish: an object cannot be resized or moved
	// between tasks here.
	maps, size := shmMapsOf(pids, vmas)
	ok := pickShared(vmas)
	keepShm := map[uint64]bool{}
	for id, ps := range p.shm {
		keepShm[id] = ok[id] && size[id] == ps.size && sameShmMaps(maps[id], ps.maps)
	}
	var cs []change
	for i, pt := range p.tasks {
		x := byPid[pt.pid]
		sel, spec := pick(x.VMAs, keepShm)
		if !sameSpecial(spec, pt.special) {
			return p.r.fail("apply layout", fmt.Errorf("task %d: the vdso or vvar area moved", x.Pid))
		}
		c := change{t: p.r.tasks[i], pt: pt}
		for _, v := range c.t.img.mm.VMAs {
			if special(&v) {
				continue
			}
			if slices.ContainsFunc(sel, func(n model.VMA) bool { return sameVMA(&v, &n) }) {
				c.keep = append(c.keep, v)
			} else {
				c.drop = append(c.drop, v)
			}
		}
		for _, n := range sel {
			if special(&n) || n.SharedAnon() || slices.ContainsFunc(c.keep, func(v model.VMA) bool { return sameVMA(&v, &n) }) {
				continue
			}
			if overlapsAny([]model.VMA{n}, c.t.win.base-windowGuard, c.t.win.base+windowSize+windowGuard) {
				continue // left to Finish (which then restores from scratch)
			}
			c.add = append(c.add, n)
		}
		cs = append(cs, c)
	}
	err := p.r.tr.Do(func() error {
		for _, c := range cs {
			if len(c.drop) == 0 && len(c.add) == 0 {
				continue
			}
			t, pt := c.t, c.pt
			s, err := t.begin(pt.pid)
			if err != nil {
				return err
			}
			b := &batch{s: s}
			for _, v := range c.drop {
				b.add(inject.C(fmt.Sprintf("unmap vma %#x-%#x", v.Start, v.End), unix.SYS_MUNMAP, v.Start, v.End-v.Start), nil)
			}
			// mapVMAs maps what t.keep does not name, after the unmaps.
			all := sortedVMAs(slices.Concat(pt.special, c.keep, c.add))
			t.img.mm.VMAs = all
			t.keep = map[uint64]bool{}
			for _, v := range slices.Concat(pt.special, c.keep) {
				t.keep[v.Start] = true
			}
			err = t.mapVMAs(s, b)
			t.keep = nil
			if err := s.End(err); err != nil {
				return fmt.Errorf("task %d: %w", pt.pid, err)
			}
		}
		return nil
	})
	if err != nil {
		return p.r.fail("apply layout", err)
	}
	for _, c := range cs {
		for _, v := range c.drop {
			c.pt.written = subRange(c.pt.written, v.Start, v.End)
		}
	}
	for id, keep := range keepShm {
		if !keep {
			delete(p.shm, id)
		}
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

// WritePages writes the pages round dir holds for each task (its
// pagemap's present entries) that fall in mapped VMAs, streaming from the
// pages file; the others are left to Finish.
func (p *Pending) WritePages(ctx context.Context, dir string) error {
	if err := p.check("write pages"); err != nil {
		return err
	}
	d, err := images.Open(dir, false)
	if err != nil {
		return fmt.Errorf("round %s: %w", dir, err)
	}
	defer d.Close()
	for i, pt := range p.tasks {
		if err := p.writeTask(ctx, d, dir, p.r.tasks[i], pt); err != nil {
			return err
		}
	}
	for id, ps := range p.shm {
		if err := p.writeShared(ctx, d, dir, id, ps); err != nil {
			return err
		}
	}
	p.rounds++
	return nil
}

// writeShared writes the pages round dir holds for shared object id (its
// pagemap's addresses are offsets in the object), all of them, through the
// object's file (shmem_linux.go), opened at any of its mappings.
func (p *Pending) writeShared(ctx context.Context, d *images.Dir, dir string, id uint64, ps *pendingShm) error {
	name := images.PagemapShmemImg(id)
	if !d.Exists(name) {
		return nil // not in the round: unchanged
	}
	pr, err := images.OpenPages(d, name)
	if err != nil {
		return fmt.Errorf("round %s: %w", dir, imgErr(name, err))
	}
	defer pr.Close()
	src := &clippedSource{pr: pr}
	var runs [][2]uint64
	for e := range pr.Ranges() {
		if e.Present() {
			src.runs = append(src.runs, e)
			runs = append(runs, [2]uint64{e.Vaddr, e.End()})
		}
	}
	m := ps.maps[0]
	f, err := openShmem(m.pid, &m.vma)
	if err == nil {
		var n uint64
		n, err = writeShmem(f, interruptibleSource(ctx, src))
		p.pages += n
		f.Close()
	}
	if err != nil {
		return p.r.fail(fmt.Sprintf("write pages of shared object %d", id), err)
	}
	for _, c := range runs {
		ps.written = addRange(ps.written, c[0], c[1])
	}
	return nil
}

func (p *Pending) writeTask(ctx context.Context, d *images.Dir, dir string, t *taskRun, pt *pendingTask) error {
	name := images.PagemapImg(pt.pid)
	pr, err := images.OpenPages(d, name)
	if errors.Is(err, fs.ErrNotExist) && !d.Exists(name) {
		return nil // nothing of this task in the round
	}
	if err != nil {
		return fmt.Errorf("round %s: %w", dir, imgErr(name, err))
	}
	defer pr.Close()
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
		return p.r.fail(fmt.Sprintf("write pages of task %d", pt.pid), err)
	}
	for _, c := range runs {
		pt.written = addRange(pt.written, c[0], c[1])
	}
	return nil
}

// Abort kills the prepared tasks (by PID) and releases their tracer.
func (p *Pending) Abort() {
	if p == nil || p.done {
		return
	}
	p.done = true
	p.r.Abort()
}

// Finish restores the tree of the final images in o.ImagesDir onto the
// prepared tasks, as RestoreContext does. ErrNotPrepared (wrapped, with
// the reason) means the tasks were killed without anything of them having
// run, nor the pre-restore scripts: the caller restores from the images
// alone. After any other error the tasks are gone too.
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
	var adopted []int
	for _, pt := range p.tasks {
		adopted = append(append(adopted, pt.pid), pt.tids...)
	}
	r, err := newRestorer(o, scripts, logging.FromContext(ctx), adopted)
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
	// The tasks are r's from here: r.fail kills them. fits matched
	// r.tasks with p.tasks one to one, in order.
	for i, t := range r.tasks {
		old := p.r.tasks[i]
		t.win, t.stubOff, t.runner, t.scratchMapped, t.tr = old.win, old.stubOff, old.runner, old.scratchMapped, p.r.tr
		t.task, t.threads = old.task, old.threads
		old.task = nil
	}
	r.tr = p.r.tr
	p.r.tr = nil
	p.r.Abort() // its tracer and tasks are r's now: nothing left to kill
	if err := p.changeThreads(r); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotPrepared, r.fail("threads that appeared or ended", err))
	}
	if err := p.layout(ctx, r); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotPrepared, err)
	}
	// The pre-restore scripts after the last ErrNotPrepared: the
	// caller's restore from the images runs them again.
	if err := scripts.Run(actions.PreRestore, 0); err != nil {
		return nil, r.fail("pre-restore", err)
	}
	// Last before Finalize: signals could be sent to the tasks until now.
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

// changeThreads ends the prepared threads that ended since Prepare and
// makes those that appeared (fits) in each task. A thread ends by an
// injected exit(2) (the stub's threads hold nothing: no robust futex, no
// TID to clear); a new one is cloned with clone3's arguments in the
// window's scratch area (the puppet's stack is gone with the layout), and
// runs the stub's loop with the leader's registers until Finalize gives
// it its own, as the threads Layout makes.
func (p *Pending) changeThreads(r *Restorer) error {
	return r.tr.Do(func() error {
		for i, pt := range p.tasks {
			t := r.tasks[i]
			for _, tid := range pt.drop {
				if err := endThread(r.tr, pt.pid, tid); err != nil {
					return fmt.Errorf("task %d: %w", pt.pid, err)
				}
				t.threads = slices.DeleteFunc(t.threads, func(x int) bool { return x == tid })
				pt.tids = slices.DeleteFunc(pt.tids, func(x int) bool { return x == tid })
			}
			pt.drop = nil
			for _, tid := range pt.add {
				got, err := t.task.CloneThreadAt(tid, t.win.scratch)
				if got != 0 {
					t.threads = append(t.threads, got)
					pt.tids = append(pt.tids, got)
				}
				if err != nil {
					return fmt.Errorf("task %d: thread %d: %w", pt.pid, tid, err)
				}
			}
			pt.add = nil
		}
		return nil
	})
}

// endThread ends thread tid of prepared task pid (stopped in the stub) by
// an injected exit(2), and waits until it is gone.
func endThread(tr *ptrace.Tracer, pid, tid int) error {
	_, err := tr.InjectSyscall(tid, unix.SYS_EXIT, 0)
	if err == nil {
		return fmt.Errorf("thread %d: exit returned", tid)
	}
	if !errors.Is(err, ptrace.ErrGone) {
		return fmt.Errorf("thread %d: exit: %w", tid, err)
	}
	task := "/proc/" + strconv.Itoa(pid) + "/task/" + strconv.Itoa(tid)
	for i := 0; ; i++ {
		if _, err := os.Stat(task); err != nil {
			return nil
		}
		if i == 1000 {
			return fmt.Errorf("thread %d: still there after exit", tid)
		}
		time.Sleep(time.Millisecond)
	}
}

// maxDrained bounds the signals drainSignals takes from one thread: the
// default RLIMIT_SIGPENDING is in the tens of thousands; past this many,
// someone here keeps signalling the PID and the task is not taken over.
const maxDrained = 4096

// drainSignals takes away every signal sent to the prepared tasks on this
// host while they waited (their PIDs are visible here from Prepare on,
// every signal blocked, so they pile up pending): the restored program
// gets the final images' pending signals (Finalize), not these.
// rt_sigtimedwait with a zero timeout in each thread, until EAGAIN; a
// SIGSTOP (never blocked) the tracer took at an injection and would send
// again on detach is dropped. Fails when signals keep coming.
func (p *Pending) drainSignals(r *Restorer) error {
	return r.tr.Do(func() error {
		for i, pt := range p.tasks {
			if err := p.drainTask(r, r.tasks[i], pt); err != nil {
				return fmt.Errorf("task %d: %w", pt.pid, err)
			}
		}
		return nil
	})
}

func (p *Pending) drainTask(r *Restorer, t *taskRun, pt *pendingTask) error {
	tids := append([]int{pt.pid}, pt.tids...)
	for _, tid := range tids {
		st, err := procfs.ReadTaskStatus(pt.pid, tid)
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
		r.log.Infof("prepared task %d: thread %d: dropped %d signals sent to it here", pt.pid, tid, n)
	}
	// After every thread's calls: a SIGSTOP (or one a thread dequeued
	// while running them) is in the tracer's stash.
	for _, tid := range tids {
		sigs, err := r.tr.DropStashed(tid)
		if err != nil {
			return err
		}
		if len(sigs) > 0 {
			r.log.Infof("prepared task %d: thread %d: dropped signals %v sent to it here", pt.pid, tid, sigs)
		}
	}
	for _, tid := range tids {
		st, err := procfs.ReadTaskStatus(pt.pid, tid)
		if err != nil {
			return err
		}
		if st.SigPnd|st.ShdPnd != 0 {
			return fmt.Errorf("thread %d: signals %#x pending after draining", tid, st.SigPnd|st.ShdPnd)
		}
	}
	return nil
}

// fits refuses final images the prepared tasks cannot become exactly,
// and orders p's tasks as r's (the images' tree order).
func (p *Pending) fits(r *Restorer) error {
	if len(r.tasks) != len(p.tasks) {
		return fmt.Errorf("a tree of %d tasks, prepared %d", len(r.tasks), len(p.tasks))
	}
	if namespaceFlags(r.img.tree, r.o.JoinedNS) != 0 {
		return errors.New("a UTS or IPC namespace of its own (the prepared tasks are in godwit's)")
	}
	if r.o.RestoreSibling {
		return errors.New("--restore-sibling")
	}
	if p.tree && r.o.ShellJob {
		// The tree's sessions were made at Prepare, as the source had
		// them: --shell-job puts the root in godwit's.
		return errors.New("--shell-job for a tree")
	}
	idx := map[int]int{}
	for i, pt := range p.tasks {
		idx[pt.pid] = i
	}
	order := make([]int, len(r.tasks))
	for i, t := range r.tasks {
		j, ok := idx[t.img.pid]
		if !ok {
			return fmt.Errorf("task %d was not prepared", t.img.pid)
		}
		order[i] = j
		if err := p.fitsTask(r, t, p.tasks[j], p.r.tasks[j]); err != nil {
			return err
		}
	}
	if r.root.img.pid != p.tasks[0].pid {
		return fmt.Errorf("root %d, prepared %d", r.root.img.pid, p.tasks[0].pid)
	}
	if p.tree {
		// A session's controlling terminal is given to its leader
		// before it makes the session's other tasks (earlyCtty), which
		// inherit it: the prepared tasks were made without one.
		for _, f := range r.img.tree.Files {
			if f.Tty != nil && f.Tty.Pty != nil && f.Tty.Pty.HasMaster && f.Tty.Pty.MembersCtty && idxHas(idx, f.Tty.Pty.Sid) {
				return fmt.Errorf("session %d has a controlling terminal", f.Tty.Pty.Sid)
			}
		}
	}
	pts, runs := make([]*pendingTask, len(order)), make([]*taskRun, len(order))
	for i, j := range order {
		pts[i], runs[i] = p.tasks[j], p.r.tasks[j]
	}
	p.tasks, p.r.tasks = pts, runs
	return nil
}

func idxHas(m map[int]int, k int) bool {
	_, ok := m[k]
	return ok
}

// fitsTask refuses a task of the images that prepared task pt (run old)
// cannot become.
func (p *Pending) fitsTask(r *Restorer, t *taskRun, pt *pendingTask, old *taskRun) error {
	ti := t.img
	if ti.dead() {
		return fmt.Errorf("task %d is a zombie", ti.pid)
	}
	var tids []int
	for _, th := range ti.threads[1:] {
		tids = append(tids, th.Tid)
	}
	k := ti.task
	if err := p.sameTask(pt, k.Pid, k.Ppid, k.Sid, k.Pgid); err != nil {
		return err
	}
	pt.add, pt.drop = threadChanges(pt, tids)
	if p.tree && t != r.root {
		// Shared with the parent only by clone (CLONE_FILES, CLONE_FS):
		// the prepared children have their own.
		pk := r.img.tree.Task(k.Ppid)
		if pk != nil && (k.IDs.Files != 0 && k.IDs.Files == pk.IDs.Files || k.IDs.FS != 0 && k.IDs.FS == pk.IDs.FS) {
			return fmt.Errorf("task %d shares its fd table or fs info with its parent", k.Pid)
		}
	}
	vmas := ti.mm.VMAs
	var spec []model.VMA
	for i := range vmas {
		if special(&vmas[i]) {
			spec = append(spec, vmas[i])
		}
	}
	if !sameSpecial(spec, pt.special) {
		return fmt.Errorf("task %d: the vdso or vvar area moved", k.Pid)
	}
	w := old.win
	if overlapsAny(vmas, w.base-windowGuard, w.base+windowSize+windowGuard) {
		return fmt.Errorf("task %d: a VMA took the window %#x", k.Pid, w.base)
	}
	if pr := ti.pages; pr != nil {
		for e := range pr.Ranges() {
			if e.Flags&images.PageLazy != 0 && e.Flags&(images.PagePresent|images.PageInParent) == 0 {
				return fmt.Errorf("task %d: pages %#x-%#x left on the dumping host", k.Pid, e.Vaddr, e.End())
			}
		}
	}
	return nil
}

// layout makes r's tasks the final images' ones: a single task's
// session and group, in each task the VMAs that differ unmapped and
// mapped again, the pages written ahead but gone since zeroed, and every
// page not already in written. Fails killing the tasks (r.fail).
func (p *Pending) layout(ctx context.Context, r *Restorer) error {
	type plan struct {
		kept       map[uint64]bool
		drop       []model.VMA
		zero       [][2]uint64
		written    [][2]uint64
		pt         *pendingTask
		t          *taskRun
		mine, vmas []model.VMA
	}
	// The shared objects the final images map exactly as prepared (every
	// mapping, in every task, and the object's size) are kept, with the
	// pages the rounds wrote; the others are made again from the images.
	var pids []int
	var all [][]model.VMA
	for _, t := range r.tasks {
		pids, all = append(pids, t.img.pid), append(all, t.img.mm.VMAs)
	}
	maps, size := shmMapsOf(pids, all)
	ok := pickShared(all)
	keptShm := map[uint64]*pendingShm{}
	for id, ps := range p.shm {
		if ok[id] && size[id] == ps.size && sameShmMaps(maps[id], ps.maps) {
			keptShm[id] = ps
		} else {
			r.log.Infof("restore %d: shared object %d mapped otherwise at the switch-over: made again", r.PID(), id)
		}
	}
	plans := make([]*plan, len(r.tasks))
	for i, t := range r.tasks {
		pl := &plan{kept: map[uint64]bool{}, pt: p.tasks[i], t: t, vmas: t.img.mm.VMAs, mine: p.r.tasks[i].img.mm.VMAs}
		for j := range pl.mine {
			c := &pl.mine[j]
			if special(c) {
				pl.kept[c.Start] = true
				continue
			}
			if k := slices.IndexFunc(pl.vmas, func(v model.VMA) bool { return sameVMA(c, &v) }); k >= 0 &&
				(prepared(&pl.vmas[k]) || pl.vmas[k].SharedAnon() && keptShm[pl.vmas[k].Shmid] != nil) {
				pl.kept[c.Start] = true
			} else {
				pl.drop = append(pl.drop, *c)
			}
		}
		pl.written = pl.pt.written
		for _, c := range pl.drop {
			pl.written = subRange(pl.written, c.Start, c.End)
		}
		// Pages of kept VMAs the final pagemap no longer lists were
		// dropped (MADV_DONTNEED, or never there): zero.
		var listed [][2]uint64
		if pr := t.img.pages; pr != nil {
			for e := range pr.Ranges() {
				listed = addRange(listed, e.Vaddr, e.End())
			}
		}
		pl.zero = pl.written
		for _, l := range listed {
			pl.zero = subRange(pl.zero, l[0], l[1])
		}
		plans[i] = pl
	}
	t0 := time.Now()
	// In tree order, on one tracer: a shared anonymous object is made by
	// the first task that maps it and opened by the later ones (shmAt).
	err := r.tr.Do(func() error {
		if !p.tree {
			if err := r.grow(r.root, map[int][]*taskRun{}); err != nil {
				return err
			}
		}
		// A tree's groups were made at Prepare: this checks them (and
		// every session) against the images.
		if err := r.setGroups(); err != nil {
			return err
		}
		for _, pl := range plans {
			if err := pl.t.relayout(pl.drop, pl.zero, pl.kept); err != nil {
				return fmt.Errorf("task %d: %w", pl.t.img.pid, err)
			}
		}
		return nil
	})
	if err != nil {
		return r.fail("layout onto the prepared task", err)
	}
	r.forkTime = time.Since(t0)
	r.phase = phaseLaidOut
	// The pages: every page not in written (through the chain), and the
	// final delta over written.
	before := uint64(0)
	for _, t := range r.tasks {
		before += t.pagesRestored
	}
	var failed *taskRun
	err = r.tr.Do(func() error {
		for _, pl := range plans {
			if err := pl.t.fillOnto(ctx, pl.written, keptShm); err != nil {
				failed = pl.t
				return err
			}
		}
		return nil
	})
	for _, t := range r.tasks {
		p.final += t.pagesRestored
	}
	p.final -= before
	if err != nil {
		return r.fail(fmt.Sprintf("task %d: fill pages", failed.img.pid), err)
	}
	return nil
}

// relayout unmaps drop, zeroes zero and maps every VMA of the images kept
// does not name, in one injection session; kept VMAs get their final
// protection in Finalize.
func (t *taskRun) relayout(drop []model.VMA, zero [][2]uint64, kept map[uint64]bool) error {
	s, err := t.begin(t.img.pid)
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
		// mprotect'ed as a whole is kept): Finalize gives every one its
		// final protection, whatever it was mapped with.
		vmas := t.img.mm.VMAs
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
}

// fillOnto writes the task's pages of the final images but those the
// rounds wrote (written), which the chain resolves to the same data, and
// over written the final delta; then its shared anonymous memory, kept
// objects (kept) as their private memory.
func (t *taskRun) fillOnto(ctx context.Context, written [][2]uint64, kept map[uint64]*pendingShm) error {
	if err := t.fillPrivateOnto(ctx, written); err != nil {
		return err
	}
	return t.fillSharedOnto(kept)
}

func (t *taskRun) fillPrivateOnto(ctx context.Context, written [][2]uint64) error {
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
	return t.fillPages(interruptibleSource(ctx, bsrc))
}

// fillSharedOnto fills the shared anonymous objects this task makes (the
// images' owner of each), whole, through the object's file: a kept object
// gets the pages of the final images the rounds did not write, the final
// delta over those they did, and the pages written but no longer listed
// removed; the others all their pages (fillShmem).
func (t *taskRun) fillSharedOnto(kept map[uint64]*pendingShm) error {
	skip := map[uint64]bool{}
	for id := range kept {
		skip[id] = true
	}
	if err := t.fillShmemBut(skip); err != nil {
		return err
	}
	for _, v := range t.ownShmem() {
		ps := kept[v.Shmid]
		if ps == nil {
			continue
		}
		pr := t.img.shmem[v.Shmid]
		// Written but not in the final pagemap: gone since (zero).
		zero := ps.written
		if pr != nil {
			for e := range pr.Ranges() {
				zero = subRange(zero, e.Vaddr, e.End())
			}
		}
		var srcs []pagexfer.Source
		if c := t.img.shmChain[v.Shmid]; c != nil {
			delta := &clippedSource{pr: pr}
			for e := range pr.Ranges() {
				if e.Present() {
					delta.runs = appendRuns(delta.runs, e, interRanges([][2]uint64{{e.Vaddr, e.End()}}, ps.written))
				}
			}
			srcs = append(srcs, c.SourceExcept(ps.written), delta)
		} else if pr != nil {
			srcs = append(srcs, pagexfer.NewImageSource(pr))
		}
		if err := t.fillShmemObject(v, zero, srcs...); err != nil {
			return err
		}
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
