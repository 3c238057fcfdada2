package restorer

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"godwit/internal/model"
	"godwit/internal/turns"
	"golang.org/x/sys/unix"

	"godwit/internal/drivers"
	"godwit/internal/images"
	"godwit/internal/inject"
	"godwit/internal/procfs"
	"godwit/internal/ptrace"
	"godwit/internal/puppet"
)

// The window is where godwit's own pages live in the task while it is
// built: the puppet's code (whose syscall instruction every injection
// uses), a scratch area for syscall arguments, and a bounce area for
// moving the vDSO. It lies outside every dumped VMA and is unmapped before
// the task resumes.
const (
	scratchOff  = 16 * pageSize
	scratchSize = 16 * pageSize
	bounceOff   = 32 * pageSize
	bounceSize  = 16 * pageSize
	windowSize  = 48 * pageSize
	windowGuard = 16 * pageSize // kept free around the window
	windowAlign = 1 << 16
)

type window struct {
	base, scratch, bounce uint64
}

// pickWindow chooses the lowest window address clear of every dumped VMA.
func pickWindow(vmas []model.VMA) (window, error) {
	// Nothing may be mapped below vm.mmap_min_addr (0x10000 by default,
	// higher on some hardened hosts): the stub cannot load there.
	low := uint64(puppet.DefaultBase)
	if b, err := os.ReadFile("/proc/sys/vm/mmap_min_addr"); err == nil {
		if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil {
			low = max(low, (n+windowAlign-1)&^(windowAlign-1))
		}
	}
	cands := []uint64{low, 1 << 24, 1 << 30, 1 << 32}
	for _, v := range vmas {
		cands = append(cands, (v.End+windowGuard+windowAlign-1)&^(windowAlign-1))
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i] < cands[j] })
	for _, c := range cands {
		lo, hi := c-windowGuard, c+windowSize+windowGuard
		if c < low || hi > taskSize>>1 {
			continue
		}
		if !overlapsAny(vmas, lo, hi) {
			return window{base: c, scratch: c + scratchOff, bounce: c + bounceOff}, nil
		}
	}
	return window{}, fmt.Errorf("no free %d KiB window for the puppet below %#x", windowSize>>10, uint64(taskSize>>1))
}

func overlapsAny(vmas []model.VMA, lo, hi uint64) bool {
	for _, v := range vmas {
		if v.Start < hi && lo < v.End {
			return true
		}
	}
	return false
}

// vmaProt is a VMA whose protection Finalize must set.
type vmaProt struct {
	start, end uint64
	prot       uint32
}

