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
	"slices"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"

	"godwit/internal/bpfiter"
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
		off, size, ok := bpfiter.MemberOffset(st.Members, f.member)
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
	b, err := bpfiter.Iterate(p, &bpfiter.TaskInfo{Pid: uint32(pid)})
	if errors.Is(err, bpfiter.ErrLink) {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if err != nil {
		return nil, fmt.Errorf("vmaflags: pid %d: %w", pid, err)
	}
	return parse(b)
}

// parse decodes the iterator's records. In PID mode the iterator walks
// the mm once per thread that does not share the previous one's fd table
// (it skips threads by their files, not their mm): a thread that did
// unshare(CLONE_FILES) repeats the whole walk. A record starting below
// the previous one's end begins such a repeat; each repeat must be the
// first walk again (the caller froze the process), and the first is kept.
func parse(b []byte) ([]VMA, error) {
	if len(b)%24 != 0 {
		return nil, fmt.Errorf("vmaflags: %d bytes of records (not a multiple of 24)", len(b))
	}
	le := func(o int) uint64 {
		var v uint64
		for i := 7; i >= 0; i-- {
			v = v<<8 | uint64(b[o+i])
		}
		return v
	}
	var first, walk []VMA
	end := func() error {
		if first == nil {
			first = walk
		} else if !slices.Equal(walk, first) {
			return fmt.Errorf("the iterator's walks differ (%d and %d VMAs): the mappings changed during the read", len(first), len(walk))
		}
		walk = nil
		return nil
	}
	for o := 0; o < len(b); o += 24 {
		v := VMA{Start: le(o), End: le(o + 8), Flags: le(o + 16)}
		if v.End <= v.Start {
			return nil, fmt.Errorf("vmaflags: record %d: bad range %#x-%#x", o/24, v.Start, v.End)
		}
		if len(walk) > 0 && v.Start < walk[len(walk)-1].End {
			if err := end(); err != nil {
				return nil, fmt.Errorf("vmaflags: record %d: %w", o/24, err)
			}
		}
		walk = append(walk, v)
	}
	if len(walk) > 0 {
		if err := end(); err != nil {
			return nil, fmt.Errorf("vmaflags: %w", err)
		}
	}
	if first == nil {
		first = []VMA{}
	}
	return first, nil
}
