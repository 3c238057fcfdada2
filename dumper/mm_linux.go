package dumper

import (
	"errors"
	"fmt"
	"strings"

	"encoding/binary"

	"golang.org/x/sys/unix"

	"godwit/internal/images"
	"godwit/internal/model"
	"godwit/internal/procfs"
)

// VMA is one mapping as the model keeps it.
type VMA = model.VMA

// madvFlags maps smaps VmFlags to the MADV_* advice CRIU records.
var madvFlags = map[string]int{
	"sr": unix.MADV_SEQUENTIAL, "rr": unix.MADV_RANDOM, "dc": unix.MADV_DONTFORK,
	"dd": unix.MADV_DONTDUMP, "mg": unix.MADV_MERGEABLE, "hg": unix.MADV_HUGEPAGE,
	"nh": unix.MADV_NOHUGEPAGE, "wf": unix.MADV_WIPEONFORK,
}

// fileIDFunc gives the REG file id of a mapped file.
type fileIDFunc func(path string, flags uint32, st *unix.Stat_t) model.ID

// CollectVMAs reads /proc/PID/smaps into VMAs. fileID (nil when only
// memory is wanted, e.g. by pre-dump) names the files of file mappings.
func CollectVMAs(pid int, fileID fileIDFunc) ([]VMA, error) {
	sm, err := procfs.ReadSmaps(pid)
	if err != nil {
		return nil, err
	}
	out := make([]VMA, 0, len(sm))
	for i := range sm {
		e := &sm[i]
		if e.Path == "[vsyscall]" {
			continue // the kernel's, at a fixed address
		}
		v, err := classify(pid, e, fileID)
		if err != nil {
			return nil, fmt.Errorf("vma %#x-%#x (%s): %w", e.Start, e.End, vmaName(e), err)
		}
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

func classify(pid int, e *procfs.SmapsEntry, fileID fileIDFunc) (VMA, error) {
	v := VMA{Start: e.Start, End: e.End, Path: e.Path, Status: images.VmaAreaRegular}
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
	case strings.HasPrefix(e.Path, "/SYSV"):
		return v, errors.New("SysV shared memory is not supported yet")
	case e.Shared && (e.Path == "/dev/zero" && e.Deleted || strings.HasPrefix(e.Path, "/memfd:") || strings.HasPrefix(e.Path, "[anon_shmem:")):
		v.Flags |= unix.MAP_ANONYMOUS
		v.Status |= images.VmaAnonShared
		v.Shmid = e.Inode
		return v, nil
	case strings.HasPrefix(e.Path, "/memfd:"):
		return v, fmt.Errorf("private mapping of a memfd is not supported yet")
	case e.Deleted:
		return v, fmt.Errorf("mapping of a deleted file is not supported yet")
	}
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
		if e.Write {
			v.Fdflags = unix.O_RDWR
		}
	} else {
		v.Status |= images.VmaFilePrivate
	}
	if fileID != nil {
		v.Shmid = uint64(fileID(e.Path, v.Fdflags, &st))
	}
	return v, nil
}

// collectMM fills the mm from /proc/PID/stat, auxv and the VMAs; brk,
// dumpable and THP come from injected calls (collectTaskInjected).
func collectMM(pid int, k *model.Task, vmas []VMA, exe model.ID) error {
	st, err := procfs.ReadStat(pid)
	if err != nil {
		return err
	}
	raw, err := procfs.ReadAuxvRaw(pid)
	if err != nil {
		return fmt.Errorf("auxv: %w", err)
	}
	auxv := make([]uint64, 0, len(raw)/8)
	for i := 0; i+8 <= len(raw); i += 8 {
		auxv = append(auxv, binary.LittleEndian.Uint64(raw[i:]))
	}
	m := k.MM
	m.StartCode, m.EndCode, m.StartData, m.EndData = st.StartCode, st.EndCode, st.StartData, st.EndData
	m.StartStack, m.StartBrk = st.StartStack, st.StartBrk
	m.ArgStart, m.ArgEnd, m.EnvStart, m.EnvEnd = st.ArgStart, st.ArgEnd, st.EnvStart, st.EnvEnd
	m.Exe = exe
	m.Auxv = auxv
	m.VMAs = vmas
	return nil
}
