package drivers

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/abi/linux"
	"godwit/internal/inject"
	"godwit/internal/model"
	"godwit/internal/procfs"
	"godwit/internal/ptrace"
)

// threadDriver dumps and restores per-thread state: robust futex list,
// clear_child_tid, sigaltstack, rseq, scheduling, comm.
type threadDriver struct{}

func (threadDriver) Name() string    { return "thread" }
func (threadDriver) After() []string { return []string{PhaseThreads, "misc"} }

// CollectThread reads what /proc and get_robust_list show.
func (threadDriver) CollectThread(d *Dump, ti *model.Thread) error {
	var head, size uint64
	if _, _, e := unix.Syscall(unix.SYS_GET_ROBUST_LIST, uintptr(ti.Tid), uintptr(unsafe.Pointer(&head)), uintptr(unsafe.Pointer(&size))); e != 0 {
		return fmt.Errorf("get_robust_list(%d): %w", ti.Tid, e)
	}
	ti.RobustList, ti.RobustLen = head, size
	if ptrace.Restart(&ti.Regs) == ptrace.RestartBlock {
		nr, err := RestartedCall(d.Pid, &ti.Regs)
		if err != nil {
			return err
		}
		if ti.Regs.Orig_rax == unix.SYS_RESTART_SYSCALL {
			ti.RestartNr = nr
		}
	}
	if b, err := os.ReadFile(procfs.TaskPath(d.Pid, ti.Tid, "comm")); err == nil {
		ti.Comm = procfs.ParseComm(b)
	}
	if b, err := os.ReadFile(procfs.TaskPath(d.Pid, ti.Tid, "stat")); err == nil {
		if tst, err := procfs.ParseStat(b); err == nil {
			ti.Nice = int32(tst.Nice)
			ti.Policy = uint32(tst.Policy)
			ti.RtPrio = uint32(tst.RtPriority)
		}
	}
	return nil
}

// CollectThreadInjected reads clear_child_tid and the sigaltstack, which
// only the thread can tell.
func (k threadDriver) CollectThreadInjected(d *Dump, s *inject.Session, ti *model.Thread) error {
	p, _ := k.PlanThreadInjected(d, s, ti)
	return runPlanned(s, p)
}

// PlanThreadInjected reads the clear_child_tid address and the
// alternate signal stack.
func (threadDriver) PlanThreadInjected(d *Dump, s *inject.Session, ti *model.Thread) (Planned, bool) {
	return Planned{Calls: []inject.Call{
		inject.C("prctl(PR_GET_TID_ADDRESS)", unix.SYS_PRCTL, unix.PR_GET_TID_ADDRESS, s.Scratch()+scratchTidAddr),
		inject.C("sigaltstack", unix.SYS_SIGALTSTACK, 0, s.Scratch()+scratchSas),
	}, Done: func(_ []uint64, scratch []byte) error {
		ti.ClearTid = le.Uint64(scratch[scratchTidAddr:])
		sas := scratch[scratchSas:]
		ti.Sigaltstack = model.Sigaltstack{SP: le.Uint64(sas[0:]), Flags: le.Uint32(sas[8:]), Size: le.Uint64(sas[16:])}
		return nil
	}}, true
}

// RestoreThread restores what belongs to each thread and needs its own
// injected calls.
func (threadDriver) RestoreThread(r *Restore, s *inject.Session, t *model.Thread) error {
	if sas := t.Sigaltstack; sas.Flags&linux.SsDisable == 0 {
		b := le64(nil, sas.SP)
		b = le.AppendUint32(b, sas.Flags&^linux.SsOnstack)
		b = le.AppendUint32(b, 0)
		b = le64(b, sas.Size)
		// Queued (inject.Session.Later), as the calls below: they
		// run with the session's next calls, in the same stop.
		a, err := s.Stash(b)
		if err != nil {
			return err
		}
		s.Later("sigaltstack", unix.SYS_SIGALTSTACK, a, 0)
	}
	if re := t.Rseq; re.Pointer != 0 {
		s.Later(fmt.Sprintf("rseq %#x", re.Pointer), unix.SYS_RSEQ, re.Pointer, uint64(re.Size), 0, uint64(re.Signature))
	}
	if t.RobustList != 0 {
		s.Later("set_robust_list", unix.SYS_SET_ROBUST_LIST, t.RobustList, t.RobustLen)
	}
	s.Later("set_tid_address", unix.SYS_SET_TID_ADDRESS, t.ClearTid)
	if err := setSched(t); err != nil {
		return err
	}
	if t.Tid != r.Task.Pid {
		return setComm(s, t.Comm)
	}
	return nil
}

// setSched sets the thread's scheduling policy, real-time priority and
// nice value from godwit (root may, and no injection is needed), always:
// a new thread has its forker's (godwit's, if it ran under nice or chrt).
func setSched(t *model.Thread) error {
	attr := &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: t.Policy, Priority: t.RtPrio, Nice: t.Nice}
	if err := unix.SchedSetAttr(t.Tid, attr, 0); err != nil {
		return fmt.Errorf("sched_setattr policy %d priority %d: %w", t.Policy, t.RtPrio, err)
	}
	if err := unix.Setpriority(unix.PRIO_PROCESS, t.Tid, int(t.Nice)); err != nil {
		return fmt.Errorf("setpriority %d: %w", t.Nice, err)
	}
	return nil
}
