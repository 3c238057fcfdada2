package drivers

import (
	"fmt"

	"golang.org/x/sys/unix"

	"godwit/internal/abi/linux"
	"godwit/internal/inject"
	"godwit/internal/model"
)

// sigactionsDriver dumps and restores the signal dispositions.
type sigactionsDriver struct{}

func (sigactionsDriver) Name() string    { return "sigactions" }
func (sigactionsDriver) After() []string { return []string{PhaseThreads, "fs"} }

// CollectInjected reads every disposition with injected rt_sigaction; as
// CRIU: 62 entries, signals 1..64 in order without SIGKILL and SIGSTOP,
// whose actions cannot change.
func (k sigactionsDriver) CollectInjected(d *Dump, s *inject.Session) error {
	p, _ := k.PlanInjected(d, s)
	return runPlanned(s, p)
}

// PlanInjected reads every signal's action with rt_sigaction into the
// scratch.
func (sigactionsDriver) PlanInjected(d *Dump, s *inject.Session) (Planned, bool) {
	var calls []inject.Call
	for sig := 1; sig <= linux.NSig; sig++ {
		if sig == int(unix.SIGKILL) || sig == int(unix.SIGSTOP) {
			continue
		}
		calls = append(calls, inject.C(fmt.Sprintf("rt_sigaction(%d)", sig), unix.SYS_RT_SIGACTION, uint64(sig), 0,
			s.Scratch()+scratchSigact+uint64(sig-1)*linux.KernelSigactionSize, 8))
	}
	return Planned{Calls: calls, Done: func(_ []uint64, scratch []byte) error {
		d.Task.Sigactions = parseSigactions(scratch[scratchSigact:])
		return nil
	}}, true
}

// parseSigactions reads the actions rt_sigaction wrote at buf, one
// struct sigaction per signal from 1 (SIGKILL's and SIGSTOP's left out).
func parseSigactions(buf []byte) []model.Sigaction {
	var out []model.Sigaction
	for sig := 1; sig <= linux.NSig; sig++ {
		if sig == int(unix.SIGKILL) || sig == int(unix.SIGSTOP) {
			continue
		}
		b := buf[(sig-1)*linux.KernelSigactionSize:]
		out = append(out, model.Sigaction{
			Sig: sig, Handler: le.Uint64(b[0:]), Flags: le.Uint64(b[8:]), Restorer: le.Uint64(b[16:]), Mask: le.Uint64(b[24:]),
		})
	}
	return out
}

// Restore sets every handler with its original sa_restorer.
func (sigactionsDriver) Restore(r *Restore, s *inject.Session) error {
	// Queued (inject.Session.Later): they run with the session's next
	// calls, in the same stop.
	var buf []byte
	var calls []inject.Call
	for _, sa := range r.Task.Sigactions {
		sig := sa.Sig
		if sig == int(unix.SIGKILL) || sig == int(unix.SIGSTOP) {
			continue
		}
		off := uint64(len(buf))
		buf = le64(le64(le64(le64(buf, sa.Handler), sa.Flags), sa.Restorer), sa.Mask)
		calls = append(calls, inject.C(fmt.Sprintf("rt_sigaction %d", sig), unix.SYS_RT_SIGACTION, uint64(sig), off, 0, 8))
	}
	if len(calls) == 0 {
		return nil
	}
	a, err := s.Stash(buf)
	if err != nil {
		return err
	}
	for _, c := range calls {
		s.Later(c.What, c.Nr, c.Args[0], a+c.Args[1], c.Args[2], c.Args[3])
	}
	return nil
}

// signalsDriver restores the pending signals (the engine reads them with
// the registers, PTRACE_PEEKSIGINFO, when it freezes the task). They are
// queued last, after the credentials: a queue's owner is checked.
type signalsDriver struct{}

func (signalsDriver) Name() string    { return "signals" }
func (signalsDriver) After() []string { return []string{"creds"} }

// RestoreThread queues a thread's pending signals again, from the thread
// itself: the kernel lets a task queue any siginfo (si_code >= 0 or
// SI_TKILL, which others may not forge) only to itself. The leader also
// queues the process-wide ones.
func (signalsDriver) RestoreThread(r *Restore, s *inject.Session, t *model.Thread) error {
	pid := uint64(r.Task.Pid)
	queue := func(si *model.Siginfo, shared bool) error {
		info := si[:]
		a, err := s.Put(0, info)
		if err != nil {
			return err
		}
		sig := uint64(le.Uint32(info))
		if shared {
			_, err = s.Call(fmt.Sprintf("queue shared signal %d", sig), unix.SYS_RT_SIGQUEUEINFO, pid, sig, a)
		} else {
			_, err = s.Call(fmt.Sprintf("queue signal %d", sig), unix.SYS_RT_TGSIGQUEUEINFO, pid, uint64(t.Tid), sig, a)
		}
		return err
	}
	for i := range t.Pending {
		if err := queue(&t.Pending[i], false); err != nil {
			return err
		}
	}
	if t.Tid != r.Task.Pid {
		return nil
	}
	for i := range r.Task.SharedSignals {
		if err := queue(&r.Task.SharedSignals[i], true); err != nil {
			return err
		}
	}
	return nil
}
