// Package bpfiter reads socket state that no system call or sock_diag
// message reports, with BPF iterators built here from the kernel's BTF.
//
// ReuseportSteering finds the steering program of a SO_REUSEPORT group
// (SO_ATTACH_REUSEPORT_CBPF or _EBPF): the kernel keeps it in the
// group (sk->sk_reuseport_cb->prog) and offers no way to read it back,
// or even to see that it is there, short of SO_DETACH_REUSEPORT_BPF,
// which removes it. A task_file iterator walks the process's fds; for
// each socket in a group with a program it writes the socket's inode,
// the program's type and its id (0 for a classic BPF program, which
// never gets one).
package bpfiter

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// Steering is the steering program of a socket's reuseport group.
type Steering struct {
	ProgType uint32 // enum bpf_prog_type
	// ProgID is the program's id (bpftool prog show id N); 0: a classic
	// BPF program (SO_ATTACH_REUSEPORT_CBPF), which has none.
	ProgID uint32
}

func (s Steering) String() string {
	if s.ProgID == 0 {
		return "a classic BPF program (SO_ATTACH_REUSEPORT_CBPF)"
	}
	return fmt.Sprintf("eBPF program id %d of type %d (SO_ATTACH_REUSEPORT_EBPF)", s.ProgID, s.ProgType)
}

// ErrUnavailable wraps why the iterator cannot run here (no BTF, no
// BPF, a kernel older than 5.11 without bpf_sock_from_file).
var ErrUnavailable = errors.New("BPF task_file iterator unavailable")

var steerProg struct {
	once sync.Once
	done atomic.Bool // the load was tried: p or err is set
	p    *ebpf.Program
	err  error
}

func steeringProgram() (*ebpf.Program, error) {
	steerProg.once.Do(func() {
		steerProg.p, steerProg.err = loadSteering()
		steerProg.done.Store(true)
	})
	return steerProg.p, steerProg.err
}

// Prepare loads the iterator program ReuseportSteering runs, once per
// process, keeping the result: loading parses the kernel's BTF and runs
// the verifier (50-190 ms), which a dump does before it freezes its
// target rather than on the first ReuseportSteering, inside the freeze.
// The error, wrapping ErrUnavailable, is the one ReuseportSteering will
// return.
func Prepare() error {
	if _, err := steeringProgram(); err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return nil
}

// Prepared reports whether the program's load was tried (by Prepare or
// ReuseportSteering), successfully or not.
func Prepared() bool { return steerProg.done.Load() }

// field is a member whose byte offset the program needs.
type field struct {
	st, member string
	size       int // its size in bytes, checked against the BTF
}

// The record the program writes: the socket's inode (8 bytes), the
// program's type and id (4 bytes each), in host byte order.
const recSize = 16

func loadSteering() (*ebpf.Program, error) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return nil, fmt.Errorf("kernel BTF: %w", err)
	}
	fs := []field{
		{"bpf_iter__task_file", "meta", 8}, {"bpf_iter__task_file", "file", 8},
		{"bpf_iter_meta", "seq", 8},
		{"file", "f_inode", 8}, {"inode", "i_ino", 8},
		{"socket", "sk", 8}, {"sock", "sk_reuseport_cb", 8},
		{"sock_reuseport", "prog", 8},
		{"bpf_prog", "type", 4}, {"bpf_prog", "aux", 8}, {"bpf_prog_aux", "id", 4},
	}
	off := map[field]int16{}
	for _, f := range fs {
		if off[f], err = offsetOf(spec, f); err != nil {
			return nil, err
		}
	}
	// o: an offset looked up above (the table lists every one used).
	o := func(st, member string) int16 {
		for _, f := range fs {
			if f.st == st && f.member == member {
				return off[f]
			}
		}
		return -1 << 15 // not reached: the verifier would refuse it
	}
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		// The last call of a walk has no file.
		asm.LoadMem(asm.R7, asm.R6, o("bpf_iter__task_file", "file"), asm.DWord),
		asm.JEq.Imm(asm.R7, 0, "out"),
		// NULL unless the file is a socket.
		asm.Mov.Reg(asm.R1, asm.R7),
		asm.FnSockFromFile.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.LoadMem(asm.R1, asm.R0, o("socket", "sk"), asm.DWord),
		asm.JEq.Imm(asm.R1, 0, "out"),
		asm.LoadMem(asm.R1, asm.R1, o("sock", "sk_reuseport_cb"), asm.DWord),
		asm.JEq.Imm(asm.R1, 0, "out"),
		asm.LoadMem(asm.R8, asm.R1, o("sock_reuseport", "prog"), asm.DWord),
		asm.JEq.Imm(asm.R8, 0, "out"),
		asm.LoadMem(asm.R2, asm.R7, o("file", "f_inode"), asm.DWord),
		asm.JEq.Imm(asm.R2, 0, "out"),
		asm.LoadMem(asm.R2, asm.R2, o("inode", "i_ino"), asm.DWord),
		asm.StoreMem(asm.RFP, -recSize, asm.R2, asm.DWord),
		asm.LoadMem(asm.R2, asm.R8, o("bpf_prog", "type"), asm.Word),
		asm.StoreMem(asm.RFP, -recSize+8, asm.R2, asm.Word),
		asm.StoreImm(asm.RFP, -recSize+12, 0, asm.Word),
		asm.LoadMem(asm.R2, asm.R8, o("bpf_prog", "aux"), asm.DWord),
		asm.JEq.Imm(asm.R2, 0, "write"),
		asm.LoadMem(asm.R2, asm.R2, o("bpf_prog_aux", "id"), asm.Word),
		asm.StoreMem(asm.RFP, -recSize+12, asm.R2, asm.Word),
		asm.LoadMem(asm.R1, asm.R6, o("bpf_iter__task_file", "meta"), asm.DWord).WithSymbol("write"),
		asm.LoadMem(asm.R1, asm.R1, o("bpf_iter_meta", "seq"), asm.DWord),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -recSize),
		asm.Mov.Imm(asm.R3, recSize),
		asm.FnSeqWrite.Call(),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
		asm.Return(),
	}
	p, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{
		Type: ebpf.Tracing, AttachType: ebpf.AttachTraceIter, AttachTo: "task_file",
		Instructions: insns,
		// bpf_seq_write is offered to GPL-compatible programs only.
		License: "Dual MIT/GPL",
	}, ebpf.ProgramOptions{KernelTypes: spec})
	if err != nil {
		return nil, fmt.Errorf("load the task_file iterator: %w", err)
	}
	return p, nil
}

