// Package vmaflags reads the vm_flags word of every VMA of a process with
// a BPF task_vma iterator. /proc/PID/smaps is the only file that shows
// VMA flags, and it walks every page table to count RSS (tens of ms per
// GiB of present memory); the iterator reads the VMAs alone.
//
// The word is the kernel's own; which bit smaps names how is learnt on
// this kernel by Calibrate (see calibrate_linux.go), never assumed.
package vmaflags

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// VMA is one mapping as the kernel holds it.
type VMA struct {
	Start, End uint64
	Flags      uint64 // vm_flags
}

var prog struct {
	once sync.Once
	p    *ebpf.Program
	err  error
}

// program loads the iterator once: for each VMA it writes start, end
// and flags (three little-endian words) to the iterator's file.
func program() (*ebpf.Program, error) {
	prog.once.Do(func() {
		prog.p, prog.err = load()
	})
	return prog.p, prog.err
}

// offsets are the byte offsets the program reads, from the kernel's BTF.
type offsets struct {
	meta, vma          int16 // in struct bpf_iter__task_vma
	seq                int16 // in struct bpf_iter_meta
	start, end, vflags int16 // in struct vm_area_struct
}

func load() (*ebpf.Program, error) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return nil, fmt.Errorf("vmaflags: kernel BTF: %w", err)
	}
	var o offsets
	for _, f := range []struct {
		st, member string
		to         *int16
	}{
		{"bpf_iter__task_vma", "meta", &o.meta},
		{"bpf_iter__task_vma", "vma", &o.vma},
		{"bpf_iter_meta", "seq", &o.seq},
		{"vm_area_struct", "vm_start", &o.start},
		{"vm_area_struct", "vm_end", &o.end},
		{"vm_area_struct", "vm_flags", &o.vflags},
	} {
		var st *btf.Struct
		if err := spec.TypeByName(f.st, &st); err != nil {
			return nil, fmt.Errorf("vmaflags: kernel BTF: struct %s: %w", f.st, err)
		}
		off, size, ok := memberOffset(st.Members, f.member)
		if !ok || size != 8 || off%8 != 0 || off > 1<<14 {
			return nil, fmt.Errorf("vmaflags: kernel BTF: %s.%s: no 8-byte member found", f.st, f.member)
		}
		*f.to = int16(off)
	}
	const rec = 24
	insns := asm.Instructions{
		asm.LoadMem(asm.R6, asm.R1, o.meta, asm.DWord),
		asm.LoadMem(asm.R7, asm.R1, o.vma, asm.DWord),
		asm.JEq.Imm(asm.R7, 0, "out"),
		asm.LoadMem(asm.R2, asm.R7, o.start, asm.DWord),
		asm.StoreMem(asm.RFP, -rec, asm.R2, asm.DWord),
		asm.LoadMem(asm.R2, asm.R7, o.end, asm.DWord),
		asm.StoreMem(asm.RFP, -rec+8, asm.R2, asm.DWord),
		asm.LoadMem(asm.R2, asm.R7, o.vflags, asm.DWord),
		asm.StoreMem(asm.RFP, -rec+16, asm.R2, asm.DWord),
		asm.LoadMem(asm.R1, asm.R6, o.seq, asm.DWord),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -rec),
		asm.Mov.Imm(asm.R3, rec),
		asm.FnSeqWrite.Call(),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
		asm.Return(),
	}
	p, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{
		Type: ebpf.Tracing, AttachType: ebpf.AttachTraceIter, AttachTo: "task_vma",
		Instructions: insns,
		// bpf_seq_write is offered to GPL-compatible programs only.
		License: "Dual MIT/GPL",
	}, ebpf.ProgramOptions{KernelTypes: spec})
	if err != nil {
		return nil, fmt.Errorf("vmaflags: load the task_vma iterator: %w", err)
	}
	return p, nil
}

// memberOffset finds name among ms, inside anonymous structs and unions
// too (vm_flags sits in one), and returns its byte offset and size.
func memberOffset(ms []btf.Member, name string) (int, int, bool) {
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
		if off, size, ok := memberOffset(inner, name); ok {
			return int(m.Offset/8) + off, size, true
		}
	}
	return 0, 0, false
}

// iterTaskInfo is union bpf_iter_link_info's task member
// (include/uapi/linux/bpf.h), padded to the union's size.
type iterTaskInfo struct {
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

// ErrUnavailable wraps why the iterator cannot be used here (no BTF, no
// BPF); callers fall back to smaps.
var ErrUnavailable = errors.New("vmaflags: BPF task_vma iterator unavailable")

// Read lists the VMAs of process pid (its thread group's mm), in address
// order. The caller makes sure they cannot change meanwhile (the process
// is frozen) if it needs one consistent view.
func Read(pid int) ([]VMA, error) {
	p, err := program()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	info := iterTaskInfo{Pid: uint32(pid)}
	la := linkCreateIter{ProgFd: uint32(p.FD()), AttachType: unix.BPF_TRACE_ITER,
		IterInfo: uint64(uintptr(unsafe.Pointer(&info))), IterInfoLen: uint32(unsafe.Sizeof(info))}
	lfd, err := bpf(unix.BPF_LINK_CREATE, unsafe.Pointer(&la), unsafe.Sizeof(la))
	if err != nil {
		return nil, fmt.Errorf("%w: link: %v", ErrUnavailable, err)
	}
	defer unix.Close(lfd)
	ic := iterCreate{LinkFd: uint32(lfd)}
	ifd, err := bpf(unix.BPF_ITER_CREATE, unsafe.Pointer(&ic), unsafe.Sizeof(ic))
	if err != nil {
		return nil, fmt.Errorf("vmaflags: pid %d: iterator: %w", pid, err)
	}
	f := os.NewFile(uintptr(ifd), "task_vma")
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("vmaflags: pid %d: %w", pid, err)
	}
	return parse(b)
}

// parse decodes the iterator's records.
func parse(b []byte) ([]VMA, error) {
	if len(b)%24 != 0 {
		return nil, fmt.Errorf("vmaflags: %d bytes of records (not a multiple of 24)", len(b))
	}
	out := make([]VMA, 0, len(b)/24)
	le := func(o int) uint64 {
		var v uint64
		for i := 7; i >= 0; i-- {
			v = v<<8 | uint64(b[o+i])
		}
		return v
	}
	for o := 0; o < len(b); o += 24 {
		v := VMA{Start: le(o), End: le(o + 8), Flags: le(o + 16)}
		if v.End <= v.Start || (len(out) > 0 && v.Start < out[len(out)-1].End) {
			return nil, fmt.Errorf("vmaflags: record %d: bad or unordered range %#x-%#x", o/24, v.Start, v.End)
		}
		out = append(out, v)
	}
	return out, nil
}