// Layout starts the puppet, makes every task of the tree with its
// original PID, parent, session and process group (createTree), then,
// task by task, empties its address space but for the window, moves the
// vDSO to the dumped place and maps every dumped VMA. Private VMAs are
// mapped writable so that pages can be filled; Finalize sets their dumped
// protection.
func (r *Restorer) Layout() error {
	if err := r.need(phaseNew, "layout"); err != nil {
		return err
	}
	// One window for the whole tree: every task is a copy of the
	// first puppet, its code at the same place.
	var all []model.VMA
	for _, t := range r.tasks {
		if t.img.mm != nil {
			all = append(all, t.img.mm.VMAs...)
		}
	}
	win, err := pickWindow(all)
	if err != nil {
		return r.fail("layout", err)
	}
	r.tr = ptrace.New()
	p, err := puppet.Start(puppet.Options{Tracer: r.tr, Base: win.base, Sibling: r.o.RestoreSibling})
	if err != nil {
		return r.fail("start puppet", err)
	}
	// Batches need the runner; without it (an error here) every call is
	// injected alone, as correct and slower.
	runner := mapRunner(r.tr, p.Pid, win)
	if runner != nil {
		r.log.Warnf("restore: %v: injecting calls one by one", runner)
	}
	// The scratch area too, once: every task inherits it (else each
	// maps its own in its layout, at two stops).
	scratch := mapScratch(r.tr, p.Pid, win)
	if scratch != nil {
		r.log.Warnf("restore: %v: each task maps its own", scratch)
	}
	for _, t := range r.tasks {
		t.win = win
		t.stubOff = p.SyscallAddr - win.base
		t.runner = runner == nil
		t.scratchMapped = scratch == nil
		t.tr = r.tr
	}
	// On the tracer thread: each ptrace call of the tree's creation
	// runs inline, with no cross-thread wake-up apiece (dearer than the
	// call itself on a loaded machine). r.fail (which closes the
	// tracer) runs after, off it.
	step := "create tasks"
	t0 := time.Now()
	err = r.tr.Do(func() error {
		err := r.createTree(p)
		if kerr := p.Kill(); kerr != nil && err == nil {
			err = fmt.Errorf("kill puppet %d: %w", p.Pid, kerr)
		}
		if err == nil {
			err = r.buryZombies()
		}
		if err != nil {
			return err
		}
		// Threads too, at once: the longer a free TID waits, the likelier
		// another process takes it (pid_max wraps fast on a busy host).
		for _, t := range r.tasks {
			if t.img.dead() {
				continue
			}
			if err := t.makeThreads(); err != nil {
				step = fmt.Sprintf("task %d: threads", t.img.pid)
				return err
			}
		}
		return nil
	})
	if err == nil {
		step = "hand tasks to tracers"
		err = r.spread()
	}
	if err != nil {
		return r.fail(step, err)
	}
	r.forkTime = time.Since(t0)
	// Each task on its own tracer's thread, the tracers at once; the
	// tasks that make or take an object another maps, or share their
	// fd table or fs info, in tree order (their turn).
	if t, err := r.eachTask(func(t *taskRun, ts *turns.Turns) error {
		if t.layoutShares() || r.sharesTables(t) {
			if err := ts.Enter(t.idx); err != nil {
				return err
			}
			defer ts.Leave(t.idx)
		}
		s, err := t.begin(t.img.pid)
		if err != nil {
			return err
		}
		return s.End(t.layout(s))
	}); err != nil {
		return r.fail(fmt.Sprintf("task %d: layout", t.img.pid), err)
	}
	r.phase = phaseLaidOut
	return nil
}

func (r *taskRun) layout(s *session) error {
	pid := r.img.pid
	if !r.scratchMapped { // else inherited from the first puppet
		if _, err := s.Call(fmt.Sprintf("map scratch %#x", r.win.scratch), unix.SYS_MMAP, r.win.scratch, scratchSize,
			unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED_NOREPLACE, ^uint64(0), 0); err != nil {
			return err
		}
		r.scratchMapped = true
	}
	if r.runner {
		s.SetBatch(r.win.base+runnerOff, batchTableOff)
	}
	maps, err := procfs.ReadMaps(pid)
	if err != nil {
		return err
	}
	var special []procfs.Mapping
	b := &batch{s: s}
	for _, m := range maps {
		switch {
		case m.Start >= r.win.base && m.End <= r.win.base+windowSize:
			continue // ours
		case m.Path == "[vdso]" || m.Path == "[vvar]" || m.Path == "[vvar_vclock]":
			special = append(special, m)
			continue
		case m.Path == "[vsyscall]":
			continue // fixed by the kernel, not unmappable
		}
		b.add(inject.C(fmt.Sprintf("unmap puppet's %#x-%#x %s", m.Start, m.End, m.Path),
			unix.SYS_MUNMAP, m.Start, m.End-m.Start), nil)
	}
	// The unmaps, the vDSO's moves and the files' opens are one batch
	// (mapVMAs runs it): one stop.
	if err := r.queueVdso(b, special); err != nil {
		return err
	}
	if err := r.mapVMAs(s, b); err != nil {
		return err
	}
	r.log.Infof("restore %d: %d VMAs laid out", pid, len(r.img.mm.VMAs))
	return nil
}

