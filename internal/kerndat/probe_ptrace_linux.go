package kerndat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/ptrace"
)

const stopTimeout = 5 * time.Second

// The ptrace probes go through internal/ptrace, the tracer the dumper uses,
// so that `check` exercises the very requests (and the one-thread tracer
// design) a dump depends on, not a parallel copy of them.

// withSeized starts a sleeper, seizes it (with PTRACE_O_* flags opts) and
// interrupts it, and runs fn while it sits in the interrupt trap. The
// sleeper is detached, then killed and reaped, before withSeized returns.
func withSeized(opts int, fn func(t *ptrace.Tracer, pid int) error) error {
	// The sleeper's Pdeathsig fires when the thread that forked it exits:
	// keep this goroutine, and so that thread, until the sleeper is dead.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	s, err := startSleeper(sleeperOpts{})
	if err != nil {
		return err
	}
	defer s.kill()
	gone, err := seized(s.pid, opts, fn)
	s.reaped = s.reaped || gone
	return err
}

// seized seizes and interrupts pid with a fresh Tracer, runs fn in the
// interrupt trap, and closes the tracer, which detaches pid, so that the
// caller can kill and reap it as an ordinary child. gone reports that pid
// died and the tracer already reaped it: the caller must not wait for it.
func seized(pid, opts int, fn func(t *ptrace.Tracer, pid int) error) (gone bool, err error) {
	t := ptrace.New()
	defer t.Close()
	if err := t.Seize(pid, opts); err != nil {
		return false, fmt.Errorf("PTRACE_SEIZE: %w", err)
	}
	// Interrupt waits for the trap without a limit; a probe must not hang.
	timer := time.AfterFunc(stopTimeout, func() { _ = unix.Kill(pid, unix.SIGKILL) })
	st, err := t.Interrupt(pid)
	timer.Stop()
	if err != nil {
		return errors.Is(err, ptrace.ErrGone), fmt.Errorf("PTRACE_INTERRUPT: %w", err)
	}
	if st.Sig != unix.SIGTRAP || st.Event != unix.PTRACE_EVENT_STOP {
		return false, fmt.Errorf("pid %d stopped with %v, want a PTRACE_EVENT_STOP trap", pid, st)
	}
	return false, fn(t, pid)
}

// probePtraceSeize: seize + interrupt reach a trap in which the registers
// can be read.
func probePtraceSeize() error {
	return withSeized(0, checkRegs)
}

// probePeeksiginfo: PTRACE_PEEKSIGINFO and PTRACE_GETSIGMASK on a tracee.
func probePeeksiginfo() error {
	return withSeized(0, func(t *ptrace.Tracer, pid int) error {
		si, err := t.PeekSiginfo(pid, false)
		if err != nil {
			return fmt.Errorf("PTRACE_PEEKSIGINFO: %w", err)
		}
		if len(si) != 0 {
			return fmt.Errorf("PTRACE_PEEKSIGINFO %d: %d pending signals on an idle sleeper", pid, len(si))
		}
		if _, err := t.GetSigmask(pid); err != nil {
			return fmt.Errorf("PTRACE_GETSIGMASK: %w", err)
		}
		return nil
	})
}

// probeRseqConf: PTRACE_GET_RSEQ_CONFIGURATION returns the tracee's rseq
// area (glibc >= 2.35 registers one in every thread, unless tuned off).
func probeRseqConf() error {
	return withSeized(0, func(t *ptrace.Tracer, pid int) error {
		c, err := t.GetRseqConfig(pid)
		if err != nil {
			return fmt.Errorf("PTRACE_GET_RSEQ_CONFIGURATION: %w", err)
		}
		// struct rseq is at least its original 32 bytes.
		if c.AbiPointer != 0 && c.AbiSize < 32 {
			return fmt.Errorf("PTRACE_GET_RSEQ_CONFIGURATION %d: rseq area at %#x of %d bytes, want >= 32", pid, c.AbiPointer, c.AbiSize)
		}
		return nil
	})
}

// probeSeccompSuspend: a tracee can be seized with
// PTRACE_O_SUSPEND_SECCOMP (the kernel refuses the option without
// CONFIG_CHECKPOINT_RESTORE or CAP_SYS_ADMIN) and interrupted.
func probeSeccompSuspend() error {
	err := withSeized(unix.PTRACE_O_SUSPEND_SECCOMP, func(*ptrace.Tracer, int) error { return nil })
	if err != nil {
		return fmt.Errorf("PTRACE_O_SUSPEND_SECCOMP: %w", err)
	}
	return nil
}

// probeSeccompFilters: a puppet installs a one-instruction filter (both
// prctls injected); the tracer reads it back with PTRACE_SECCOMP_GET_FILTER.
func probeSeccompFilters() error {
	tr := ptrace.New()
	defer tr.Close()
	p, stop, err := startPuppet(tr)
	if err != nil {
		return err
	}
	defer stop()
	pid := p.Pid
	err = inSession(tr, pid, func(s *ptrace.Session, scratch uint64) error {
		// struct sock_fprog at scratch, its one struct sock_filter
		// (BPF_RET|BPF_K, SECCOMP_RET_ALLOW) right after it.
		var buf [24]byte
		binary.NativeEndian.PutUint16(buf[0:], 1)
		binary.NativeEndian.PutUint64(buf[8:], scratch+16)
		binary.NativeEndian.PutUint16(buf[16:], 0x06)
		binary.NativeEndian.PutUint32(buf[20:], unix.SECCOMP_RET_ALLOW)
		if err := ptrace.WriteMem(pid, scratch, buf[:]); err != nil {
			return fmt.Errorf("puppet %d: %w", pid, err)
		}
		return injectAll(s, []injected{
			{"PR_SET_NO_NEW_PRIVS", unix.SYS_PRCTL, []uint64{unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0}},
			{"PR_SET_SECCOMP filter", unix.SYS_PRCTL, []uint64{unix.PR_SET_SECCOMP, unix.SECCOMP_MODE_FILTER, scratch}},
		})
	})
	if err != nil {
		return err
	}
	// internal/ptrace has no call for this request (godwit does not dump
	// seccomp filters itself yet), so it is issued raw, on the tracer
	// thread that holds the stopped puppet.
	return tr.Do(func() error {
		n, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SECCOMP_GET_FILTER, uintptr(pid), 0, 0, 0, 0)
		if e != 0 {
			return fmt.Errorf("PTRACE_SECCOMP_GET_FILTER %d: %w", pid, e)
		}
		if n != 1 {
			return fmt.Errorf("PTRACE_SECCOMP_GET_FILTER %d: filter has %d instructions, want 1", pid, n)
		}
		return nil
	})
}
