package drivers

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"godwit/internal/abi/linux"
	"godwit/internal/images"
	"godwit/internal/inject"
	"godwit/internal/model"
	"godwit/internal/procfs"
)

// memoryDriver dumps and restores the memory layout's description: the
// mm fields (code, data, brk, stack, args, env, auxv), the exe, and every
// VMA with the files of file mappings. Laying the VMAs out and filling
// them is the engine's (the restorer's Layout and FillPages, before the
// drivers run; pages travel through pagexfer): this driver restores the
// mm fields and the exe once the engine's PhaseMM has given every VMA its
// dumped protection, then the root (chroot, after the exe is opened).
type memoryDriver struct{}

func (memoryDriver) Name() string    { return "memory" }
func (memoryDriver) After() []string { return []string{PhaseMM} }

// Collect reads the mm fields from /proc/PID/stat and auxv, the exe and
// the VMAs (before the dumper's scratch mapping exists).
func (memoryDriver) Collect(d *Dump) error {
	exePath, exeSt, err := LinkFile(d.Pid, "exe")
	if err != nil {
		return fmt.Errorf("exe: %w", err)
	}
	root, err := d.Files.nsRoot(d.Pid)
	if err != nil {
		return err
	}
	// The restore opens the exe and the mapped files by path: a path
	// that now leads to another file (a mount over it, a file renamed
	// over it) would restore that file's code and pages, so it is
	// refused, as for a regular fd. A deleted exe keeps its "(deleted)"
	// name, which the restore refuses to open.
	if exeSt.Nlink != 0 || !strings.HasSuffix(exePath, deletedSuffix) {
		if err := pathLeadsTo(root, exePath, exeSt); err != nil {
			return fmt.Errorf("exe: %w", err)
		}
	}
	exe := d.Files.Shared(exePath, unix.O_RDONLY, exeSt, NoMntID)
	checked := map[[2]uint64]bool{}
	read := procfs.ReadSmaps
	if d.Smaps != nil {
		read = d.Smaps
	}
	sm, err := read(d.Pid)
	if err != nil {
		return err
	}
	vmas, err := vmasOf(d.Pid, sm, func(path, src string, deleted bool, flags uint32, st *unix.Stat_t) (model.ID, error) {
		if _, ok := MemfdName(path); ok {
			id, err := d.Files.SharedMemfd(src, path, flags, st)
			if err == nil {
				err = memfdMapCheck(d.Files.Table()[id].Memfd, flags)
			}
			return id, err
		}
		if deleted {
			return d.Files.SharedGhost(d.Pid, src, path, flags, st)
		}
		if key := [2]uint64{st.Dev, st.Ino}; !checked[key] {
			if err := pathLeadsTo(root, path, st); err != nil {
				return 0, err
			}
			checked[key] = true
		}
		return d.Files.Shared(path, flags, st, NoMntID), nil
	})
	if err != nil {
		return err
	}
	st, err := procfs.ReadStat(d.Pid)
	if err != nil {
		return err
	}
	raw, err := procfs.ReadAuxvRaw(d.Pid)
	if err != nil {
		return fmt.Errorf("auxv: %w", err)
	}
	auxv := make([]uint64, 0, len(raw)/8)
	for i := 0; i+8 <= len(raw); i += 8 {
		auxv = append(auxv, le.Uint64(raw[i:]))
	}
	m := d.Task.MM
	m.StartCode, m.EndCode, m.StartData, m.EndData = st.StartCode, st.EndCode, st.StartData, st.EndData
	m.StartStack, m.StartBrk = st.StartStack, st.StartBrk
	m.ArgStart, m.ArgEnd, m.EnvStart, m.EnvEnd = st.ArgStart, st.ArgEnd, st.EnvStart, st.EnvEnd
	m.Exe = exe
	m.Auxv = auxv
	m.VMAs = vmas
	return nil
}

// CollectInjected reads the current brk, which only the task can tell.
func (k memoryDriver) CollectInjected(d *Dump, s *inject.Session) error {
	p, _ := k.PlanInjected(d, s)
	return runPlanned(s, p)
}

// PlanInjected reads the program break (brk(0)).
func (memoryDriver) PlanInjected(d *Dump, s *inject.Session) (Planned, bool) {
	return Planned{Calls: []inject.Call{inject.C("brk(0)", unix.SYS_BRK, 0)},
		Done: func(got []uint64, _ []byte) error {
			d.Task.MM.Brk = got[0]
			return nil
		}}, true
}

