package dumper

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/abi/linux"
	"godwit/internal/inject"
	"godwit/internal/model"
	"godwit/internal/procfs"
	"godwit/internal/ptrace"
)

// Scratch layout: the in/out buffers of injected calls, in one private
// anonymous mapping made in the target and unmapped before it resumes.
const (
	scratchSigact  = 0    // 64 × struct sigaction
	scratchItimer  = 2048 // 3 × struct itimerval
	scratchTidAddr = 2176 // int * (PR_GET_TID_ADDRESS)
	scratchSas     = 2192 // stack_t
	scratchPdeath  = 2224 // int
	scratchReaper  = 2232 // int
	scratchPipe    = 2240 // int[2]
	scratchTimer   = 2256 // struct itimerspec
	scratchRlimit  = 2304 // struct rlimit64
	scratchIov     = 4096 // struct iovec[maxBatchIovs]
	scratchSize    = 4096 + maxBatchIovs*16
)

// session runs injected calls in one thread, reading results from the
// scratch mapping.
type session = inject.Session

// collectThreadInjected reads what only the thread itself can tell.
func collectThreadInjected(s *session, ti *model.Thread) error {
	le := binary.LittleEndian
	if _, err := s.Call("prctl(PR_GET_TID_ADDRESS)", unix.SYS_PRCTL, unix.PR_GET_TID_ADDRESS, s.Scratch()+scratchTidAddr); err != nil {
		return err
	}
	if _, err := s.Call("sigaltstack", unix.SYS_SIGALTSTACK, 0, s.Scratch()+scratchSas); err != nil {
		return err
	}
	sb, err := s.Call("prctl(PR_GET_SECUREBITS)", unix.SYS_PRCTL, unix.PR_GET_SECUREBITS)
	if err != nil {
		return err
	}
	nnp, err := s.Call("prctl(PR_GET_NO_NEW_PRIVS)", unix.SYS_PRCTL, unix.PR_GET_NO_NEW_PRIVS)
	if err != nil {
		return err
	}
	if _, err := s.Call("prctl(PR_GET_PDEATHSIG)", unix.SYS_PRCTL, unix.PR_GET_PDEATHSIG, s.Scratch()+scratchPdeath); err != nil {
		return err
	}
	buf := make([]byte, scratchPdeath+4-scratchTidAddr)
	if err := s.Read(scratchTidAddr, buf); err != nil {
		return err
	}
	ti.ClearTid = le.Uint64(buf[0:])
	sas := buf[scratchSas-scratchTidAddr:]
	ti.Sigaltstack = model.Sigaltstack{SP: le.Uint64(sas[0:]), Flags: le.Uint32(sas[8:]), Size: le.Uint64(sas[16:])}
	ti.Creds.Secbits = uint32(sb)
	ti.Creds.NoNewPrivs = nnp != 0
	ti.PdeathSig = le.Uint32(buf[scratchPdeath-scratchTidAddr:])
	return nil
}

// collectThreadOutside reads the per-thread state visible from outside.
func collectThreadOutside(pid int, ti *model.Thread) error {
	var head uint64
	var size uint64
	if _, _, e := unix.Syscall(unix.SYS_GET_ROBUST_LIST, uintptr(ti.Tid), uintptr(unsafe.Pointer(&head)), uintptr(unsafe.Pointer(&size))); e != 0 {
		return fmt.Errorf("get_robust_list(%d): %w", ti.Tid, e)
	}
	ti.RobustList, ti.RobustLen = head, size
	st, err := procfs.ReadTaskStatus(pid, ti.Tid)
	if err != nil {
		return err
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3, Pid: int32(ti.Tid)}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget(%d): %w", ti.Tid, err)
	}
	join := func(lo, hi uint32) uint64 { return uint64(lo) | uint64(hi)<<32 }
	ti.Creds = model.Creds{
		UID: st.Uid[0], EUID: st.Uid[1], SUID: st.Uid[2], FSUID: st.Uid[3],
		GID: st.Gid[0], EGID: st.Gid[1], SGID: st.Gid[2], FSGID: st.Gid[3],
		CapInh: join(data[0].Inheritable, data[1].Inheritable),
		CapPrm: join(data[0].Permitted, data[1].Permitted),
		CapEff: join(data[0].Effective, data[1].Effective),
		CapBnd: st.CapBnd,
		CapAmb: st.CapAmb,
		Groups: st.Groups,
	}
	if b, err := os.ReadFile(procfs.TaskPath(pid, ti.Tid, "comm")); err == nil {
		ti.Comm = procfs.ParseComm(b)
	}
	if tst, err := readTaskStat(pid, ti.Tid); err == nil {
		ti.Nice = int32(tst.Nice)
		ti.Policy = uint32(tst.Policy)
		ti.RtPrio = uint32(tst.RtPriority)
	}
	return nil
}

func readTaskStat(pid, tid int) (*procfs.Stat, error) {
	b, err := os.ReadFile(procfs.TaskPath(pid, tid, "stat"))
	if err != nil {
		return nil, err
	}
	return procfs.ParseStat(b)
}

