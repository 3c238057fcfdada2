package restorer

import (
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"

	core_x86 "github.com/checkpoint-restore/go-criu/v8/crit/images/core-x86"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/creds"
	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	fsimg "github.com/checkpoint-restore/go-criu/v8/crit/images/fs"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mm"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pstree"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/vma"

	"godwit/internal/abi/linux"
	"godwit/internal/images"
)

// thread is one dumped thread: its TID and core image.
type thread struct {
	tid   int
	core  *criu_core.CoreEntry
	creds *creds.CredsEntry
}

// taskImages is everything read from the images of one process, checked
// for consistency before anything is started.
type taskImages struct {
	pid     int
	ps      *pstree.PstreeEntry
	threads []thread // leader first
	tc      *criu_core.TaskCoreEntry
	ids     *criu_core.TaskKobjIdsEntry
	mm      *mm.MmEntry
	files   map[uint32]*fdinfo.FileEntry
	fds     []*fdinfo.FdinfoEntry
	fs      *fsimg.FsEntry
	pages   *images.PageReader // nil when the dump has no private pages
	shmem   map[uint64]*images.PageReader
}

func (ti *taskImages) close() {
	if ti == nil {
		return
	}
	if ti.pages != nil {
		ti.pages.Close()
	}
	for _, p := range ti.shmem {
		if p != nil {
			p.Close()
		}
	}
}

// leader returns the main thread.
func (ti *taskImages) leader() *thread { return &ti.threads[0] }

// readImages reads and checks the images of the one process in d.
func readImages(d *images.Dir) (ti *taskImages, err error) {
	if _, err := images.ReadInventory(d); err != nil {
		return nil, imgErr(images.InventoryImg, err)
	}
	pss, err := images.ReadAll[*pstree.PstreeEntry](d, images.PstreeImg)
	if err != nil {
		return nil, imgErr(images.PstreeImg, err)
	}
	switch {
	case len(pss) == 0:
		return nil, fmt.Errorf("%s: no process", images.PstreeImg)
	case len(pss) > 1:
		var pids []string
		for _, p := range pss[1:] {
			pids = append(pids, fmt.Sprint(p.GetPid()))
		}
		return nil, fmt.Errorf("%s: process trees are not supported yet: %d has children %s",
			images.PstreeImg, pss[0].GetPid(), strings.Join(pids, ","))
	}
	ps := pss[0]
	ti = &taskImages{pid: int(ps.GetPid()), ps: ps, shmem: map[uint64]*images.PageReader{}}
	built := ti
	defer func() {
		if err != nil {
			built.close()
		}
	}()
	if ti.pid <= 0 || ti.pid > 1<<22 {
		return nil, fmt.Errorf("%s: bad pid %d", images.PstreeImg, ps.GetPid())
	}
	if err := checkSessionIDs(ps.GetPid(), ps.GetPgid(), ps.GetSid()); err != nil {
		return nil, fmt.Errorf("%s: task %d: %w", images.PstreeImg, ti.pid, err)
	}
	tids := ps.GetThreads()
	if len(tids) == 0 {
		tids = []uint32{uint32(ti.pid)}
	}
	seen := map[uint32]bool{}
	for _, t := range tids {
		if t == 0 || t > 1<<22 || seen[t] {
			return nil, fmt.Errorf("%s: bad or duplicate thread id %d", images.PstreeImg, t)
		}
		seen[t] = true
	}
	if !seen[uint32(ti.pid)] {
		return nil, fmt.Errorf("%s: leader %d missing from its threads", images.PstreeImg, ti.pid)
	}
	// Leader first, the others in image order.
	ti.threads = append(ti.threads, thread{tid: ti.pid})
	for _, t := range tids {
		if int(t) != ti.pid {
			ti.threads = append(ti.threads, thread{tid: int(t)})
		}
	}
	for i := range ti.threads {
		if err := readThread(d, &ti.threads[i], i == 0); err != nil {
			return nil, err
		}
	}
	lc := ti.leader().core
	ti.tc = lc.GetTc()
	ti.ids = lc.GetIds()
	if ti.ids == nil {
		name := images.IdsImg(ti.pid)
		if ti.ids, err = images.ReadOne[*criu_core.TaskKobjIdsEntry](d, name); err != nil {
			return nil, imgErr(name, fmt.Errorf("no ids in core and: %w", err))
		}
	}
	switch ti.tc.GetTaskState() {
	case images.TaskAlive, images.TaskStopped:
	default:
		return nil, fmt.Errorf("%s: task state %d (dead or zombie) cannot be restored", images.CoreImg(ti.pid), ti.tc.GetTaskState())
	}
	if err := ti.readMM(d); err != nil {
		return nil, err
	}
	if err := ti.readFiles(d); err != nil {
		return nil, err
	}
	if err := ti.readPages(d); err != nil {
		return nil, err
	}
	return ti, nil
}