// moveVdso moves the puppet's [vvar], [vvar_vclock] and [vdso] together to
// where the dumped task had them (same kernel: same sizes and offsets).
func (r *taskRun) moveVdso(s *session, special []procfs.Mapping) error {
	b := &batch{s: s}
	if err := r.queueVdso(b, special); err != nil {
		return err
	}
	return b.flush()
}

// queueVdso queues moveVdso's calls in b.
func (r *taskRun) queueVdso(b *batch, special []procfs.Mapping) error {
	var dvdso *model.VMA
	var dvvar []*model.VMA
	for i := range r.img.mm.VMAs {
		v := &r.img.mm.VMAs[i]
		switch {
		case v.Status&images.VmaAreaVdso != 0:
			dvdso = v
		case v.Status&images.VmaAreaVvar != 0:
			dvvar = append(dvvar, v)
		}
	}
	var pv *procfs.Mapping
	for i := range special {
		if special[i].Path == "[vdso]" {
			pv = &special[i]
		}
	}
	if dvdso == nil || pv == nil {
		// The dumped task had no vDSO (or we have none): drop ours.
		for _, m := range special {
			b.add(inject.C(fmt.Sprintf("unmap puppet's %s", m.Path), unix.SYS_MUNMAP, m.Start, m.End-m.Start), nil)
		}
		if dvdso != nil {
			return fmt.Errorf("vdso %#x-%#x: this kernel maps no vdso", dvdso.Start, dvdso.End)
		}
		return nil
	}
	if dvdso.End-dvdso.Start != pv.End-pv.Start {
		return fmt.Errorf("vdso %#x-%#x: %d bytes here, %d in the images (another kernel?)",
			dvdso.Start, dvdso.End, pv.End-pv.Start, dvdso.End-dvdso.Start)
	}
	delta := dvdso.Start - pv.Start // modular arithmetic: may "wrap"
	lo, hi := special[0].Start, special[0].End
	// The vvar areas must cover exactly what the images' do, though
	// CRIU (and godwit's images since) record [vvar] and [vvar_vclock]
	// as one area: each lands inside one, and the sizes add up.
	var dumped, here uint64
	for _, v := range dvvar {
		dumped += v.End - v.Start
	}
	for _, m := range special {
		lo, hi = min(lo, m.Start), max(hi, m.End)
		if m.Path == "[vdso]" {
			continue
		}
		s, e := m.Start+delta, m.End+delta
		inside := false
		for _, v := range dvvar {
			inside = inside || v.Start <= s && e <= v.End
		}
		if !inside {
			return fmt.Errorf("vdso at %#x: %s would land at %#x-%#x, where the images have no vvar area (another kernel?)",
				dvdso.Start, m.Path, s, e)
		}
		here += m.End - m.Start
	}
	if here != dumped {
		return fmt.Errorf("vvar areas of the images span %d bytes, %d on this kernel (another kernel?)", dumped, here)
	}
	if delta == 0 {
		return nil
	}
	// The moves are batched: each lands where asked or fails.
	move := func(from, to uint64, m procfs.Mapping) error {
		what := fmt.Sprintf("move %s %#x to %#x", m.Path, from, to)
		b.add(inject.C(what, unix.SYS_MREMAP, from, m.End-m.Start, m.End-m.Start, unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, to),
			func(ret uint64, err error) error {
				if err == nil && ret != to {
					err = fmt.Errorf("%s: moved to %#x", what, ret)
				}
				return err
			})
		return nil
	}
	nlo, nhi := lo+delta, hi+delta
	if nlo < hi && lo < nhi {
		// Source and target overlap, which mremap refuses: go through
		// the bounce area.
		if hi-lo > runnerOff-bounceOff {
			return fmt.Errorf("vdso areas span %d bytes, bounce area is %d", hi-lo, runnerOff-bounceOff)
		}
		for i, m := range special {
			to := r.win.bounce + (m.Start - lo)
			if err := move(m.Start, to, m); err != nil {
				return err
			}
			special[i].End, special[i].Start = to+(m.End-m.Start), to
		}
		delta = dvdso.Start - pv.Start // pv points into special: moved
	}
	for _, m := range special {
		if err := move(m.Start, m.Start+delta, m); err != nil {
			return err
		}
	}
	return nil
}

