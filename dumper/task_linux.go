package dumper

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	core_x86 "github.com/checkpoint-restore/go-criu/v8/crit/images/core-x86"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/creds"
	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	criu_sa "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-sa"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/rlimit"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/rseq"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/siginfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/timer"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"godwit/internal/abi/linux"
	"godwit/internal/images"
	"godwit/internal/procfs"
	"godwit/internal/ptrace"
	"godwit/internal/xstate"
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

// threadInfo is what is collected of one thread.
type threadInfo struct {
	tid   int
	state *ptrace.ThreadState
	// from injected calls in the thread
	clearTid uint64
	sas      [3]uint64 // sp, flags, size
	secbits  uint32
	nnp      uint32
	pdeath   uint32
	// from outside
	robust    uint64
	robustLen uint64
	creds     *creds.CredsEntry
	comm      string
	nice      int32
	policy    uint32
	prio      uint32
}

// taskInfo is the process-wide state collected by injection into the
// leader and from /proc.
type taskInfo struct {
	sigactions  []*criu_sa.SaEntry
	itimers     [3]*timer.ItimerEntry
	posix       []*timer.PosixTimerEntry
	rlimits     []*rlimit.RlimitEntry
	brk         uint64
	dumpable    int32
	thpDisabled bool
	subreaper   bool
	personality uint32
	comm        string
	shared      []ptrace.Siginfo
	loginuid    *uint32
	oomScoreAdj *int32
}

// session runs injected calls in one thread, reading results from the
// scratch mapping.
type session struct {
	s       *ptrace.Session
	pid     int
	scratch uint64
}

func (s *session) call(what string, nr uintptr, args ...uint64) (uint64, error) {
	r, err := s.s.Syscall(nr, args...)
	if err != nil {
		return r, fmt.Errorf("%s: %w", what, err)
	}
	return r, nil
}

func (s *session) read(off uint64, b []byte) error {
	return ptrace.ReadMem(s.pid, s.scratch+off, b)
}

// collectThreadInjected reads what only the thread itself can tell.
func collectThreadInjected(s *session, ti *threadInfo) error {
	le := binary.LittleEndian
	if _, err := s.call("prctl(PR_GET_TID_ADDRESS)", unix.SYS_PRCTL, unix.PR_GET_TID_ADDRESS, s.scratch+scratchTidAddr); err != nil {
		return err
	}
	if _, err := s.call("sigaltstack", unix.SYS_SIGALTSTACK, 0, s.scratch+scratchSas); err != nil {
		return err
	}
	sb, err := s.call("prctl(PR_GET_SECUREBITS)", unix.SYS_PRCTL, unix.PR_GET_SECUREBITS)
	if err != nil {
		return err
	}
	nnp, err := s.call("prctl(PR_GET_NO_NEW_PRIVS)", unix.SYS_PRCTL, unix.PR_GET_NO_NEW_PRIVS)
	if err != nil {
		return err
	}
	if _, err := s.call("prctl(PR_GET_PDEATHSIG)", unix.SYS_PRCTL, unix.PR_GET_PDEATHSIG, s.scratch+scratchPdeath); err != nil {
		return err
	}
	buf := make([]byte, scratchPdeath+4-scratchTidAddr)
	if err := s.read(scratchTidAddr, buf); err != nil {
		return err
	}
	ti.clearTid = le.Uint64(buf[0:])
	sas := buf[scratchSas-scratchTidAddr:]
	ti.sas = [3]uint64{le.Uint64(sas[0:]), uint64(le.Uint32(sas[8:])), le.Uint64(sas[16:])}
	ti.secbits = uint32(sb)
	ti.nnp = uint32(nnp)
	ti.pdeath = le.Uint32(buf[scratchPdeath-scratchTidAddr:])
	return nil
}