// imgErr names the image in err unless it already does.
func imgErr(name string, err error) error {
	if strings.Contains(err.Error(), name) {
		return err
	}
	return fmt.Errorf("%s: %w", name, err)
}

func readThread(d *images.Dir, t *thread, leader bool) error {
	name := images.CoreImg(t.tid)
	core, err := images.ReadOne[*criu_core.CoreEntry](d, name)
	if err != nil {
		return imgErr(name, err)
	}
	if core.GetMtype() != criu_core.CoreEntry_X86_64 {
		return fmt.Errorf("%s: architecture %v, this is x86_64", name, core.GetMtype())
	}
	ti := core.GetThreadInfo()
	if ti == nil || ti.GetGpregs() == nil || ti.GetFpregs() == nil {
		return fmt.Errorf("%s: no x86 registers", name)
	}
	if ti.GetGpregs().GetMode() != core_x86.UserX86RegsMode_NATIVE {
		return fmt.Errorf("%s: 32-bit (compat) tasks are not supported", name)
	}
	if leader && core.GetTc() == nil {
		return fmt.Errorf("%s: leader without task core", name)
	}
	tcore := core.GetThreadCore()
	if tcore == nil {
		return fmt.Errorf("%s: no thread core", name)
	}
	if m := tcore.GetSeccompMode(); m != criu_core.SeccompMode_disabled {
		return fmt.Errorf("%s: seccomp mode %v cannot be restored yet", name, m)
	}
	t.core = core
	t.creds = tcore.GetCreds()
	if t.creds == nil {
		// Images of CRIU before 3.x keep creds in creds-PID.img.
		cn := images.CredsImg(t.tid)
		c, err := images.ReadOne[*creds.CredsEntry](d, cn)
		if err != nil {
			return imgErr(name, fmt.Errorf("no creds in core and: %w", err))
		}
		t.creds = c
	}
	return nil
}

func (ti *taskImages) readMM(d *images.Dir) error {
	name := images.MmImg(ti.pid)
	m, err := images.ReadOne[*mm.MmEntry](d, name)
	if err != nil {
		return imgErr(name, err)
	}
	vmas := m.GetVmas()
	if len(vmas) == 0 {
		return fmt.Errorf("%s: no VMAs", name)
	}
	var last uint64
	vdso := 0
	for i, v := range vmas {
		s, e := v.GetStart(), v.GetEnd()
		switch {
		case s%pageSize != 0 || e%pageSize != 0 || s >= e || e > taskSize:
			return fmt.Errorf("%s: vma %d: bad range %#x-%#x", name, i, s, e)
		case i > 0 && s < last:
			return fmt.Errorf("%s: vma %d: %#x-%#x overlaps or precedes the previous one", name, i, s, e)
		case v.GetStatus()&images.VmaUnsupp != 0:
			return fmt.Errorf("%s: vma %#x-%#x: marked unsupported by the dumper", name, s, e)
		case v.GetStatus()&(images.VmaAreaSysvipc|images.VmaAreaSocket|images.VmaAreaAioring|images.VmaAreaShstk|images.VmaExtFile) != 0:
			return fmt.Errorf("%s: vma %#x-%#x: %s mappings are not supported yet", name, s, e, vmaKind(v))
		case v.GetStatus()&images.VmaAreaVdso != 0:
			vdso++
		}
		if v.GetStatus()&(images.VmaFilePrivate|images.VmaFileShared) != 0 && v.GetPgoff()%pageSize != 0 {
			return fmt.Errorf("%s: vma %#x-%#x: file offset %#x not page aligned", name, s, e, v.GetPgoff())
		}
		last = e
	}
	if vdso > 1 {
		return fmt.Errorf("%s: %d vdso areas", name, vdso)
	}
	if n := len(m.GetMmSavedAuxv()); n > linux.MaxAuxvWords || n%2 != 0 {
		return fmt.Errorf("%s: auxv of %d words (want an even count up to %d)", name, n, linux.MaxAuxvWords)
	}
	ti.mm = m
	return nil
}

