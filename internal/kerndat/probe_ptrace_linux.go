package kerndat

import (
	"fmt"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const stopTimeout = 5 * time.Second

// withSeized starts a sleeper, seizes and interrupts it, and runs fn while
// it is in its group stop. ptrace requests must come from the tracer
// thread, so the goroutine stays on one OS thread until the tracee is dead.
func withSeized(fn func(pid int) error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	s, err := startSleeper(sleeperOpts{})
	if err != nil {
		return err
	}
	defer s.kill()
	if err := unix.PtraceSeize(s.pid); err != nil {
		return fmt.Errorf("PTRACE_SEIZE %d: %w", s.pid, err)
	}
	if err := unix.PtraceInterrupt(s.pid); err != nil {
		return fmt.Errorf("PTRACE_INTERRUPT %d: %w", s.pid, err)
	}
	ws, err := s.waitStop(stopTimeout)
	if err != nil {
		return err
	}
	if ws.StopSignal() != unix.SIGTRAP || ws.TrapCause() != unix.PTRACE_EVENT_STOP {
		return fmt.Errorf("pid %d stopped with %v cause %d, want PTRACE_EVENT_STOP", s.pid, ws.StopSignal(), ws.TrapCause())
	}
	return fn(s.pid)
}

func ptraceRaw(req, pid int, addr, data uintptr) (uintptr, error) {
	r, _, e := unix.Syscall6(unix.SYS_PTRACE, uintptr(req), uintptr(pid), addr, data, 0, 0)
	if e != 0 {
		return r, e
	}
	return r, nil
}

// probePtraceSeize: seize + interrupt reach a group stop in which the
// registers can be read.
func probePtraceSeize() error {
	return withSeized(func(pid int) error {
		return checkRegs(pid)
	})
}

// probePeeksiginfo: PTRACE_PEEKSIGINFO and PTRACE_GETSIGMASK on a tracee.
func probePeeksiginfo() error {
	return withSeized(func(pid int) error {
		args := ptracePeeksiginfoArgs{Nr: 1}
		var si [128]byte
		n, err := ptraceRaw(unix.PTRACE_PEEKSIGINFO, pid, uintptr(unsafe.Pointer(&args)), uintptr(unsafe.Pointer(&si[0])))
		if err != nil {
			return fmt.Errorf("PTRACE_PEEKSIGINFO %d: %w", pid, err)
		}
		if n != 0 {
			return fmt.Errorf("PTRACE_PEEKSIGINFO %d: %d pending signals on an idle sleeper", pid, n)
		}
		var mask uint64
		if _, err := ptraceRaw(unix.PTRACE_GETSIGMASK, pid, 8, uintptr(unsafe.Pointer(&mask))); err != nil {
			return fmt.Errorf("PTRACE_GETSIGMASK %d: %w", pid, err)
		}
		return nil
	})
}

// probeRseqConf: PTRACE_GET_RSEQ_CONFIGURATION returns the tracee's rseq
// area (glibc >= 2.35 registers one in every thread).
func probeRseqConf() error {
	return withSeized(func(pid int) error {
		var c ptraceRseqConfiguration
		n, err := ptraceRaw(unix.PTRACE_GET_RSEQ_CONFIGURATION, pid, unsafe.Sizeof(c), uintptr(unsafe.Pointer(&c)))
		if err != nil {
			return fmt.Errorf("PTRACE_GET_RSEQ_CONFIGURATION %d: %w", pid, err)
		}
		if n != unsafe.Sizeof(c) {
			return fmt.Errorf("PTRACE_GET_RSEQ_CONFIGURATION %d returned %d bytes, want %d", pid, n, unsafe.Sizeof(c))
		}
		return nil
	})
}

// probeSeccompSuspend: PTRACE_O_SUSPEND_SECCOMP can be set on a tracee.
func probeSeccompSuspend() error {
	return withSeized(func(pid int) error {
		if err := unix.PtraceSetOptions(pid, unix.PTRACE_O_SUSPEND_SECCOMP); err != nil {
			return fmt.Errorf("PTRACE_SETOPTIONS PTRACE_O_SUSPEND_SECCOMP %d: %w", pid, err)
		}
		return nil
	})
}

// probeSeccompFilters: a raw child installs a one-instruction filter; the
// tracer reads it back with PTRACE_SECCOMP_GET_FILTER.
func probeSeccompFilters() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var ready [2]int
	if err := unix.Pipe2(ready[:], unix.O_CLOEXEC); err != nil {
		return fmt.Errorf("pipe: %w", err)
	}
	defer unix.Close(ready[0])
	filter := []unix.SockFilter{{Code: 0x06 /* BPF_RET|BPF_K */, K: unix.SECCOMP_RET_ALLOW}}
	prog := &unix.SockFprog{Len: 1, Filter: &filter[0]}
	one := []byte{1}
	var p rawProg
	p.add(unix.SYS_PRCTL, unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL))
	p.add(unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
	p.add(unix.SYS_PRCTL, unix.PR_SET_SECCOMP, unix.SECCOMP_MODE_FILTER, uintptr(unsafe.Pointer(prog)))
	p.add(unix.SYS_WRITE, uintptr(ready[1]), uintptr(unsafe.Pointer(&one[0])), 1)
	p.hold = true
	c, err := startRaw(&p, 0, filter, prog, one)
	unix.Close(ready[1])
	if err != nil {
		return err
	}
	defer c.free()
	defer c.kill()
	if err := waitReady(ready[0], c); err != nil {
		return err
	}
	if err := unix.PtraceSeize(c.pid); err != nil {
		return fmt.Errorf("PTRACE_SEIZE %d: %w", c.pid, err)
	}
	if err := unix.PtraceInterrupt(c.pid); err != nil {
		return fmt.Errorf("PTRACE_INTERRUPT %d: %w", c.pid, err)
	}
	s := &sleeper{pid: c.pid}
	if _, err := s.waitStop(stopTimeout); err != nil {
		c.reaped = s.reaped
		return err
	}
	n, err := ptraceRaw(unix.PTRACE_SECCOMP_GET_FILTER, c.pid, 0, 0)
	if err != nil {
		return fmt.Errorf("PTRACE_SECCOMP_GET_FILTER %d: %w", c.pid, err)
	}
	if n != 1 {
		return fmt.Errorf("PTRACE_SECCOMP_GET_FILTER %d: filter has %d instructions, want 1", c.pid, n)
	}
	return nil
}

// waitReady reads the byte a holding raw child writes once its program ran,
// or reports why it failed.
func waitReady(fd int, c *rawChildProc) error {
	var b [1]byte
	t := time.AfterFunc(stopTimeout, func() { _ = unix.Kill(c.pid, unix.SIGKILL) })
	defer t.Stop()
	for {
		n, err := unix.Read(fd, b[:])
		if err == unix.EINTR {
			continue
		}
		if n == 1 {
			return nil
		}
		// EOF: the child died before reaching its ready step.
		if err := c.wait(stopTimeout); err != nil {
			return err
		}
		return fmt.Errorf("raw child %d exited before it was ready", c.pid)
	}
}