// Restore sets the mm fields, auxv and exe with one PR_SET_MM_MAP, then
// changes the root.
func (memoryDriver) Restore(r *Restore, s *inject.Session) error {
	m := r.Task.MM
	exe := r.Tree.Files[m.Exe].Path
	efd, err := s.Openat("exe", exe, unix.O_RDONLY|unix.O_CLOEXEC)
	if err != nil {
		return err
	}
	if err := r.verifyOpened(s, efd, r.Tree.Files[m.Exe]); err != nil {
		return fmt.Errorf("exe: %w", err)
	}
	auxv := m.Auxv
	var ab []byte
	for _, w := range auxv {
		ab = le64(ab, w)
	}
	// Stashed (inject.Session.Stash), apart from what the calls before
	// queued, which then run with the next stop, not before these.
	auxvAddr := uint64(0)
	if len(ab) > 0 {
		if auxvAddr, err = s.Stash(ab); err != nil {
			return err
		}
	}
	b := make([]byte, 0, linux.SizeofPrctlMmMap)
	for _, v := range []uint64{m.StartCode, m.EndCode, m.StartData, m.EndData,
		m.StartBrk, m.Brk, m.StartStack, m.ArgStart, m.ArgEnd,
		m.EnvStart, m.EnvEnd, auxvAddr} {
		b = le64(b, v)
	}
	b = le.AppendUint32(b, uint32(len(ab)))
	b = le.AppendUint32(b, uint32(efd))
	a, err := s.Stash(b)
	if err != nil {
		return err
	}
	// Queued (inject.Session.Later), for the session's next stop; the
	// buffers stay until then.
	s.Later("prctl(PR_SET_MM_MAP) with exe "+exe, unix.SYS_PRCTL, unix.PR_SET_MM, unix.PR_SET_MM_MAP, a, linux.SizeofPrctlMmMap, 0)
	s.Later("close exe", unix.SYS_CLOSE, efd)
	if root := r.Tree.Files[r.Task.FS.Root].Path; root != "/" {
		a, err := s.PutString(0, root)
		if err != nil {
			return err
		}
		if _, err := s.Call("chroot "+root, unix.SYS_CHROOT, a); err != nil {
			return err
		}
	}
	return nil
}

// madvFlags maps smaps VmFlags to the MADV_* advice CRIU records.
var madvFlags = map[string]int{
	"sr": unix.MADV_SEQUENTIAL, "rr": unix.MADV_RANDOM, "dc": unix.MADV_DONTFORK,
	"dd": unix.MADV_DONTDUMP, "mg": unix.MADV_MERGEABLE, "hg": unix.MADV_HUGEPAGE,
	"nh": unix.MADV_NOHUGEPAGE, "wf": unix.MADV_WIPEONFORK,
}

// FileIDFunc gives the REG file id of a mapped file: path, opened with
// flags, stat st; a deleted one (a ghost) has its contents read from src.
type FileIDFunc func(path, src string, deleted bool, flags uint32, st *unix.Stat_t) (model.ID, error)

// CollectVMAs reads /proc/PID/smaps into VMAs. fileID (nil when only
// memory is wanted, e.g. by pre-dump) names the files of file mappings.
func CollectVMAs(pid int, fileID FileIDFunc) ([]model.VMA, error) {
	sm, err := procfs.ReadSmaps(pid)
	if err != nil {
		return nil, err
	}
	return vmasOf(pid, sm, fileID)
}

// vmasOf turns pid's smaps entries sm into VMAs.
func vmasOf(pid int, sm []procfs.SmapsEntry, fileID FileIDFunc) ([]model.VMA, error) {
	out := make([]model.VMA, 0, len(sm))
	for i := range sm {
		e := &sm[i]
		if e.Path == "[vsyscall]" {
			continue // the kernel's, at a fixed address
		}
		v, err := classifyVMA(pid, e, fileID)
		if err != nil {
			return nil, fmt.Errorf("vma %#x-%#x (%s): %w", e.Start, e.End, vmaName(e), err)
		}
		v.MayGuard = slices.Contains(e.VmFlags, "gu")
		out = append(out, v)
	}
	return out, nil
}

func vmaName(e *procfs.SmapsEntry) string {
	if e.Path == "" {
		return "anon"
	}
	return e.Path
}