// vmaKind names a VMA's kind for messages.
func vmaKind(v *vma.VmaEntry) string {
	st := v.GetStatus()
	switch {
	case st&images.VmaAreaVdso != 0:
		return "vdso"
	case st&images.VmaAreaVvar != 0:
		return "vvar"
	case st&images.VmaAreaVsyscall != 0:
		return "vsyscall"
	case st&images.VmaAreaSysvipc != 0:
		return "sysv shm"
	case st&images.VmaAreaSocket != 0:
		return "socket"
	case st&images.VmaAreaAioring != 0:
		return "aio ring"
	case st&images.VmaAreaShstk != 0:
		return "shadow stack"
	case st&images.VmaExtFile != 0:
		return "external file"
	case st&images.VmaAreaMemfd != 0:
		return "memfd"
	case st&images.VmaAreaHeap != 0:
		return "heap"
	case st&images.VmaAreaStack != 0:
		return "stack"
	case st&images.VmaFilePrivate != 0:
		return "file private"
	case st&images.VmaFileShared != 0:
		return "file shared"
	case st&images.VmaAnonShared != 0:
		return "anon shared"
	case st&images.VmaAnonPrivate != 0:
		return "anon private"
	}
	return fmt.Sprintf("status %#x", st)
}

func (ti *taskImages) readFiles(d *images.Dir) error {
	ti.files = map[uint32]*fdinfo.FileEntry{}
	if !d.Exists(images.FilesImg) {
		// Every dump has one: the exe is a file.
		return fmt.Errorf("%s: missing", images.FilesImg)
	}
	{
		fes, err := images.ReadAll[*fdinfo.FileEntry](d, images.FilesImg)
		if err != nil {
			return imgErr(images.FilesImg, err)
		}
		for _, f := range fes {
			if _, dup := ti.files[f.GetId()]; dup {
				return fmt.Errorf("%s: duplicate file id %d", images.FilesImg, f.GetId())
			}
			if f.GetType() == fdinfo.FdTypes_REG && f.GetReg() == nil {
				return fmt.Errorf("%s: file %d: REG without reg entry", images.FilesImg, f.GetId())
			}
			ti.files[f.GetId()] = f
		}
	}
	// The exe, cwd, root and file VMAs must name REG files.
	needReg := func(id uint32, what string) error {
		f := ti.files[id]
		if f == nil {
			return fmt.Errorf("%s: %s refers to file id %d, which is not in %s", images.MmImg(ti.pid), what, id, images.FilesImg)
		}
		if f.GetType() != fdinfo.FdTypes_REG {
			return fmt.Errorf("%s: %s is a %v file, want a regular one", images.FilesImg, what, f.GetType())
		}
		return nil
	}
	if err := needReg(ti.mm.GetExeFileId(), "exe"); err != nil {
		return err
	}
	for _, v := range ti.mm.GetVmas() {
		if v.GetStatus()&(images.VmaFilePrivate|images.VmaFileShared) != 0 && v.GetStatus()&images.VmaAreaMemfd == 0 {
			if err := needReg(uint32(v.GetShmid()), fmt.Sprintf("vma %#x-%#x", v.GetStart(), v.GetEnd())); err != nil {
				return err
			}
		}
	}
	fsName := images.FsImg(ti.pid)
	fse, err := images.ReadOne[*fsimg.FsEntry](d, fsName)
	if err != nil {
		return imgErr(fsName, err)
	}
	ti.fs = fse
	for _, c := range []struct {
		id   uint32
		what string
	}{{fse.GetCwdId(), "cwd"}, {fse.GetRootId(), "root"}} {
		if f := ti.files[c.id]; f == nil || f.GetType() != fdinfo.FdTypes_REG {
			return fmt.Errorf("%s: %s refers to file id %d, not a regular entry of %s", fsName, c.what, c.id, images.FilesImg)
		}
	}
	fdName := images.FdinfoImg(ti.ids.GetFilesId())
	fds, err := images.ReadAll[*fdinfo.FdinfoEntry](d, fdName)
	if err != nil {
		return imgErr(fdName, err)
	}
	seen := map[uint32]bool{}
	for _, e := range fds {
		if seen[e.GetFd()] || e.GetFd() > 1<<20 {
			return fmt.Errorf("%s: bad or duplicate fd %d", fdName, e.GetFd())
		}
		seen[e.GetFd()] = true
		f := ti.files[e.GetId()]
		if f == nil {
			return fmt.Errorf("%s: fd %d refers to file id %d, which is not in %s", fdName, e.GetFd(), e.GetId(), images.FilesImg)
		}
		if e.GetType() != fdinfo.FdTypes_REG || f.GetType() != fdinfo.FdTypes_REG {
			return fmt.Errorf("%s: fd %d: %v files are not supported yet", fdName, e.GetFd(), f.GetType())
		}
	}
	sort.Slice(fds, func(i, j int) bool { return fds[i].GetFd() < fds[j].GetFd() })
	ti.fds = fds
	return nil
}