// offsetOf is f's byte offset in its struct, looked for inside
// anonymous structs and unions too.
func offsetOf(spec *btf.Spec, f field) (int16, error) {
	var st *btf.Struct
	if err := spec.TypeByName(f.st, &st); err != nil {
		return 0, fmt.Errorf("kernel BTF: struct %s: %w", f.st, err)
	}
	off, size, ok := MemberOffset(st.Members, f.member)
	if !ok || size != f.size || off%f.size != 0 || off > 1<<14 {
		return 0, fmt.Errorf("kernel BTF: %s.%s: no aligned %d-byte member", f.st, f.member, f.size)
	}
	return int16(off), nil
}

// ReuseportSteering returns, by socket inode, the steering programs of
// the reuseport groups of process pid's sockets: sockets in no group, or
// in a group without a program, are not listed. The process's fds must
// not change meanwhile (it is frozen) for the answer to hold.
func ReuseportSteering(pid int) (map[uint64]Steering, error) {
	p, err := steeringProgram()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	// The process by pidfd: a pid could be reused meanwhile.
	pfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd of %d: %w", pid, err)
	}
	defer unix.Close(pfd)
	b, err := walk(p, &TaskInfo{PidFd: uint32(pfd)})
	if errors.Is(err, unix.E2BIG) {
		// Before Linux 6.1 an iterator cannot be given a process: it
		// walks every process's fds. The answer, by inode, is the same.
		b, err = walk(p, nil)
	}
	if err != nil {
		return nil, fmt.Errorf("task_file iterator of %d: %w", pid, err)
	}
	return parseSteering(b)
}

// walk runs the iterator over the fds of the process info names (nil:
// of every process) and returns what it wrote.
func walk(p *ebpf.Program, info *TaskInfo) ([]byte, error) {
	b, err := Iterate(p, info)
	if err != nil && errors.Is(err, ErrLink) && !errors.Is(err, unix.E2BIG) {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return b, err
}

// parseSteering decodes the iterator's records. A socket may be listed
// more than once (several fds, threads with their own fd tables).
func parseSteering(b []byte) (map[uint64]Steering, error) {
	if len(b)%recSize != 0 {
		return nil, fmt.Errorf("task_file iterator: %d bytes of records (not a multiple of %d)", len(b), recSize)
	}
	out := map[uint64]Steering{}
	for o := 0; o < len(b); o += recSize {
		ino := binary.NativeEndian.Uint64(b[o:])
		s := Steering{ProgType: binary.NativeEndian.Uint32(b[o+8:]), ProgID: binary.NativeEndian.Uint32(b[o+12:])}
		if prev, ok := out[ino]; ok && prev != s {
			return nil, fmt.Errorf("task_file iterator: socket %d listed with two steering programs (%v, %v)", ino, prev, s)
		}
		out[ino] = s
	}
	return out, nil
}
