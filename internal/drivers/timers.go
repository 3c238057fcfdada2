package drivers

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"godwit/internal/abi/linux"
	"godwit/internal/inject"
	"godwit/internal/model"
	"godwit/internal/procfs"
	"godwit/internal/ptrace"
)

// timersDriver dumps and restores interval timers and POSIX timers.
type timersDriver struct{}

func (timersDriver) Name() string    { return "timers" }
func (timersDriver) After() []string { return []string{PhaseThreads, "sigactions"} }

// CollectInjected reads the itimers with injected getitimer and the POSIX
// timers from /proc/PID/timers plus injected timer_gettime and
// timer_getoverrun.
func (timersDriver) CollectInjected(d *Dump, s *inject.Session) error {
	ti := d.Task
	if err := runPlanned(s, planItimers(ti, s)); err != nil {
		return err
	}
	pts, err := procfs.ReadTimers(ti.Pid)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	for _, pt := range pts {
		if _, err := s.Call(fmt.Sprintf("timer_gettime(%d)", pt.ID), unix.SYS_TIMER_GETTIME, uint64(pt.ID), s.Scratch()+scratchTimer); err != nil {
			return err
		}
		ov, err := s.Call(fmt.Sprintf("timer_getoverrun(%d)", pt.ID), unix.SYS_TIMER_GETOVERRUN, uint64(pt.ID))
		if err != nil {
			return err
		}
		var b [linux.ItimerSize]byte
		if err := s.Read(scratchTimer, b[:]); err != nil {
			return err
		}
		e := model.PosixTimer{
			ID: pt.ID, Clock: pt.ClockID, Signal: pt.Signal, Notify: sigevNotify(pt),
			Value: pt.SigValue, Overrun: uint32(ov),
			IntervalSec: le.Uint64(b[0:]), IntervalNsec: le.Uint64(b[8:]),
			ValueSec: le.Uint64(b[16:]), ValueNsec: le.Uint64(b[24:]),
		}
		if pt.NotifyKind == "tid" {
			e.NotifyThread = pt.NotifyPID
		}
		ti.PosixTimers = append(ti.PosixTimers, e)
	}
	return nil
}

// sigevNotify turns /proc/PID/timers' notify into SIGEV_* (with
// SIGEV_THREAD_ID = 4 added for "tid").
func sigevNotify(t procfs.Timer) uint32 {
	var n uint32
	switch t.Notify {
	case "signal":
		n = 0 // SIGEV_SIGNAL
	case "none":
		n = 1 // SIGEV_NONE
	case "thread":
		n = 2 // SIGEV_THREAD
	}
	if t.NotifyKind == "tid" {
		n |= 4 // SIGEV_THREAD_ID
	}
	return n
}

// Restore arms the itimers and recreates the POSIX timers.
func (timersDriver) Restore(r *Restore, s *inject.Session) error {
	if err := restoreItimers(r, s); err != nil {
		return err
	}
	return restorePosixTimers(r, s)
}

func restoreItimers(r *Restore, s *inject.Session) error {
	t := &r.Task.Itimers
	for _, it := range []struct {
		which int
		e     *model.Itimer
		name  string
	}{{unix.ITIMER_REAL, &t[0], "real"}, {unix.ITIMER_VIRTUAL, &t[1], "virtual"}, {unix.ITIMER_PROF, &t[2], "prof"}} {
		e := it.e
		if e.ValueSec == 0 && e.ValueUsec == 0 {
			continue // disarmed
		}
		b := le64(le64(le64(le64(nil, e.IntervalSec), e.IntervalUsec), e.ValueSec), e.ValueUsec)
		a, err := s.Put(0, b)
		if err != nil {
			return err
		}
		if _, err := s.Call("setitimer "+it.name, unix.SYS_SETITIMER, uint64(it.which), a, 0); err != nil {
			return err
		}
	}
	return nil
}

