package criuimg

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mm"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pstree"

	"godwit/internal/images"
	"godwit/internal/ptrace"
)

// CheckCRIU checks the images in d against the invariants CRIU 4.x's
// restore enforces on what godwit writes (found in CRIU's documentation
// and source, read for facts): each broken one is a line of the error.
// It is stricter than Read, which also takes older and godwit-only
// layouts: a dump that passes Read but fails here restores with godwit
// and not with CRIU.
func CheckCRIU(d *images.Dir) error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	inv, err := images.ReadInventory(d)
	if err != nil {
		return err
	}
	if !inv.GetFdinfoPerId() {
		bad("%s: fdinfo_per_id unset (CRIU: too old image)", images.InventoryImg)
	}
	root := inv.GetRootIds()
	if root == nil {
		bad("%s: no root_ids", images.InventoryImg)
	}
	pss, err := images.ReadAll[*pstree.PstreeEntry](d, images.PstreeImg)
	if err != nil {
		return err
	}
	if len(pss) == 0 {
		return fmt.Errorf("%s: no task", images.PstreeImg)
	}
	files, err := images.ReadAll[*fdinfo.FileEntry](d, images.FilesImg)
	if err != nil {
		return err
	}
	fileIDs := map[uint32]bool{}
	names, err := d.List()
	if err != nil {
		return err
	}
	mounts := slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(n, "mountpoints-") })
	for _, f := range files {
		fileIDs[f.GetId()] = true
		if r := f.GetReg(); r != nil && r.MntId != nil && r.GetMntId() != -1 && !mounts {
			bad("%s: file %d (%s): mnt_id %d without dumped mounts (CRIU looks it up among them: a deleted file's remap fails)", images.FilesImg, f.GetId(), r.GetName(), r.GetMntId())
		}
	}
	fdTables := map[uint32]bool{}
	for i, ps := range pss {
		pid := ps.GetPid()
		if leader, err := images.ReadOne[*criu_core.CoreEntry](d, images.CoreImg(int(pid))); err == nil &&
			leader.GetTc().GetTaskState() == images.TaskDead {
			// A zombie: CRIU's restore needs only its tc (state,
			// exit code); it has no registers, ids, fds or mm
			// (cr-restore.c, files.c). CRIU itself writes its
			// threads as [0].
			continue
		}
		if len(ps.GetThreads()) == 0 || ps.GetThreads()[0] != pid {
			bad("%s: task %d: threads %v do not start with the leader", images.PstreeImg, pid, ps.GetThreads())
		}
		var ids *criu_core.TaskKobjIdsEntry
		for j, tid := range ps.GetThreads() {
			name := images.CoreImg(int(tid))
			c, err := images.ReadOne[*criu_core.CoreEntry](d, name)
			if err != nil {
				bad("%v", err)
				continue
			}
			if c.GetMtype() != criu_core.CoreEntry_X86_64 || c.GetThreadInfo().GetGpregs() == nil || c.GetThreadInfo().GetFpregs() == nil {
				bad("%s: no x86-64 thread_info with gpregs and fpregs", name)
			}
			if c.GetThreadCore() == nil {
				bad("%s: no thread_core", name)
			}
			if unappliedRestart(c) {
				bad("%s: rax %#x is an unapplied syscall restart (CRIU's restore would return it to the program)", name, c.GetThreadInfo().GetGpregs().GetAx())
			}
			if j == 0 {
				if c.GetTc() == nil {
					bad("%s: the leader's core has no tc", name)
				}
				ids = c.GetIds()
			}
		}
		if ids == nil {
			// CRIU 4.x reads ids-PID.img, and the core's ids when
			// that is missing (older images).
			ids, _ = images.ReadOne[*criu_core.TaskKobjIdsEntry](d, images.IdsImg(int(pid)))
		}
		if ids == nil {
			bad("task %d: no kernel object ids in core-%d.img or %s (CRIU: Core IDS data missed for non-zombie)", pid, pid, images.IdsImg(int(pid)))
			continue
		}
		if i == 0 && root != nil && ids.GetFilesId() == root.GetFilesId() {
			bad("%s: root task's files_id %d equals root_ids' (CRIU: Image corruption on kIDs data)", images.InventoryImg, ids.GetFilesId())
		}
		if !fdTables[ids.GetFilesId()] {
			fdTables[ids.GetFilesId()] = true
			name := images.FdinfoImg(ids.GetFilesId())
			fds, err := images.ReadAll[*fdinfo.FdinfoEntry](d, name)
			if err != nil {
				bad("%v", err)
			}
			for _, fd := range fds {
				if !fileIDs[fd.GetId()] {
					bad("%s: fd %d: file id %d not in %s", name, fd.GetFd(), fd.GetId(), images.FilesImg)
				}
			}
		}
		checkMM(d, int(pid), bad)
	}
	return errors.Join(errs...)
}

