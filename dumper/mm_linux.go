package dumper

import (
	"errors"
	"fmt"
	"strings"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/mm"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/vma"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"godwit/internal/images"
	"godwit/internal/procfs"
)

// VMA is one mapping as it goes into mm-PID.img, with what the memory
// dumper needs to know about it.
type VMA struct {
	Start, End uint64
	Pgoff      uint64 // file offset in bytes
	Shmid      uint64 // REG file id (file mappings) or shmem inode (shared anon)
	Prot       uint32
	Flags      uint32
	Status     uint32
	Madv       uint64
	Fdflags    uint32 // open flags of the mapped file; file mappings only
	Path       string
}

// Private reports whether the VMA's own pages are dumped to pagemap-PID.
func (v *VMA) Private() bool { return v.Status&(images.VmaAnonPrivate|images.VmaFilePrivate) != 0 }

// SharedAnon reports whether its pages are dumped once per shmid.
func (v *VMA) SharedAnon() bool { return v.Status&images.VmaAnonShared != 0 }

// Entry is the VmaEntry of mm-PID.img.
func (v *VMA) Entry() *vma.VmaEntry {
	e := &vma.VmaEntry{
		Start: proto.Uint64(v.Start), End: proto.Uint64(v.End), Pgoff: proto.Uint64(v.Pgoff),
		Shmid: proto.Uint64(v.Shmid), Prot: proto.Uint32(v.Prot), Flags: proto.Uint32(v.Flags),
		Status: proto.Uint32(v.Status), Fd: proto.Int64(-1),
	}
	if v.Madv != 0 {
		e.Madv = proto.Uint64(v.Madv)
	}
	if v.Status&(images.VmaFilePrivate|images.VmaFileShared) != 0 {
		e.Fdflags = proto.Uint32(v.Fdflags)
	}
	return e
}

// madvFlags maps smaps VmFlags to the MADV_* advice CRIU records.
var madvFlags = map[string]int{
	"sr": unix.MADV_SEQUENTIAL, "rr": unix.MADV_RANDOM, "dc": unix.MADV_DONTFORK,
	"dd": unix.MADV_DONTDUMP, "mg": unix.MADV_MERGEABLE, "hg": unix.MADV_HUGEPAGE,
	"nh": unix.MADV_NOHUGEPAGE, "wf": unix.MADV_WIPEONFORK,
}

// fileIDFunc gives the REG file id of a mapped file.
type fileIDFunc func(path string, flags uint32, st *unix.Stat_t) uint32

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

// mmEntry builds mm-PID.img from /proc/PID/stat, auxv and the VMAs.
func mmEntry(pid int, vmas []VMA, brk uint64, exeID uint32, dumpable int32, thpDisabled bool) (*mm.MmEntry, error) {
	st, err := procfs.ReadStat(pid)
	if err != nil {
		return nil, err
	}
	raw, err := procfs.ReadAuxvRaw(pid)
	if err != nil {
		return nil, fmt.Errorf("auxv: %w", err)
	}
	auxv := make([]uint64, 0, len(raw)/8)
	for i := 0; i+8 <= len(raw); i += 8 {
		auxv = append(auxv, leUint64(raw[i:]))
	}
	m := &mm.MmEntry{
		MmStartCode: proto.Uint64(st.StartCode), MmEndCode: proto.Uint64(st.EndCode),
		MmStartData: proto.Uint64(st.StartData), MmEndData: proto.Uint64(st.EndData),
		MmStartStack: proto.Uint64(st.StartStack), MmStartBrk: proto.Uint64(st.StartBrk),
		MmBrk:      proto.Uint64(brk),
		MmArgStart: proto.Uint64(st.ArgStart), MmArgEnd: proto.Uint64(st.ArgEnd),
		MmEnvStart: proto.Uint64(st.EnvStart), MmEnvEnd: proto.Uint64(st.EnvEnd),
		ExeFileId:   proto.Uint32(exeID),
		MmSavedAuxv: auxv,
		Dumpable:    proto.Int32(dumpable),
		ThpDisabled: proto.Bool(thpDisabled),
	}
	for i := range vmas {
		m.Vmas = append(m.Vmas, vmas[i].Entry())
	}
	return m, nil
}

func leUint64(b []byte) uint64 {
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}