func (ti *taskImages) readPages(d *images.Dir) error {
	name := images.PagemapImg(ti.pid)
	pr, err := images.OpenPages(d, name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && !d.Exists(name) {
			return fmt.Errorf("%s: %w", name, err)
		}
		return imgErr(name, err)
	}
	ti.pages = pr
	vmas := ti.mm.GetVmas()
	for p := range pr.Ranges() {
		if p.Flags&images.PageInParent != 0 {
			return fmt.Errorf("%s: pages at %#x are in a parent image: incremental restore is not supported yet", name, p.Vaddr)
		}
		if !coveredPrivate(vmas, p.Vaddr, p.End()) {
			return fmt.Errorf("%s: pages %#x-%#x lie outside the private VMAs of %s", name, p.Vaddr, p.End(), images.MmImg(ti.pid))
		}
	}
	for _, v := range vmas {
		if v.GetStatus()&images.VmaAnonShared == 0 {
			continue
		}
		id := v.GetShmid()
		if _, ok := ti.shmem[id]; ok {
			continue
		}
		sn := images.PagemapShmemImg(id)
		if !d.Exists(sn) {
			ti.shmem[id] = nil // never written to: zero pages
			continue
		}
		spr, err := images.OpenPages(d, sn)
		if err != nil {
			return imgErr(sn, err)
		}
		ti.shmem[id] = spr
	}
	return nil
}

// coveredPrivate reports whether [s, e) lies in private VMAs (sorted)
// that can hold dumped pages.
func coveredPrivate(vmas []*vma.VmaEntry, s, e uint64) bool {
	i := sort.Search(len(vmas), func(i int) bool { return vmas[i].GetEnd() > s })
	for ; s < e && i < len(vmas); i++ {
		v := vmas[i]
		if v.GetStart() > s || v.GetStatus()&(images.VmaAnonShared|images.VmaFileShared|images.VmaAreaVdso|images.VmaAreaVvar|images.VmaAreaVsyscall) != 0 {
			return false
		}
		s = v.GetEnd()
	}
	return s >= e
}

// filePath returns the path of REG file id, with the leading "/" CRIU's
// names may lack.
func (ti *taskImages) filePath(id uint32) string {
	n := ti.files[id].GetReg().GetName()
	if !strings.HasPrefix(n, "/") {
		n = "/" + n
	}
	return n
}