// mapVMAs maps every dumped VMA but the kernel's special ones, after the
// calls queued in first.
func (r *taskRun) mapVMAs(s *session, first *batch) error {
	r.writable = map[uint64]bool{}
	fds := map[model.ID]uint64{} // file id → fd in the task, for this layout
	shmFds := map[uint64]uint64{}
	// closeAll queues the closes of every fd opened here (on success in
	// the last batch of mmaps, on failure in one of their own).
	closeAll := func(b *batch) {
		for _, fd := range fds {
			b.add(inject.C("close", unix.SYS_CLOSE, fd), func(uint64, error) error { return nil })
		}
		for _, fd := range shmFds {
			b.add(inject.C("close", unix.SYS_CLOSE, fd), func(uint64, error) error { return nil })
		}
		clear(fds)
		clear(shmFds)
	}
	defer func() {
		b := &batch{s: s}
		closeAll(b)
		_ = b.flush()
	}()
	if err := r.openFiles(first, fds); err != nil {
		return err
	}
	// A shared anonymous object mapped more than once, or not from its
	// start, is made once at its full size and each VMA maps it; one
	// mapped by several tasks is made by the first and opened by the
	// others through its map_files link there.
	shmSize, shmCount := r.img.shmSize, map[uint64]int{}
	for i := range r.img.mm.VMAs {
		v := &r.img.mm.VMAs[i]
		if v.Status&images.VmaAnonShared != 0 {
			id := v.Shmid
			shmCount[id]++
			if v.Pgoff != 0 || r.shmShared[id] {
				shmCount[id]++
			}
		}
	}
	// The mmaps and madvises go in batches, run before any call whose
	// result is needed (an open may map, and may open a mapping made
	// here) and at the end.
	b := &batch{s: s}
	for i := range r.img.mm.VMAs {
		v := &r.img.mm.VMAs[i]
		st := v.Status
		if st&(images.VmaAreaVdso|images.VmaAreaVvar|images.VmaAreaVsyscall) != 0 || r.keep[v.Start] {
			continue
		}
		start, size := v.Start, v.End-v.Start
		what := fmt.Sprintf("mmap vma %#x-%#x (%s)", v.Start, v.End, vmaKind(v))
		flags := uint64(v.Flags) & (unix.MAP_SHARED | unix.MAP_PRIVATE | unix.MAP_ANONYMOUS |
			unix.MAP_GROWSDOWN | unix.MAP_NORESERVE | unix.MAP_LOCKED)
		flags |= unix.MAP_FIXED_NOREPLACE
		prot := v.Prot
		fd := ^uint64(0)
		off := uint64(0)
		switch {
		case st&(images.VmaFilePrivate|images.VmaFileShared) != 0:
			id := model.ID(v.Shmid)
			f, ok := fds[id]
			if !ok {
				if err := b.flush(); err != nil {
					return err
				}
				oflags := int(v.Fdflags)&unix.O_ACCMODE | unix.O_CLOEXEC
				var err error
				if mf := r.img.tree.Files[id]; mf != nil && mf.Kind == model.Ghost {
					f, err = r.openGhost(s, what, mf, oflags)
				} else if mf != nil && mf.Kind == model.Memfd {
					f, err = r.openMemfd(s, what, mf, oflags)
				} else {
					f, err = s.Openat(what, r.img.filePath(id), oflags)
				}
				if err != nil {
					return err
				}
				if want, ok := r.validated[id]; ok {
					if err := drivers.VerifyOpened(r.img.pid, f, r.img.filePath(id), want); err != nil {
						return fmt.Errorf("%s: %w", what, err)
					}
				}
				fds[id] = f
			}
			fd, off = f, v.Pgoff
			flags &^= unix.MAP_ANONYMOUS
			if st&images.VmaFilePrivate != 0 {
				flags = flags&^unix.MAP_SHARED | unix.MAP_PRIVATE
			} else {
				flags = flags&^unix.MAP_PRIVATE | unix.MAP_SHARED
			}
		case st&images.VmaAnonShared != 0:
			flags = flags&^unix.MAP_PRIVATE | unix.MAP_SHARED | unix.MAP_ANONYMOUS
			if id := v.Shmid; shmCount[id] > 1 {
				f, ok := shmFds[id]
				if !ok {
					if err := b.flush(); err != nil {
						return err
					}
					var err error
					if at, ok := r.shmAt[id]; ok {
						// Made by an earlier task of the tree.
						f, err = s.Openat(what, fmt.Sprintf("/proc/%d/map_files/%x-%x", at.pid, at.start, at.end), unix.O_RDWR|unix.O_CLOEXEC)
					} else {
						f, err = shmObject(s, what, shmSize[id])
					}
					if err != nil {
						return err
					}
					shmFds[id] = f
				}
				fd, off = f, v.Pgoff
				flags &^= unix.MAP_ANONYMOUS
			}
		case v.SysV():
			if err := b.flush(); err != nil {
				return err
			}
			if err := r.attachSysV(s, v, what); err != nil {
				return err
			}
			r.madvise(b, v)
			continue
		case v.HugePage != 0:
			// Private anonymous hugetlb, in pages of the dumped size
			// (MAP_HUGE_SHIFT: log2 of the size).
			flags = flags&^unix.MAP_SHARED | unix.MAP_PRIVATE | unix.MAP_ANONYMOUS | unix.MAP_HUGETLB |
				uint64(bits.TrailingZeros64(v.HugePage))<<unix.MAP_HUGE_SHIFT
		case v.Droppable:
			// MAP_DROPPABLE is a map type of its own (6.11+).
			flags = flags&^(unix.MAP_SHARED|unix.MAP_PRIVATE) | unix.MAP_DROPPABLE | unix.MAP_ANONYMOUS
		default:
			flags = flags&^unix.MAP_SHARED | unix.MAP_PRIVATE | unix.MAP_ANONYMOUS
		}
		// Pages are written from outside, which needs write access to
		// private (and shared anonymous) memory; shared file memory is
		// the file's and gets no pages.
		// Pages are written from outside, which needs write access:
		// VMAs that get pages are mapped writable until Finalize (it
		// also makes them accountable, as a once-written private
		// mapping is); the others get their protection at once.
		mapProt := prot
		if st&images.VmaFileShared == 0 && r.getsPages(v) {
			mapProt |= unix.PROT_READ | unix.PROT_WRITE
		}
		huge := v.HugePage
		b.add(inject.C(what, unix.SYS_MMAP, start, size, uint64(mapProt), flags, fd, off), func(ret uint64, err error) error {
			if err != nil {
				if en, ok := errnoOf(err); ok && en == unix.ENOMEM && huge != 0 {
					return fmt.Errorf("%s: no %d kB huge pages free here (vm.nr_hugepages, vm.nr_overcommit_hugepages): %w", what, huge>>10, err)
				}
				return err
			}
			if ret != start {
				return fmt.Errorf("%s: mapped at %#x", what, ret)
			}
			return nil
		})
		if mapProt != prot {
			r.protFix = append(r.protFix, vmaProt{start: start, end: v.End, prot: prot})
		}
		if mapProt&unix.PROT_WRITE != 0 {
			r.writable[start] = true
		}
		if mf := r.img.tree.Files[model.ID(v.Shmid)]; st&(images.VmaFilePrivate|images.VmaFileShared) != 0 && mf != nil {
			var key [2]uint64
			switch {
			case mf.Kind == model.Ghost && mf.Ghost != nil:
				key = [2]uint64{mf.Ghost.Dev, mf.Ghost.Ino}
			case mf.Kind == model.Memfd && mf.Memfd != nil:
				key = [2]uint64{mf.Memfd.Dev, mf.Memfd.Ino}
			}
			// Only a ghost or memfd mapping touches the map: other
			// tasks' layouts may run at once (layoutShares).
			if key != [2]uint64{} {
				if _, ok := r.ghostAt[key]; !ok {
					r.ghostAt[key] = shmMapping{pid: r.img.pid, start: v.Start, end: v.End}
				}
			}
		}
		if st&images.VmaAnonShared != 0 {
			if _, ok := r.shmAt[v.Shmid]; !ok {
				r.shmAt[v.Shmid] = shmMapping{pid: r.img.pid, start: v.Start, end: v.End}
			}
		}
		r.madvise(b, v)
	}
	closeAll(b)
	return b.flush()
}