func classifyVMA(pid int, e *procfs.SmapsEntry, fileID FileIDFunc) (model.VMA, error) {
	v := model.VMA{Start: e.Start, End: e.End, Path: e.Path, Status: images.VmaAreaRegular}
	if e.Shared && !e.IsAnon() {
		v.Pgoff = e.Offset // shared memory: the offset in the object
	}
	if e.Read {
		v.Prot |= unix.PROT_READ
	}
	if e.Write {
		v.Prot |= unix.PROT_WRITE
	}
	if e.Exec {
		v.Prot |= unix.PROT_EXEC
	}
	if e.Shared {
		v.Flags = unix.MAP_SHARED
	} else {
		v.Flags = unix.MAP_PRIVATE
	}
	for _, f := range e.VmFlags {
		switch f {
		case "gd":
			v.Flags |= unix.MAP_GROWSDOWN
		case "nr":
			v.Flags |= unix.MAP_NORESERVE
		case "lo":
			v.Flags |= unix.MAP_LOCKED
		case "dp":
			// MAP_DROPPABLE (6.11+): its own map type, which CRIU's
			// flags cannot carry; the godwit image keeps it.
			v.Droppable = true
		}
		if m, ok := madvFlags[f]; ok {
			v.Madv |= 1 << m
		}
	}
	switch {
	case e.Path == "[vdso]":
		v.Status |= images.VmaAreaVdso
		v.Flags |= unix.MAP_ANONYMOUS
		return v, nil
	case e.Path == "[vvar]" || e.Path == "[vvar_vclock]":
		v.Status |= images.VmaAreaVvar
		v.Flags |= unix.MAP_ANONYMOUS
		return v, nil
	case e.IsAnon():
		if e.Shared {
			return v, fmt.Errorf("shared anonymous mapping without an inode")
		}
		v.Flags |= unix.MAP_ANONYMOUS
		v.Status |= images.VmaAnonPrivate
		switch e.Path {
		case "[heap]":
			v.Status |= images.VmaAreaHeap
		case "[stack]":
			v.Status |= images.VmaAreaStack
		}
		if strings.HasPrefix(e.Path, "[") && e.Path != "[heap]" && e.Path != "[stack]" && !strings.HasPrefix(e.Path, "[anon:") {
			return v, fmt.Errorf("special mapping is not supported yet")
		}
		return v, nil
	case slices.Contains(e.VmFlags, "ht"):
		// Private anonymous hugetlb memory is private anonymous memory
		// in huge pages: dumped as such, remapped with MAP_HUGETLB of
		// the same page size. Shared (or file) hugetlb is an object
		// of its own.
		if e.Shared || e.Path != "/anon_hugepage" || !e.Deleted {
			return v, errors.New("shared or file-backed hugetlb mapping is not supported yet")
		}
		ps := e.Fields["KernelPageSize"]
		if ps < 2<<20 || ps&(ps-1) != 0 || e.Start%ps != 0 || e.End%ps != 0 {
			return v, fmt.Errorf("hugetlb mapping with page size %d", ps)
		}
		v.Flags |= unix.MAP_ANONYMOUS
		v.Status |= images.VmaAnonPrivate
		v.HugePage = ps
		return v, nil
	case e.Path == "/[aio]" && e.Deleted:
		return v, errors.New("io_setup AIO ring is not supported yet (godwit cannot remake an AIO context)")
	case strings.HasPrefix(e.Path, "/SYSV"):
		// An attach of a SysV shared memory segment (CRIU's
		// VMA_AREA_SYSVIPC): the segment's id is the inode, its
		// contents are the IPC namespace's (the dumper refuses one
		// not in the tree's own namespace), and Fdflags says whether
		// it may be made writable (VmFlags "mw": not SHM_RDONLY).
		if !e.Shared {
			return v, errors.New("private SysV shared memory mapping")
		}
		v.Status = images.VmaAreaRegular | images.VmaAreaSysvipc
		v.Shmid, v.Pgoff = e.Inode, e.Offset
		v.Fdflags = unix.O_RDONLY
		if slices.Contains(e.VmFlags, "mw") {
			v.Fdflags = unix.O_RDWR
		}
		return v, nil
	case e.Shared && (e.Path == "/dev/zero" && e.Deleted || strings.HasPrefix(e.Path, "[anon_shmem:")):
		v.Flags |= unix.MAP_ANONYMOUS
		v.Status |= images.VmaAnonShared
		v.Shmid = e.Inode
		return v, nil
	case strings.HasPrefix(e.Path, memfdPrefix):
		// A memfd is a file (fd_memfd.go): its mappings name it, as in
		// CRIU (VMA_AREA_MEMFD), so that the fds and mappings of one
		// memfd are restored as one inode, with its name and seals.
		v.Status |= images.VmaAreaMemfd
	case e.Deleted && !strings.HasPrefix(e.Path, "/"):
		return v, fmt.Errorf("mapping of a deleted special file is not supported yet")
	}
	// A file mapping; a deleted file is saved and made again as the
	// ghost of an fd is (fd_ghost.go).
	// A file mapping.
	var st unix.Stat_t
	mf := procfs.Path(pid, procfs.MapFilesName(e.Start, e.End))
	if err := unix.Stat(mf, &st); err != nil {
		return v, fmt.Errorf("stat %s: %w", mf, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
	case unix.S_IFCHR:
		return v, fmt.Errorf("mapping of a character device is not supported yet")
	default:
		return v, fmt.Errorf("mapping of file mode %#o is not supported yet", st.Mode)
	}
	v.Pgoff = e.Offset
	v.Fdflags = unix.O_RDONLY
	if e.Shared {
		v.Status |= images.VmaFileShared
		// VM_MAYWRITE ("mw") on a shared file mapping says the file
		// was open for writing when mapped: the program may mprotect it
		// writable later, which needs a file reopened O_RDWR.
		if e.Write || slices.Contains(e.VmFlags, "mw") {
			v.Fdflags = unix.O_RDWR
		}
	} else {
		v.Status |= images.VmaFilePrivate
	}
	if fileID != nil {
		id, err := fileID(e.Path, mf, e.Deleted, v.Fdflags, &st)
		if err != nil {
			return v, err
		}
		v.Shmid = uint64(id)
	}
	return v, nil
}
