package ptrace

import (
	"encoding/binary"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Regs is struct user_regs_struct (NT_PRSTATUS), fs_base and gs_base
// included.
type Regs = unix.PtraceRegs

func getRegs(tid int, r *Regs) error {
	iov := unix.Iovec{Base: (*byte)(unsafe.Pointer(r))}
	iov.SetLen(int(unsafe.Sizeof(*r)))
	if _, err := ptrace(unix.PTRACE_GETREGSET, tid, unix.NT_PRSTATUS, uintptr(unsafe.Pointer(&iov))); err != nil {
		return fmt.Errorf("get registers of %d: %w", tid, err)
	}
	return nil
}

func setRegs(tid int, r *Regs) error {
	iov := unix.Iovec{Base: (*byte)(unsafe.Pointer(r))}
	iov.SetLen(int(unsafe.Sizeof(*r)))
	if _, err := ptrace(unix.PTRACE_SETREGSET, tid, unix.NT_PRSTATUS, uintptr(unsafe.Pointer(&iov))); err != nil {
		return fmt.Errorf("set registers of %d: %w", tid, err)
	}
	return nil
}

// GetRegs reads the general registers of stopped tracee tid.
func (t *Tracer) GetRegs(tid int) (Regs, error) {
	var r Regs
	err := t.Do(func() error {
		if _, err := t.getStopped(tid); err != nil {
			return err
		}
		return getRegs(tid, &r)
	})
	return r, err
}

// SetRegs writes the general registers of stopped tracee tid.
func (t *Tracer) SetRegs(tid int, r Regs) error {
	return t.Do(func() error {
		if _, err := t.getStopped(tid); err != nil {
			return err
		}
		return setRegs(tid, &r)
	})
}

// xstateProbeSize is larger than any XSAVE area the kernel offers today
// (AMX makes it ~11 KiB); the kernel shortens the iovec to the real size.
const xstateProbeSize = 64 << 10

// GetFPU returns the raw NT_X86_XSTATE buffer of tid (the task's XSAVE area
// in standard format, as CRIU's core image stores it). Its length is the
// kernel's user xstate size, which SetFPU must be given exactly.
func (t *Tracer) GetFPU(tid int) ([]byte, error) {
	var out []byte
	err := t.Do(func() error {
		if _, err := t.getStopped(tid); err != nil {
			return err
		}
		var err error
		out, err = t.getFPU(tid)
		return err
	})
	return out, err
}

func (t *Tracer) getFPU(tid int) ([]byte, error) {
	size := t.xstateSize
	if size == 0 {
		size = xstateProbeSize
	}
	buf := make([]byte, size)
	iov := unix.Iovec{Base: &buf[0]}
	iov.SetLen(len(buf))
	if _, err := ptrace(unix.PTRACE_GETREGSET, tid, unix.NT_X86_XSTATE, uintptr(unsafe.Pointer(&iov))); err != nil {
		return nil, fmt.Errorf("get xstate of %d: %w", tid, err)
	}
	t.xstateSize = int(iov.Len)
	return buf[:iov.Len], nil
}

func peekSiginfo(tid int, shared bool) ([]Siginfo, error) {
	var out []Siginfo
	const batch = 32
	buf := make([]Siginfo, batch)
	args := peekSiginfoArgs{Nr: batch}
	if shared {
		args.Flags = unix.PTRACE_PEEKSIGINFO_SHARED
	}
	for {
		n, err := ptrace(unix.PTRACE_PEEKSIGINFO, tid, uintptr(unsafe.Pointer(&args)), uintptr(unsafe.Pointer(&buf[0])))
		if err != nil {
			return nil, fmt.Errorf("peek siginfo of %d at %d: %w", tid, args.Off, err)
		}
		if n == 0 {
			return out, nil
		}
		out = append(out, buf[:n]...)
		args.Off += uint64(n)
	}
}

func getRseqConfig(tid int) (RseqConfig, error) {
	var c RseqConfig
	if _, err := ptrace(unix.PTRACE_GET_RSEQ_CONFIGURATION, tid, unsafe.Sizeof(c), uintptr(unsafe.Pointer(&c))); err != nil {
		return c, fmt.Errorf("get rseq configuration of %d: %w", tid, err)
	}
	return c, nil
}

// ThreadState is what a dumper reads of each stopped thread through ptrace.
type ThreadState struct {
	Regs    Regs
	XState  []byte // NT_X86_XSTATE
	Sigmask uint64
	Pending []Siginfo // the thread's private queue
	Rseq    RseqConfig
	Stop    Stop // the interrupt/group stop it sits in
}

// ThreadState reads all of ThreadState in one trip to the tracer thread
// (each trip costs a cross-thread wake-up, several µs on these VMs).
func (t *Tracer) ThreadState(tid int) (*ThreadState, error) {
	ts := &ThreadState{}
	err := t.Do(func() error {
		tk, err := t.getStopped(tid)
		if err != nil {
			return err
		}
		ts.Stop = tk.last
		if err := getRegs(tid, &ts.Regs); err != nil {
			return err
		}
		if ts.XState, err = t.getFPU(tid); err != nil {
			return err
		}
		if ts.Sigmask, err = getSigmask(tid); err != nil {
			return err
		}
		if ts.Pending, err = peekSiginfo(tid, false); err != nil {
			return err
		}
		ts.Rseq, err = getRseqConfig(tid)
		return err
	})
	if err != nil {
		return nil, err
	}
	return ts, nil
}

// SetFPU writes an NT_X86_XSTATE buffer (from GetFPU, possibly of another
// task on a CPU with the same xfeatures) into tid.
func (t *Tracer) SetFPU(tid int, xstate []byte) error {
	if len(xstate) == 0 {
		return fmt.Errorf("set xstate of %d: empty buffer", tid)
	}
	return t.Do(func() error {
		if _, err := t.getStopped(tid); err != nil {
			return err
		}
		iov := unix.Iovec{Base: &xstate[0]}
		iov.SetLen(len(xstate))
		if _, err := ptrace(unix.PTRACE_SETREGSET, tid, unix.NT_X86_XSTATE, uintptr(unsafe.Pointer(&iov))); err != nil {
			return fmt.Errorf("set xstate of %d (%d bytes): %w", tid, len(xstate), err)
		}
		return nil
	})
}

func getSigmask(tid int) (uint64, error) {
	var m uint64
	if _, err := ptrace(unix.PTRACE_GETSIGMASK, tid, 8, uintptr(unsafe.Pointer(&m))); err != nil {
		return 0, fmt.Errorf("get signal mask of %d: %w", tid, err)
	}
	return m, nil
}

func setSigmask(tid int, m uint64) error {
	if _, err := ptrace(unix.PTRACE_SETSIGMASK, tid, 8, uintptr(unsafe.Pointer(&m))); err != nil {
		return fmt.Errorf("set signal mask of %d: %w", tid, err)
	}
	return nil
}

// GetSigmask returns the blocked-signal mask of tid (bit n-1 = signal n).
// For a task inside sigsuspend/ppoll/pselect/epoll_pwait the kernel returns
// the mask saved by that syscall, i.e. the one the program will run with
// again.
func (t *Tracer) GetSigmask(tid int) (uint64, error) {
	var m uint64
	err := t.Do(func() error {
		if _, err := t.getStopped(tid); err != nil {
			return err
		}
		var err error
		m, err = getSigmask(tid)
		return err
	})
	return m, err
}

// SetSigmask sets the blocked-signal mask of tid (SIGKILL and SIGSTOP are
// dropped by the kernel). It also cancels a pending restore of a mask saved
// by sigsuspend-like syscalls.
func (t *Tracer) SetSigmask(tid int, m uint64) error {
	return t.Do(func() error {
		if _, err := t.getStopped(tid); err != nil {
			return err
		}
		return setSigmask(tid, m)
	})
}

// Siginfo is a raw siginfo_t, as CRIU's siginfo images store it.
type Siginfo [siginfoSize]byte

// Signo, Errno and Code decode the common head of the siginfo.
func (s *Siginfo) Signo() int32 { return int32(binary.NativeEndian.Uint32(s[0:])) }
func (s *Siginfo) Errno() int32 { return int32(binary.NativeEndian.Uint32(s[4:])) }
func (s *Siginfo) Code() int32  { return int32(binary.NativeEndian.Uint32(s[8:])) }

// PeekSiginfo returns the queued signals of tid without dequeuing them:
// the thread's private queue, or with shared the process-wide queue.
func (t *Tracer) PeekSiginfo(tid int, shared bool) ([]Siginfo, error) {
	var out []Siginfo
	err := t.Do(func() error {
		if _, err := t.getStopped(tid); err != nil {
			return err
		}
		var err error
		out, err = peekSiginfo(tid, shared)
		return err
	})
	return out, err
}

// GetRseqConfig returns the rseq registration of tid (AbiPointer 0 if
// none).
func (t *Tracer) GetRseqConfig(tid int) (RseqConfig, error) {
	var c RseqConfig
	err := t.Do(func() error {
		if _, err := t.getStopped(tid); err != nil {
			return err
		}
		var err error
		c, err = getRseqConfig(tid)
		return err
	})
	return c, err
}

// SyscallInfo is the decoded struct ptrace_syscall_info.
type SyscallInfo struct {
	Op   uint8 // PTRACE_SYSCALL_INFO_{NONE,ENTRY,EXIT,SECCOMP}
	Arch uint32
	IP   uint64
	SP   uint64
	Nr   uint64    // entry, seccomp
	Args [6]uint64 // entry, seccomp
	Rval int64     // exit
	Err  bool      // exit: Rval is -errno
}

func getSyscallInfo(tid int) (SyscallInfo, error) {
	var b [ptraceSyscallInfoSize]byte
	if _, err := ptrace(unix.PTRACE_GET_SYSCALL_INFO, tid, uintptr(len(b)), uintptr(unsafe.Pointer(&b[0]))); err != nil {
		return SyscallInfo{}, fmt.Errorf("get syscall info of %d: %w", tid, err)
	}
	le := binary.NativeEndian
	si := SyscallInfo{Op: b[0], Arch: le.Uint32(b[4:]), IP: le.Uint64(b[8:]), SP: le.Uint64(b[16:])}
	switch si.Op {
	case unix.PTRACE_SYSCALL_INFO_ENTRY, unix.PTRACE_SYSCALL_INFO_SECCOMP:
		si.Nr = le.Uint64(b[24:])
		for i := range si.Args {
			si.Args[i] = le.Uint64(b[32+8*i:])
		}
	case unix.PTRACE_SYSCALL_INFO_EXIT:
		si.Rval = int64(le.Uint64(b[24:]))
		si.Err = b[32] != 0
	}
	return si, nil
}

// GetSyscallInfo describes the syscall stop tid is in (Op NONE for an
// interrupt or signal stop: use the registers' orig_rax and rax then).
func (t *Tracer) GetSyscallInfo(tid int) (SyscallInfo, error) {
	var si SyscallInfo
	err := t.Do(func() error {
		if _, err := t.getStopped(tid); err != nil {
			return err
		}
		var err error
		si, err = getSyscallInfo(tid)
		return err
	})
	return si, err
}

// RestartState classifies the registers of a task stopped outside a syscall
// stop: whether it was interrupted inside a syscall the kernel will restart.
type RestartState int

const (
	NoRestart    RestartState = iota // not in a syscall, or it completed
	RestartSame                      // ERESTARTSYS/NOINTR/NOHAND: re-run orig_rax
	RestartBlock                     // ERESTART_RESTARTBLOCK: restart_syscall(2)
)

// Restart tells what the kernel will do with regs when the task resumes
// without running a signal handler.
func Restart(r *Regs) RestartState {
	if int64(r.Orig_rax) < 0 {
		return NoRestart
	}
	switch -int64(r.Rax) {
	case ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND:
		return RestartSame
	case ERESTART_RESTARTBLOCK:
		return RestartBlock
	}
	return NoRestart
}