// openFiles opens, in batch b (run here, with what it already holds),
// the plain files (not deleted, not memfd) the task maps, each with the
// access mode of its first mapping, into fds. Files whose paths do not
// fit in the scratch area together are left to mapVMAs, which opens them
// one by one.
func (r *taskRun) openFiles(b *batch, fds map[model.ID]uint64) error {
	s := b.s
	var ids []model.ID
	var whats []string
	off := uint64(0)
	for i := range r.img.mm.VMAs {
		v := &r.img.mm.VMAs[i]
		if v.Status&(images.VmaAreaVdso|images.VmaAreaVvar|images.VmaAreaVsyscall) != 0 ||
			v.Status&(images.VmaFilePrivate|images.VmaFileShared) == 0 {
			continue
		}
		id := model.ID(v.Shmid)
		if slices.Contains(ids, id) {
			continue
		}
		if mf := r.img.tree.Files[id]; mf != nil && (mf.Kind == model.Ghost || mf.Kind == model.Memfd) {
			continue
		}
		path := r.img.filePath(id)
		if off+uint64(len(path))+1 > batchTableOff {
			break
		}
		a, err := s.PutString(off, path)
		if err != nil {
			return err
		}
		off += uint64(len(path)) + 1
		what := fmt.Sprintf("mmap vma %#x-%#x (%s): open %s", v.Start, v.End, vmaKind(v), path)
		oflags := uint64(int(v.Fdflags)&unix.O_ACCMODE | unix.O_CLOEXEC)
		b.add(inject.C(what, unix.SYS_OPENAT, atFdcwd, a, oflags, 0), func(ret uint64, err error) error {
			if err == nil {
				fds[id] = ret
			}
			return err
		})
		ids = append(ids, id)
		whats = append(whats, what)
	}
	if err := b.flush(); err != nil {
		return err
	}
	for i, id := range ids {
		if want, ok := r.validated[id]; ok {
			if err := drivers.VerifyOpened(r.img.pid, fds[id], r.img.filePath(id), want); err != nil {
				return fmt.Errorf("%s: %w", whats[i], err)
			}
		}
	}
	return nil
}

