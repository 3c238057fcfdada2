package bpfiter

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// The plumbing every godwit BPF iterator shares (this package's and
// internal/vmaflags'): kernel struct offsets from BTF, and running a
// loaded iterator program over one process or all of them.

// ErrLink marks a failure to attach an iterator (BPF_LINK_CREATE): the
// kernel cannot run it here. The kernel's errno stays reachable with
// errors.Is (E2BIG: a kernel before 6.1 given a process).
var ErrLink = errors.New("iterator link")

// MemberOffset finds name among ms, inside anonymous structs and unions
// too, and returns its byte offset and size; not ok for a bitfield.
func MemberOffset(ms []btf.Member, name string) (int, int, bool) {
	for _, m := range ms {
		if m.Name == name {
			if m.BitfieldSize != 0 || m.Offset%8 != 0 {
				return 0, 0, false
			}
			size, err := btf.Sizeof(m.Type)
			if err != nil {
				return 0, 0, false
			}
			return int(m.Offset / 8), size, true
		}
		if m.Name != "" {
			continue
		}
		var inner []btf.Member
		switch t := btf.UnderlyingType(m.Type).(type) {
		case *btf.Struct:
			inner = t.Members
		case *btf.Union:
			inner = t.Members
		default:
			continue
		}
		if off, size, ok := MemberOffset(inner, name); ok {
			return int(m.Offset/8) + off, size, true
		}
	}
	return 0, 0, false
}

// TaskInfo is union bpf_iter_link_info's task member
// (include/uapi/linux/bpf.h), padded to the union's size: the process an
// iterator walks, by Pid or PidFd.
type TaskInfo struct {
	Tid, Pid, PidFd uint32
	_               uint32
}

// linkCreateIter is union bpf_attr's link_create member as BPF_LINK_CREATE
// of an iterator takes it (include/uapi/linux/bpf.h).
type linkCreateIter struct {
	ProgFd, TargetFd, AttachType, Flags uint32
	IterInfo                            uint64
	IterInfoLen                         uint32
	_                                   uint32
}

// iterCreate is union bpf_attr's iter_create member.
type iterCreate struct {
	LinkFd, Flags uint32
}

func bpf(cmd uintptr, attr unsafe.Pointer, size uintptr) (int, error) {
	r, _, errno := unix.Syscall(unix.SYS_BPF, cmd, uintptr(attr), size)
	if errno != 0 {
		return -1, errno
	}
	return int(r), nil
}

// Iterate runs iterator program p over the process info names (nil: every
// process) and returns what it wrote.
func Iterate(p *ebpf.Program, info *TaskInfo) ([]byte, error) {
	la := linkCreateIter{ProgFd: uint32(p.FD()), AttachType: unix.BPF_TRACE_ITER}
	if info != nil {
		la.IterInfo, la.IterInfoLen = uint64(uintptr(unsafe.Pointer(info))), uint32(unsafe.Sizeof(*info))
	}
	lfd, err := bpf(unix.BPF_LINK_CREATE, unsafe.Pointer(&la), unsafe.Sizeof(la))
	runtime.KeepAlive(info)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrLink, err)
	}
	defer unix.Close(lfd)
	ic := iterCreate{LinkFd: uint32(lfd)}
	ifd, err := bpf(unix.BPF_ITER_CREATE, unsafe.Pointer(&ic), unsafe.Sizeof(ic))
	if err != nil {
		return nil, fmt.Errorf("iterator: %w", err)
	}
	f := os.NewFile(uintptr(ifd), "bpf_iter")
	defer f.Close()
	return io.ReadAll(f)
}