// checkMM checks a task's mm image and that its vDSO pages are in its
// pagemap, as CRIU's restore needs them.
func checkMM(d *images.Dir, pid int, bad func(string, ...any)) {
	name := images.MmImg(pid)
	m, err := images.ReadOne[*mm.MmEntry](d, name)
	if err != nil {
		bad("%v", err)
		return
	}
	if n := len(m.GetMmSavedAuxv()); n > criuAuxvWords || n%2 != 0 {
		bad("%s: mm_saved_auxv of %d words (CRIU takes an even count up to %d)", name, n, criuAuxvWords)
	}
	var last uint64
	var vdso, vvar int
	var vdsoStart, vdsoEnd uint64
	for i, v := range m.GetVmas() {
		s, e, st := v.GetStart(), v.GetEnd(), v.GetStatus()
		if s%pageSize != 0 || e%pageSize != 0 || s >= e || (i > 0 && s < last) {
			bad("%s: vma %d: %#x-%#x misaligned, empty or out of order", name, i, s, e)
		}
		last = e
		if st&(images.VmaAreaVdso|images.VmaAreaVvar) != 0 && st&images.VmaAnonPrivate == 0 {
			bad("%s: vma %#x-%#x: %s area not marked VMA_ANON_PRIVATE", name, s, e, VMAKind(st))
		}
		if st&images.VmaAreaVdso != 0 {
			vdso++
			vdsoStart, vdsoEnd = s, e
		}
		if st&images.VmaAreaVvar != 0 {
			vvar++
		}
	}
	if vdso > 1 || vvar > 1 {
		bad("%s: %d vdso and %d vvar areas (CRIU restores one of each)", name, vdso, vvar)
	}
	if vvar > 0 && vdso == 0 {
		bad("%s: a vvar area without a vdso (CRIU: Can't find vDSO area in image)", name)
	}
	if vdso == 0 {
		return
	}
	pr, err := images.OpenPages(d, images.PagemapImg(pid))
	if err != nil {
		bad("%v", err)
		return
	}
	defer pr.Close()
	covered := vdsoStart
	for p := range pr.Ranges() {
		if p.Vaddr <= covered && p.End() > covered && p.Flags&images.PagePresent != 0 {
			covered = min(p.End(), vdsoEnd)
		}
	}
	if covered < vdsoEnd {
		bad("%s: vdso %#x-%#x: pages from %#x missing (CRIU's restore reads the dumped vDSO)", images.PagemapImg(pid), vdsoStart, vdsoEnd, covered)
	}
}

// unappliedRestart reports whether c's registers hold an interrupted
// syscall's -ERESTART* in rax. CRIU's restore returns to user space with
// rax as written, so the program would get -ERESTART* as the call's
// result (a sleep inside restart_syscall exited at once that way); CRIU's
// own dump always applies the restart.
func unappliedRestart(c *criu_core.CoreEntry) bool {
	g := c.GetThreadInfo().GetGpregs()
	if g == nil {
		return false
	}
	regs := ptraceRegs(g)
	return ptrace.Restart(&regs) != ptrace.NoRestart
}