// atFdcwd is AT_FDCWD (-100) as a syscall argument.
const atFdcwd = ^uint64(99)

// madvise queues the VMA's madvise bits (1 << MADV_x).
func (r *taskRun) madvise(b *batch, v *model.VMA) {
	m := v.Madv
	for bit := 0; m != 0 && bit < 64; bit++ {
		if m&(1<<bit) == 0 {
			continue
		}
		m &^= 1 << bit
		b.add(inject.C(fmt.Sprintf("madvise vma %#x-%#x advice %d", v.Start, v.End, bit),
			unix.SYS_MADVISE, v.Start, v.End-v.Start, uint64(bit)), func(_ uint64, err error) error {
			if en, ok := errnoOf(err); ok && en == unix.EINVAL && bit == unix.MADV_MERGEABLE {
				r.log.Warnf("restore: %v (KSM not available)", err)
				return nil
			}
			return err
		})
	}
}

// le64 appends v little-endian.
func le64(b []byte, v uint64) []byte { return binary.LittleEndian.AppendUint64(b, v) }

// getsPages reports whether the images hold pages for v.
func (r *taskRun) getsPages(v *model.VMA) bool {
	if v.Status&images.VmaAnonShared != 0 {
		// A prepared object gets its pages later, from the rounds.
		return r.prepared || r.img.shmem[v.Shmid] != nil
	}
	pr := r.img.pages
	if pr == nil {
		// A prepared task gets its pages later, from the rounds.
		return r.prepared && v.Private()
	}
	lo, hi := 0, pr.Len()
	for lo < hi { // first range ending above v's start
		m := (lo + hi) / 2
		if pr.Range(m).End() <= v.Start {
			lo = m + 1
		} else {
			hi = m
		}
	}
	for i := lo; i < pr.Len() && pr.Range(i).Vaddr < v.End; i++ {
		if pr.Range(i).Flags&(images.PagePresent|images.PageInParent) != 0 {
			return true
		}
	}
	return false
}