// collectThreadOutside reads the per-thread state visible from outside.
func collectThreadOutside(pid int, ti *threadInfo) error {
	var head uint64
	var size uint64
	if _, _, e := unix.Syscall(unix.SYS_GET_ROBUST_LIST, uintptr(ti.tid), uintptr(unsafe.Pointer(&head)), uintptr(unsafe.Pointer(&size))); e != 0 {
		return fmt.Errorf("get_robust_list(%d): %w", ti.tid, e)
	}
	ti.robust, ti.robustLen = head, size
	st, err := procfs.ReadTaskStatus(pid, ti.tid)
	if err != nil {
		return err
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3, Pid: int32(ti.tid)}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget(%d): %w", ti.tid, err)
	}
	split := func(v uint64) []uint32 { return []uint32{uint32(v), uint32(v >> 32)} }
	ti.creds = &creds.CredsEntry{
		Uid: proto.Uint32(st.Uid[0]), Euid: proto.Uint32(st.Uid[1]), Suid: proto.Uint32(st.Uid[2]), Fsuid: proto.Uint32(st.Uid[3]),
		Gid: proto.Uint32(st.Gid[0]), Egid: proto.Uint32(st.Gid[1]), Sgid: proto.Uint32(st.Gid[2]), Fsgid: proto.Uint32(st.Gid[3]),
		CapInh: []uint32{data[0].Inheritable, data[1].Inheritable},
		CapPrm: []uint32{data[0].Permitted, data[1].Permitted},
		CapEff: []uint32{data[0].Effective, data[1].Effective},
		CapBnd: split(st.CapBnd),
		CapAmb: split(st.CapAmb),
		Groups: st.Groups,
	}
	if b, err := os.ReadFile(procfs.TaskPath(pid, ti.tid, "comm")); err == nil {
		ti.comm = procfs.ParseComm(b)
	}
	if tst, err := readTaskStat(pid, ti.tid); err == nil {
		ti.nice = int32(tst.Nice)
		ti.policy = uint32(tst.Policy)
		ti.prio = uint32(tst.RtPriority)
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
func collectTaskInjected(s *session, ti *taskInfo) error {
	le := binary.LittleEndian
	for sig := 1; sig <= linux.NSig; sig++ {
		if sig == int(unix.SIGKILL) || sig == int(unix.SIGSTOP) {
			continue
		}
		if _, err := s.call(fmt.Sprintf("rt_sigaction(%d)", sig), unix.SYS_RT_SIGACTION, uint64(sig), 0,
			s.scratch+scratchSigact+uint64(sig-1)*linux.KernelSigactionSize, 8); err != nil {
			return err
		}
	}
	for which := 0; which < 3; which++ {
		if _, err := s.call(fmt.Sprintf("getitimer(%d)", which), unix.SYS_GETITIMER, uint64(which), s.scratch+scratchItimer+uint64(which)*linux.ItimerSize); err != nil {
			return err
		}
	}
	buf := make([]byte, scratchItimer+3*linux.ItimerSize)
	if err := s.read(0, buf); err != nil {
		return err
	}
	// As CRIU: 62 entries, signals 1..64 in order without SIGKILL and
	// SIGSTOP, whose actions cannot change.
	for sig := 1; sig <= linux.NSig; sig++ {
		if sig == int(unix.SIGKILL) || sig == int(unix.SIGSTOP) {
			continue
		}
		b := buf[(sig-1)*linux.KernelSigactionSize:]
		ti.sigactions = append(ti.sigactions, &criu_sa.SaEntry{
			Sigaction: proto.Uint64(le.Uint64(b[0:])),
			Flags:     proto.Uint64(le.Uint64(b[8:])),
			Restorer:  proto.Uint64(le.Uint64(b[16:])),
			Mask:      proto.Uint64(le.Uint64(b[24:])),
		})
	}
	for which := 0; which < 3; which++ {
		b := buf[scratchItimer+which*linux.ItimerSize:]
		ti.itimers[which] = &timer.ItimerEntry{
			Isec: proto.Uint64(le.Uint64(b[0:])), Iusec: proto.Uint64(le.Uint64(b[8:])),
			Vsec: proto.Uint64(le.Uint64(b[16:])), Vusec: proto.Uint64(le.Uint64(b[24:])),
		}
	}
	pts, err := procfs.ReadTimers(s.pid)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	for _, pt := range pts {
		if _, err := s.call(fmt.Sprintf("timer_gettime(%d)", pt.ID), unix.SYS_TIMER_GETTIME, uint64(pt.ID), s.scratch+scratchTimer); err != nil {
			return err
		}
		ov, err := s.call(fmt.Sprintf("timer_getoverrun(%d)", pt.ID), unix.SYS_TIMER_GETOVERRUN, uint64(pt.ID))
		if err != nil {
			return err
		}
		var b [linux.ItimerSize]byte
		if err := s.read(scratchTimer, b[:]); err != nil {
			return err
		}
		e := &timer.PosixTimerEntry{
			ItId: proto.Uint32(uint32(pt.ID)), ClockId: proto.Uint32(uint32(pt.ClockID)),
			SiSigno: proto.Uint32(uint32(pt.Signal)), ItSigevNotify: proto.Uint32(sigevNotify(pt)),
			SivalPtr: proto.Uint64(pt.SigValue), Overrun: proto.Uint32(uint32(ov)),
			Isec: proto.Uint64(le.Uint64(b[0:])), Insec: proto.Uint64(le.Uint64(b[8:])),
			Vsec: proto.Uint64(le.Uint64(b[16:])), Vnsec: proto.Uint64(le.Uint64(b[24:])),
		}
		if pt.NotifyKind == "tid" {
			e.NotifyThreadId = proto.Int32(int32(pt.NotifyPID))
		}
		ti.posix = append(ti.posix, e)
	}
	brk, err := s.call("brk(0)", unix.SYS_BRK, 0)
	if err != nil {
		return err
	}
	ti.brk = brk
	d, err := s.call("prctl(PR_GET_DUMPABLE)", unix.SYS_PRCTL, unix.PR_GET_DUMPABLE)
	if err != nil {
		return err
	}
	ti.dumpable = int32(d)
	thp, err := s.call("prctl(PR_GET_THP_DISABLE)", unix.SYS_PRCTL, unix.PR_GET_THP_DISABLE)
	if err != nil {
		return err
	}
	ti.thpDisabled = thp != 0
	if _, err := s.call("prctl(PR_GET_CHILD_SUBREAPER)", unix.SYS_PRCTL, unix.PR_GET_CHILD_SUBREAPER, s.scratch+scratchReaper); err != nil {
		return err
	}
	var rb [4]byte
	if err := s.read(scratchReaper, rb[:]); err != nil {
		return err
	}
	ti.subreaper = le.Uint32(rb[:]) != 0
	for r := 0; r < linux.RlimNlimits; r++ {
		var lim unix.Rlimit
		err := unix.Prlimit(s.pid, r, nil, &lim)
		if errors.Is(err, unix.EPERM) {
			// No CAP_SYS_RESOURCE over a task of another user: ask it.
			if _, err = s.call(fmt.Sprintf("prlimit64(%d)", r), unix.SYS_PRLIMIT64, 0, uint64(r), 0, s.scratch+scratchRlimit); err == nil {
				var b [16]byte
				if err = s.read(scratchRlimit, b[:]); err == nil {
					lim.Cur, lim.Max = le.Uint64(b[0:]), le.Uint64(b[8:])
				}
			}
		}
		if err != nil {
			return fmt.Errorf("rlimit %d: %w", r, err)
		}
		ti.rlimits = append(ti.rlimits, &rlimit.RlimitEntry{Cur: proto.Uint64(lim.Cur), Max: proto.Uint64(lim.Max)})
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
func collectTaskOutside(pid int, ti *taskInfo) error {
	b, err := os.ReadFile(procfs.Path(pid, "personality"))
	if err != nil {
		return fmt.Errorf("personality: %w", err)
	}
	p, err := strconv.ParseUint(strings.TrimSpace(string(b)), 16, 32)
	if err != nil {
		return fmt.Errorf("personality %q: %w", b, err)
	}
	ti.personality = uint32(p)
	if ti.comm, err = procfs.ReadComm(pid); err != nil {
		return err
	}
	if b, err := os.ReadFile(procfs.Path(pid, "loginuid")); err == nil {
		if v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32); err == nil {
			ti.loginuid = proto.Uint32(uint32(v))
		}
	}
	if b, err := os.ReadFile(procfs.Path(pid, "oom_score_adj")); err == nil {
		if v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 32); err == nil {
			ti.oomScoreAdj = proto.Int32(int32(v))
		}
	}
	return nil
}

func signalQueue(q []ptrace.Siginfo) *siginfo.SignalQueueEntry {
	if len(q) == 0 {
		return nil
	}
	out := &siginfo.SignalQueueEntry{}
	for i := range q {
		out.Signals = append(out.Signals, &siginfo.SiginfoEntry{Siginfo: append([]byte(nil), q[i][:]...)})
	}
	return out
}

// coreEntry builds core-TID.img of one thread; tc and ids go to the leader.
func coreEntry(th *threadInfo, tc *criu_core.TaskCoreEntry, ids *criu_core.TaskKobjIdsEntry) (*criu_core.CoreEntry, error) {
	fp, err := xstate.ToCRIU(th.state.XState)
	if err != nil {
		return nil, fmt.Errorf("thread %d: %w", th.tid, err)
	}
	thc := &criu_core.ThreadCoreEntry{
		FutexRla:    proto.Uint64(th.robust),
		FutexRlaLen: proto.Uint32(uint32(th.robustLen)),
		SchedNice:   proto.Int32(th.nice),
		SchedPolicy: proto.Uint32(th.policy),
		SchedPrio:   proto.Uint32(th.prio),
		BlkSigset:   proto.Uint64(th.state.Sigmask),
		Sas: &criu_core.ThreadSasEntry{
			SsSp: proto.Uint64(th.sas[0]), SsSize: proto.Uint64(th.sas[2]), SsFlags: proto.Uint32(uint32(th.sas[1])),
		},
		PdeathSig:   proto.Uint32(th.pdeath),
		SignalsP:    signalQueue(th.state.Pending),
		Creds:       th.creds,
		SeccompMode: criu_core.SeccompMode_disabled.Enum(),
		Comm:        proto.String(th.comm),
	}
	thc.Creds.Secbits = proto.Uint32(th.secbits)
	thc.Creds.NoNewPrivs = proto.Uint32(th.nnp)
	if r := th.state.Rseq; r.AbiPointer != 0 {
		thc.RseqEntry = &rseq.RseqEntry{
			RseqAbiPointer: proto.Uint64(r.AbiPointer),
			RseqAbiSize:    proto.Uint32(r.AbiSize),
			Signature:      proto.Uint32(r.Signature),
		}
	}
	return &criu_core.CoreEntry{
		Mtype: criu_core.CoreEntry_X86_64.Enum(),
		ThreadInfo: &core_x86.ThreadInfoX86{
			ClearTidAddr: proto.Uint64(th.clearTid),
			Gpregs:       GPRegs(&th.state.Regs),
			Fpregs:       fp,
		},
		Tc:         tc,
		Ids:        ids,
		ThreadCore: thc,
	}, nil
}

// taskCore builds the leader's tc.
func taskCore(ti *taskInfo, leader *threadInfo, stopped bool, stopSig int) *criu_core.TaskCoreEntry {
	state := uint32(images.TaskAlive)
	if stopped {
		state = images.TaskStopped
	}
	tc := &criu_core.TaskCoreEntry{
		TaskState:   proto.Uint32(state),
		ExitCode:    proto.Uint32(0),
		Personality: proto.Uint32(ti.personality),
		Flags:       proto.Uint32(0),
		BlkSigset:   proto.Uint64(leader.state.Sigmask),
		Comm:        proto.String(ti.comm),
		Timers: &timer.TaskTimersEntry{
			Real: ti.itimers[0], Virt: ti.itimers[1], Prof: ti.itimers[2], Posix: ti.posix,
		},
		Rlimits:        &criu_core.TaskRlimitsEntry{Rlimits: ti.rlimits},
		SignalsS:       signalQueue(ti.shared),
		Loginuid:       ti.loginuid,
		OomScoreAdj:    ti.oomScoreAdj,
		Sigactions:     ti.sigactions,
		ChildSubreaper: proto.Bool(ti.subreaper),
	}
	if stopped {
		tc.StopSigno = proto.Uint32(uint32(stopSig))
	}
	return tc
}