// restorePosixTimers recreates POSIX timers with their ids, with
// prctl(PR_TIMER_CREATE_RESTORE_IDS) (Linux 6.16+): while it is on,
// timer_create takes the id to use from *timerid.
func restorePosixTimers(r *Restore, s *inject.Session) error {
	pts := r.Task.PosixTimers
	if len(pts) == 0 {
		return nil
	}
	if _, err := s.Call("prctl(PR_TIMER_CREATE_RESTORE_IDS, on)", unix.SYS_PRCTL,
		unix.PR_TIMER_CREATE_RESTORE_IDS, unix.PR_TIMER_CREATE_RESTORE_IDS_ON, 0, 0, 0); err != nil {
		return fmt.Errorf("posix timers need Linux 6.16+ to get their ids back: %w", err)
	}
	// /proc/PID/timers (where dumpers read them) lists the newest first:
	// create them oldest first so that it reads the same afterwards.
	for i := len(pts) - 1; i >= 0; i-- {
		pt := pts[i]
		what := fmt.Sprintf("posix timer %d", pt.ID)
		sev := make([]byte, linux.SigeventSize)
		le.PutUint64(sev[0:], pt.Value)
		le.PutUint32(sev[8:], uint32(pt.Signal))
		le.PutUint32(sev[12:], pt.Notify)
		if pt.Notify&linux.SigevThreadID != 0 {
			le.PutUint32(sev[linux.SigevTidOffset:], uint32(pt.NotifyThread))
		}
		sev = le.AppendUint32(sev, uint32(pt.ID)) // timer_t requested
		a, err := s.Put(0, sev)
		if err != nil {
			return err
		}
		if _, err := s.Call(what+": timer_create", unix.SYS_TIMER_CREATE, uint64(pt.Clock), a, a+linux.SigeventSize); err != nil {
			return err
		}
		var got [4]byte
		if err := ptrace.ReadMem(r.Task.Pid, a+linux.SigeventSize, got[:]); err != nil {
			return err
		}
		if id := le.Uint32(got[:]); id != uint32(pt.ID) {
			return fmt.Errorf("%s: created with id %d", what, id)
		}
		if pt.ValueSec == 0 && pt.ValueNsec == 0 {
			continue
		}
		its := le64(le64(le64(le64(nil, pt.IntervalSec), pt.IntervalNsec), pt.ValueSec), pt.ValueNsec)
		if a, err = s.Put(0, its); err != nil {
			return err
		}
		if _, err := s.Call(what+": timer_settime", unix.SYS_TIMER_SETTIME, uint64(pt.ID), 0, a, 0); err != nil {
			return err
		}
	}
	_, err := s.Call("prctl(PR_TIMER_CREATE_RESTORE_IDS, off)", unix.SYS_PRCTL,
		unix.PR_TIMER_CREATE_RESTORE_IDS, unix.PR_TIMER_CREATE_RESTORE_IDS_OFF, 0, 0, 0)
	return err
}

// PlanInjected reads the itimers, where the task has no POSIX timer
// (those take calls of their own, CollectInjected).
func (timersDriver) PlanInjected(d *Dump, s *inject.Session) (Planned, bool) {
	pts, err := procfs.ReadTimers(d.Task.Pid)
	if err != nil || len(pts) > 0 {
		return Planned{}, false
	}
	return planItimers(d.Task, s), true
}

// planItimers reads the three itimers with getitimer.
func planItimers(ti *model.Task, s *inject.Session) Planned {
	var calls []inject.Call
	for which := 0; which < 3; which++ {
		calls = append(calls, inject.C(fmt.Sprintf("getitimer(%d)", which), unix.SYS_GETITIMER, uint64(which), s.Scratch()+scratchItimer+uint64(which)*linux.ItimerSize))
	}
	return Planned{Calls: calls, Done: func(_ []uint64, scratch []byte) error {
		buf := scratch[scratchItimer:]
		for which := 0; which < 3; which++ {
			b := buf[which*linux.ItimerSize:]
			it := model.Itimer{
				IntervalSec: le.Uint64(b[0:]), IntervalUsec: le.Uint64(b[8:]),
				ValueSec: le.Uint64(b[16:]), ValueUsec: le.Uint64(b[24:]),
			}
			// A periodic ITIMER_REAL is reloaded only when its SIGALRM is
			// dequeued (kernel/signal.c, dequeue_signal): frozen between
			// expiry and delivery, it reads as value 0, which setitimer
			// takes as "disarm". It is armed: its next expiry is one
			// interval after the pending SIGALRM (dumped with the queue).
			if which == unix.ITIMER_REAL && it.ValueSec == 0 && it.ValueUsec == 0 {
				it.ValueSec, it.ValueUsec = it.IntervalSec, it.IntervalUsec
			}
			ti.Itimers[which] = it
		}
		return nil
	}}
}