// collectTaskInjected reads the process-wide state only the task can tell:
// sigactions, timers, brk, prctl flags, and rlimits prlimit64 refuses us.
func collectTaskInjected(s *session, ti *model.Task) error {
	le := binary.LittleEndian
	for sig := 1; sig <= linux.NSig; sig++ {
		if sig == int(unix.SIGKILL) || sig == int(unix.SIGSTOP) {
			continue
		}
		if _, err := s.Call(fmt.Sprintf("rt_sigaction(%d)", sig), unix.SYS_RT_SIGACTION, uint64(sig), 0,
			s.Scratch()+scratchSigact+uint64(sig-1)*linux.KernelSigactionSize, 8); err != nil {
			return err
		}
	}
	for which := 0; which < 3; which++ {
		if _, err := s.Call(fmt.Sprintf("getitimer(%d)", which), unix.SYS_GETITIMER, uint64(which), s.Scratch()+scratchItimer+uint64(which)*linux.ItimerSize); err != nil {
			return err
		}
	}
	buf := make([]byte, scratchItimer+3*linux.ItimerSize)
	if err := s.Read(0, buf); err != nil {
		return err
	}
	// As CRIU: 62 entries, signals 1..64 in order without SIGKILL and
	// SIGSTOP, whose actions cannot change.
	for sig := 1; sig <= linux.NSig; sig++ {
		if sig == int(unix.SIGKILL) || sig == int(unix.SIGSTOP) {
			continue
		}
		b := buf[(sig-1)*linux.KernelSigactionSize:]
		ti.Sigactions = append(ti.Sigactions, model.Sigaction{
			Sig: sig, Handler: le.Uint64(b[0:]), Flags: le.Uint64(b[8:]), Restorer: le.Uint64(b[16:]), Mask: le.Uint64(b[24:]),
		})
	}
	for which := 0; which < 3; which++ {
		b := buf[scratchItimer+which*linux.ItimerSize:]
		ti.Itimers[which] = model.Itimer{
			IntervalSec: le.Uint64(b[0:]), IntervalUsec: le.Uint64(b[8:]),
			ValueSec: le.Uint64(b[16:]), ValueUsec: le.Uint64(b[24:]),
		}
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
	brk, err := s.Call("brk(0)", unix.SYS_BRK, 0)
	if err != nil {
		return err
	}
	ti.MM.Brk = brk
	d, err := s.Call("prctl(PR_GET_DUMPABLE)", unix.SYS_PRCTL, unix.PR_GET_DUMPABLE)
	if err != nil {
		return err
	}
	dumpable := int32(d)
	ti.MM.Dumpable = &dumpable
	thp, err := s.Call("prctl(PR_GET_THP_DISABLE)", unix.SYS_PRCTL, unix.PR_GET_THP_DISABLE)
	if err != nil {
		return err
	}
	ti.MM.THPDisabled = thp != 0
	if _, err := s.Call("prctl(PR_GET_CHILD_SUBREAPER)", unix.SYS_PRCTL, unix.PR_GET_CHILD_SUBREAPER, s.Scratch()+scratchReaper); err != nil {
		return err
	}
	var rb [4]byte
	if err := s.Read(scratchReaper, rb[:]); err != nil {
		return err
	}
	ti.ChildSubreaper = le.Uint32(rb[:]) != 0
	for r := 0; r < linux.RlimNlimits; r++ {
		var lim unix.Rlimit
		err := unix.Prlimit(ti.Pid, r, nil, &lim)
		if errors.Is(err, unix.EPERM) {
			// No CAP_SYS_RESOURCE over a task of another user: ask it.
			if _, err = s.Call(fmt.Sprintf("prlimit64(%d)", r), unix.SYS_PRLIMIT64, 0, uint64(r), 0, s.Scratch()+scratchRlimit); err == nil {
				var b [16]byte
				if err = s.Read(scratchRlimit, b[:]); err == nil {
					lim.Cur, lim.Max = le.Uint64(b[0:]), le.Uint64(b[8:])
				}
			}
		}
		if err != nil {
			return fmt.Errorf("rlimit %d: %w", r, err)
		}
		ti.Rlimits = append(ti.Rlimits, lim)
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

// collectTaskOutside reads the process-wide state visible in /proc.
func collectTaskOutside(pid int, ti *model.Task) error {
	b, err := os.ReadFile(procfs.Path(pid, "personality"))
	if err != nil {
		return fmt.Errorf("personality: %w", err)
	}
	p, err := strconv.ParseUint(strings.TrimSpace(string(b)), 16, 32)
	if err != nil {
		return fmt.Errorf("personality %q: %w", b, err)
	}
	ti.Personality = uint32(p)
	if ti.Comm, err = procfs.ReadComm(pid); err != nil {
		return err
	}
	if b, err := os.ReadFile(procfs.Path(pid, "loginuid")); err == nil {
		if v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32); err == nil {
			lu := uint32(v)
			ti.Loginuid = &lu
		}
	}
	if b, err := os.ReadFile(procfs.Path(pid, "oom_score_adj")); err == nil {
		if v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 32); err == nil {
			adj := int32(v)
			ti.OomScoreAdj = &adj
		}
	}
	return nil
}

// siginfos copies ptrace's siginfo queue into the model's.
func siginfos(q []ptrace.Siginfo) []model.Siginfo {
	out := make([]model.Siginfo, len(q))
	for i := range q {
		out[i] = model.Siginfo(q[i])
	}
	return out
}