// ensureWritable makes the private VMAs under [vaddr, vaddr+size)
// writable for pages that come from a source other than the images Layout
// saw (a migration's later rounds); Finalize restores their protection.
func (r *taskRun) ensureWritable(s *session, vaddr, size uint64) error {
	for i := range r.img.mm.VMAs {
		v := &r.img.mm.VMAs[i]
		if v.End <= vaddr || v.Start >= vaddr+size || r.writable[v.Start] {
			continue
		}
		if s == nil {
			ns, err := r.begin(r.img.pid)
			if err != nil {
				return err
			}
			if err := ns.End(r.ensureWritable(ns, vaddr, size)); err != nil {
				return err
			}
			return nil
		}
		if _, err := s.Call(fmt.Sprintf("make vma %#x-%#x writable", v.Start, v.End), unix.SYS_MPROTECT,
			v.Start, v.End-v.Start, uint64(v.Prot|unix.PROT_READ|unix.PROT_WRITE)); err != nil {
			return err
		}
		r.writable[v.Start] = true
		r.protFix = append(r.protFix, vmaProt{start: v.Start, end: v.End, prot: v.Prot})
	}
	return nil
}

// attachSysV attaches the SysV shared memory segment v maps (made in the
// tree's IPC namespace before any task runs: restoreNamespaces) where the
// kernel likes, keeps only v's part of it and moves that to v's address:
// one VMA, which the segment counts as one attach, as dumped.
func (r *taskRun) attachSysV(s *session, v *model.VMA, what string) error {
	var seg uint64
	if ns := r.img.tree.IPC; ns != nil {
		for _, sh := range ns.Shm {
			if uint64(uint32(sh.Desc.ID)) == v.Shmid {
				seg = (sh.Size + pageSize - 1) &^ (pageSize - 1)
			}
		}
	}
	size := v.End - v.Start
	if seg == 0 || v.Pgoff > seg || size > seg-v.Pgoff {
		return fmt.Errorf("%s: no SysV shm segment %d holding it in the dump", what, v.Shmid)
	}
	flg, prot := uint64(0), uint32(unix.PROT_READ|unix.PROT_WRITE)
	if v.Fdflags&unix.O_ACCMODE == unix.O_RDONLY {
		flg, prot = unix.SHM_RDONLY, unix.PROT_READ
	}
	at, err := s.Call(what+": shmat", unix.SYS_SHMAT, v.Shmid, 0, flg)
	if err != nil {
		return err
	}
	if v.Pgoff > 0 {
		if _, err := s.Call(what+": unmap the segment's head", unix.SYS_MUNMAP, at, v.Pgoff); err != nil {
			return err
		}
	}
	if tail := seg - v.Pgoff - size; tail > 0 {
		if _, err := s.Call(what+": unmap the segment's tail", unix.SYS_MUNMAP, at+v.Pgoff+size, tail); err != nil {
			return err
		}
	}
	if at+v.Pgoff != v.Start {
		got, err := s.Call(what+": move", unix.SYS_MREMAP, at+v.Pgoff, size, size, unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, v.Start)
		if err != nil {
			return err
		}
		if got != v.Start {
			return fmt.Errorf("%s: moved to %#x", what, got)
		}
	}
	if prot != v.Prot {
		if _, err := s.Call(what+": mprotect", unix.SYS_MPROTECT, v.Start, size, uint64(v.Prot)); err != nil {
			return err
		}
	}
	return nil
}

// shmObject makes a shared anonymous object of size bytes in the task and
// returns an fd to it: mapped anywhere, opened through map_files (root
// may), unmapped again.
func shmObject(s *session, what string, size uint64) (uint64, error) {
	tmp, err := s.Call(what+": shared object", unix.SYS_MMAP, 0, size, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_SHARED|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		return 0, err
	}
	fd, err := s.Openat(what, fmt.Sprintf("/proc/self/map_files/%x-%x", tmp, tmp+size), unix.O_RDWR|unix.O_CLOEXEC)
	if _, uerr := s.Call(what+": unmap shared object", unix.SYS_MUNMAP, tmp, size); uerr != nil && err == nil {
		err = uerr
	}
	return fd, err
}

// openMemfd opens the memfd mf in the task for a mapping, with oflags:
// from where an earlier mapping of the tree has it (one inode for all, as
// dumped), else made again (drivers.MakeMemfd, seals on) and reopened
// with the mapping's access mode, which VM_MAYWRITE follows.
func (r *taskRun) openMemfd(s *session, what string, mf *model.File, oflags int) (uint64, error) {
	if mf.Memfd == nil {
		return 0, fmt.Errorf("%s: memfd %s without its state", what, mf.Path)
	}
	if at, ok := r.ghostAt[[2]uint64{mf.Memfd.Dev, mf.Memfd.Ino}]; ok {
		return s.Openat(what, fmt.Sprintf("/proc/%d/map_files/%x-%x", at.pid, at.start, at.end), oflags)
	}
	held, tfd, err := drivers.MakeMemfd(s, what, mf)
	if err != nil {
		return 0, err
	}
	unix.Close(held)
	if oflags&unix.O_ACCMODE == unix.O_RDWR {
		return tfd, nil
	}
	f, err := s.Openat(what, fmt.Sprintf("/proc/self/fd/%d", tfd), oflags)
	if _, cerr := s.Call(what+": close", unix.SYS_CLOSE, tfd); cerr != nil && err == nil {
		s.Call("close", unix.SYS_CLOSE, f)
		err = cerr
	}
	return f, err
}

// openGhost opens the deleted file mf in the task for a mapping, with
// oflags: from where an earlier mapping of the tree has it (one file for
// all, as dumped), else made again as a deleted file's fd is
// (drivers.MakeGhost) and reopened with the mapping's access mode.
func (r *taskRun) openGhost(s *session, what string, mf *model.File, oflags int) (uint64, error) {
	if mf.Ghost == nil {
		return 0, fmt.Errorf("%s: deleted file %s without its contents", what, mf.Path)
	}
	if at, ok := r.ghostAt[[2]uint64{mf.Ghost.Dev, mf.Ghost.Ino}]; ok {
		return s.Openat(what, fmt.Sprintf("/proc/%d/map_files/%x-%x", at.pid, at.start, at.end), oflags)
	}
	held, tfd, err := drivers.MakeGhost(s, what, mf)
	if err != nil {
		return 0, err
	}
	unix.Close(held)
	if oflags&unix.O_ACCMODE == unix.O_RDWR {
		return tfd, nil
	}
	// The mapping's own access mode (VM_MAYWRITE follows it).
	f, err := s.Openat(what, fmt.Sprintf("/proc/self/fd/%d", tfd), oflags)
	if _, cerr := s.Call(what+": close", unix.SYS_CLOSE, tfd); cerr != nil && err == nil {
		s.Call("close", unix.SYS_CLOSE, f)
		err = cerr
	}
	return f, err
}
