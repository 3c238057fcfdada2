package restorer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/timer"
	"golang.org/x/sys/unix"

	"godwit/internal/abi/linux"
	"godwit/internal/images"
	"godwit/internal/ptrace"
	"godwit/internal/xstate"
)

// Finalize rebuilds everything but memory: threads, file descriptors, fs,
// sigactions, timers, rlimits, personality, per-thread state (sigaltstack,
// rseq, robust list, clear_child_tid, pending signals), the mm (exe,
// auxv, brk and boundaries, final protections), credentials last, then
// removes godwit's window and sets every thread's registers, FPU state and
// signal mask. The task stays stopped until Resume.
func (r *Restorer) Finalize() error {
	if err := r.need(phaseLaidOut, "finalize"); err != nil {
		return err
	}
	steps := []struct {
		name string
		fn   func() error
	}{
		{"threads", r.makeThreads},
		{"process state", r.inLeader(r.processState)},
		{"thread state", r.eachThread(r.threadState)},
		{"mm", r.finishMM},
		// After the last injected open and mmap: a task dumped at its
		// RLIMIT_NOFILE (or with a low RLIMIT_AS) would make them fail.
		{"rlimits", r.inLeader(r.restoreRlimits)},
		{"creds", r.eachThread(r.threadCreds)},
		{"signals", r.eachThread(r.queueSignals)},
		{"registers", r.registers},
	}
	for _, st := range steps {
		if err := st.fn(); err != nil {
			return r.fail(st.name, err)
		}
	}
	r.phase = phaseFinalized
	return nil
}

func (r *Restorer) inLeader(fn func(*session) error) func() error {
	return func() error {
		s, err := r.begin(r.img.pid)
		if err != nil {
			return err
		}
		return s.end(fn(s))
	}
}

func (r *Restorer) eachThread(fn func(*session, *thread) error) func() error {
	return func() error {
		for i := range r.img.threads {
			t := &r.img.threads[i]
			s, err := r.begin(t.tid)
			if err != nil {
				return err
			}
			if err := s.end(fn(s, t)); err != nil {
				return fmt.Errorf("thread %d: %w", t.tid, err)
			}
		}
		return nil
	}
}

// makeThreads adds every dumped thread with its TID (clone3 CLONE_THREAD
// with set_tid, injected into the task).
func (r *Restorer) makeThreads() error {
	for _, t := range r.img.threads[1:] {
		tid, err := r.task.CloneThread(t.tid)
		if tid != 0 {
			r.threads = append(r.threads, tid)
		}
		if err != nil {
			return fmt.Errorf("thread %d: %w", t.tid, err)
		}
	}
	return nil
}

func (r *Restorer) processState(s *session) error {
	steps := []func(*session) error{r.restoreFds, r.restoreFs, r.restoreSigactions,
		r.restoreItimers, r.restorePosixTimers, r.restoreMisc}
	for _, f := range steps {
		if err := f(s); err != nil {
			return err
		}
	}
	return nil
}

// restoreFds opens every file in the task (an injected openat: the file is
// opened with the task's own root and mounts, and no descriptor passing is
// needed for plain files), seeks it and dup3s it to its number.
func (r *Restorer) restoreFds(s *session) error {
	if _, err := s.call("close puppet's fds", unix.SYS_CLOSE_RANGE, 0, uint64(^uint32(0)), 0); err != nil {
		return err
	}
	first := map[uint32]uint64{}
	for _, e := range r.img.fds {
		fd := uint64(e.GetFd())
		what := fmt.Sprintf("fd %d", fd)
		dupFlags := uint64(0)
		if e.GetFlags()&images.FdFlagCloexec != 0 {
			dupFlags = unix.O_CLOEXEC
		}
		if f, ok := first[e.GetId()]; ok {
			// Another fd of the same open file description.
			if _, err := s.call(what+": dup3", unix.SYS_DUP3, f, fd, dupFlags); err != nil {
				return err
			}
			continue
		}
		reg := r.img.files[e.GetId()].GetReg()
		path := r.img.filePath(e.GetId())
		r.checkSize(what, path, reg.GetSize(), reg.Size != nil, reg.GetMode())
		flags := int(reg.GetFlags()) &^ (unix.O_CREAT | unix.O_TRUNC | unix.O_EXCL | unix.O_CLOEXEC)
		tmp, err := s.openat(what, path, flags|unix.O_NOCTTY)
		if err != nil {
			return err
		}
		if tmp != fd {
			if _, err := s.call(what+": dup3", unix.SYS_DUP3, tmp, fd, dupFlags); err != nil {
				return err
			}
			if _, err := s.call(what+": close", unix.SYS_CLOSE, tmp); err != nil {
				return err
			}
		} else if dupFlags != 0 {
			if _, err := s.call(what+": set close-on-exec", unix.SYS_FCNTL, fd, unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
				return err
			}
		}
		if pos := reg.GetPos(); pos != 0 && reg.GetMode()&unix.S_IFMT != unix.S_IFCHR {
			if _, err := s.call(fmt.Sprintf("%s: seek %s to %d", what, path, pos), unix.SYS_LSEEK, fd, pos, unix.SEEK_SET); err != nil {
				return err
			}
		}
		first[e.GetId()] = fd
	}
	return nil
}

// checkSize warns when a regular file changed size since the dump. New
// refused such files already (validateFiles); this only sees a file
// changed during the restore itself.
func (r *Restorer) checkSize(what, path string, size uint64, has bool, mode uint32) {
	if !has || mode&unix.S_IFMT != unix.S_IFREG {
		return
	}
	if st, err := os.Stat(path); err == nil && uint64(st.Size()) != size {
		r.log.Warnf("restore: %s: %s is %d bytes, was %d at dump time", what, path, st.Size(), size)
	}
}

func (r *Restorer) restoreFs(s *session) error {
	cwd := r.img.filePath(r.img.fs.GetCwdId())
	a, err := s.putString(0, cwd)
	if err != nil {
		return err
	}
	if _, err := s.call("chdir "+cwd, unix.SYS_CHDIR, a); err != nil {
		return err
	}
	if r.img.fs.Umask != nil {
		if _, err := s.call("umask", unix.SYS_UMASK, uint64(r.img.fs.GetUmask())); err != nil {
			return err
		}
	}
	return nil
}

// sigNumbers maps sigaction entries to signals: CRIU writes 62 (1..64
// without SIGKILL and SIGSTOP), godwit's dumper 64.
func sigNumbers(n int) ([]int, error) {
	var sigs []int
	switch n {
	case 0:
	case linux.NSig:
		for s := 1; s <= linux.NSig; s++ {
			sigs = append(sigs, s)
		}
	case linux.NSig - 2:
		for s := 1; s <= linux.NSig; s++ {
			if s != int(unix.SIGKILL) && s != int(unix.SIGSTOP) {
				sigs = append(sigs, s)
			}
		}
	default:
		return nil, fmt.Errorf("%d sigactions in core, want 62 or 64", n)
	}
	return sigs, nil
}

// restoreSigactions sets every handler with its original sa_restorer.
func (r *Restorer) restoreSigactions(s *session) error {
	sas := r.img.tc.GetSigactions()
	sigs, err := sigNumbers(len(sas))
	if err != nil {
		return err
	}
	for i, sa := range sas {
		sig := sigs[i]
		if sig == int(unix.SIGKILL) || sig == int(unix.SIGSTOP) {
			continue
		}
		b := le64(le64(le64(le64(nil, sa.GetSigaction()), sa.GetFlags()), sa.GetRestorer()), sa.GetMask())
		a, err := s.put(0, b)
		if err != nil {
			return err
		}
		if _, err := s.call(fmt.Sprintf("rt_sigaction %d", sig), unix.SYS_RT_SIGACTION, uint64(sig), a, 0, 8); err != nil {
			return err
		}
	}
	return nil
}

func (r *Restorer) restoreItimers(s *session) error {
	t := r.img.tc.GetTimers()
	if t == nil {
		return nil
	}
	for _, it := range []struct {
		which int
		e     *timer.ItimerEntry
		name  string
	}{{unix.ITIMER_REAL, t.GetReal(), "real"}, {unix.ITIMER_VIRTUAL, t.GetVirt(), "virtual"}, {unix.ITIMER_PROF, t.GetProf(), "prof"}} {
		e := it.e
		if e.GetVsec() == 0 && e.GetVusec() == 0 {
			continue // disarmed
		}
		b := le64(le64(le64(le64(nil, e.GetIsec()), e.GetIusec()), e.GetVsec()), e.GetVusec())
		a, err := s.put(0, b)
		if err != nil {
			return err
		}
		if _, err := s.call("setitimer "+it.name, unix.SYS_SETITIMER, uint64(it.which), a, 0); err != nil {
			return err
		}
	}
	return nil
}

// restorePosixTimers recreates POSIX timers with their ids, with
// prctl(PR_TIMER_CREATE_RESTORE_IDS) (Linux 6.16+): while it is on,
// timer_create takes the id to use from *timerid.
func (r *Restorer) restorePosixTimers(s *session) error {
	pts := r.img.tc.GetTimers().GetPosix()
	if len(pts) == 0 {
		return nil
	}
	if _, err := s.call("prctl(PR_TIMER_CREATE_RESTORE_IDS, on)", unix.SYS_PRCTL,
		unix.PR_TIMER_CREATE_RESTORE_IDS, unix.PR_TIMER_CREATE_RESTORE_IDS_ON, 0, 0, 0); err != nil {
		return fmt.Errorf("posix timers need Linux 6.16+ to get their ids back: %w", err)
	}
	// /proc/PID/timers (where dumpers read them) lists the newest first:
	// create them oldest first so that it reads the same afterwards.
	for i := len(pts) - 1; i >= 0; i-- {
		pt := pts[i]
		what := fmt.Sprintf("posix timer %d", pt.GetItId())
		sev := make([]byte, linux.SigeventSize)
		binary.LittleEndian.PutUint64(sev[0:], pt.GetSivalPtr())
		binary.LittleEndian.PutUint32(sev[8:], pt.GetSiSigno())
		binary.LittleEndian.PutUint32(sev[12:], pt.GetItSigevNotify())
		if pt.GetItSigevNotify()&linux.SigevThreadID != 0 {
			binary.LittleEndian.PutUint32(sev[linux.SigevTidOffset:], uint32(pt.GetNotifyThreadId()))
		}
		sev = binary.LittleEndian.AppendUint32(sev, pt.GetItId()) // timer_t requested
		a, err := s.put(0, sev)
		if err != nil {
			return err
		}
		if _, err := s.call(what+": timer_create", unix.SYS_TIMER_CREATE, uint64(pt.GetClockId()), a, a+linux.SigeventSize); err != nil {
			return err
		}
		var got [4]byte
		if err := ptrace.ReadMem(r.img.pid, a+linux.SigeventSize, got[:]); err != nil {
			return err
		}
		if id := binary.LittleEndian.Uint32(got[:]); id != pt.GetItId() {
			return fmt.Errorf("%s: created with id %d", what, id)
		}
		if pt.GetVsec() == 0 && pt.GetVnsec() == 0 {
			continue
		}
		its := le64(le64(le64(le64(nil, pt.GetIsec()), pt.GetInsec()), pt.GetVsec()), pt.GetVnsec())
		if a, err = s.put(0, its); err != nil {
			return err
		}
		if _, err := s.call(what+": timer_settime", unix.SYS_TIMER_SETTIME, uint64(pt.GetItId()), 0, a, 0); err != nil {
			return err
		}
	}
	_, err := s.call("prctl(PR_TIMER_CREATE_RESTORE_IDS, off)", unix.SYS_PRCTL,
		unix.PR_TIMER_CREATE_RESTORE_IDS, unix.PR_TIMER_CREATE_RESTORE_IDS_OFF, 0, 0, 0)
	return err
}

var rlimitNames = []string{"RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE",
	"RLIMIT_RSS", "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS", "RLIMIT_LOCKS",
	"RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_RTTIME"}

// restoreRlimits sets the dumped limits. Raising a hard limit needs
// CAP_SYS_RESOURCE, which root lacks on these machines: that is an error
// naming the limit, never a silently lower limit.
func (r *Restorer) restoreRlimits(s *session) error {
	for i, rl := range r.img.tc.GetRlimits().GetRlimits() {
		if i >= linux.RlimNlimits {
			break
		}
		a, err := s.put(0, le64(le64(nil, rl.GetCur()), rl.GetMax()))
		if err != nil {
			return err
		}
		_, err = s.call("prlimit64 "+rlimitNames[i], unix.SYS_PRLIMIT64, 0, uint64(i), a, 0)
		if err != nil {
			if en, ok := errnoOf(err); ok && en == unix.EPERM {
				var cur unix.Rlimit
				_ = unix.Getrlimit(i, &cur)
				return fmt.Errorf("%s: the images' hard limit %d is above godwit's %d, and raising it needs CAP_SYS_RESOURCE, which this root lacks: %w",
					rlimitNames[i], rl.GetMax(), cur.Max, err)
			}
			return err
		}
	}
	return nil
}

// restoreMisc: personality, comm, subreaper, THP, oom_score_adj.
func (r *Restorer) restoreMisc(s *session) error {
	tc := r.img.tc
	if _, err := s.call("personality", unix.SYS_PERSONALITY, uint64(tc.GetPersonality())); err != nil {
		return err
	}
	if err := setComm(s, tc.GetComm()); err != nil {
		return err
	}
	if tc.GetChildSubreaper() {
		if _, err := s.call("prctl(PR_SET_CHILD_SUBREAPER)", unix.SYS_PRCTL, unix.PR_SET_CHILD_SUBREAPER, 1); err != nil {
			return err
		}
	}
	if r.img.mm.GetThpDisabled() {
		if _, err := s.call("prctl(PR_SET_THP_DISABLE)", unix.SYS_PRCTL, unix.PR_SET_THP_DISABLE, 1, 0, 0, 0); err != nil {
			return err
		}
	}
	if tc.OomScoreAdj != nil {
		p := "/proc/" + strconv.Itoa(r.img.pid) + "/oom_score_adj"
		want := int(tc.GetOomScoreAdj())
		if err := os.WriteFile(p, []byte(strconv.Itoa(want)), 0); err != nil {
			// Going below oom_score_adj_min (inherited from godwit) needs
			// CAP_SYS_RESOURCE, which root lacks on some hosts: the task
			// keeps godwit's value, and the log says so.
			if !errors.Is(err, unix.EACCES) && !errors.Is(err, unix.EPERM) {
				return fmt.Errorf("oom_score_adj: %w", err)
			}
			r.log.Warnf("restore %d: oom_score_adj %d not restored (lowering it needs CAP_SYS_RESOURCE): %v", r.img.pid, want, err)
		}
	}
	return nil
}

func setComm(s *session, comm string) error {
	if comm == "" {
		return nil
	}
	if len(comm) > 15 {
		comm = comm[:15]
	}
	a, err := s.putString(0, comm)
	if err != nil {
		return err
	}
	_, err = s.call("prctl(PR_SET_NAME)", unix.SYS_PRCTL, unix.PR_SET_NAME, a)
	return err
}

// threadState restores what belongs to each thread and needs its own
// injected calls.
func (r *Restorer) threadState(s *session, t *thread) error {
	tc := t.core.GetThreadCore()
	if sas := tc.GetSas(); sas != nil && sas.GetSsFlags()&linux.SsDisable == 0 {
		b := le64(nil, sas.GetSsSp())
		b = binary.LittleEndian.AppendUint32(b, sas.GetSsFlags()&^linux.SsOnstack)
		b = binary.LittleEndian.AppendUint32(b, 0)
		b = le64(b, sas.GetSsSize())
		a, err := s.put(0, b)
		if err != nil {
			return err
		}
		if _, err := s.call("sigaltstack", unix.SYS_SIGALTSTACK, a, 0); err != nil {
			return err
		}
	}
	if re := tc.GetRseqEntry(); re != nil && re.GetRseqAbiPointer() != 0 {
		if _, err := s.call(fmt.Sprintf("rseq %#x", re.GetRseqAbiPointer()), unix.SYS_RSEQ,
			re.GetRseqAbiPointer(), uint64(re.GetRseqAbiSize()), 0, uint64(re.GetSignature())); err != nil {
			return err
		}
	}
	if tc.GetFutexRla() != 0 {
		if _, err := s.call("set_robust_list", unix.SYS_SET_ROBUST_LIST, tc.GetFutexRla(), uint64(tc.GetFutexRlaLen())); err != nil {
			return err
		}
	}
	if _, err := s.call("set_tid_address", unix.SYS_SET_TID_ADDRESS, t.core.GetThreadInfo().GetClearTidAddr()); err != nil {
		return err
	}
	if err := setSched(t); err != nil {
		return err
	}
	if t.tid != r.img.pid {
		return setComm(s, tc.GetComm())
	}
	return nil
}

// setSched sets the thread's scheduling policy, real-time priority and
// nice value from godwit (root may, and no injection is needed).
func setSched(t *thread) error {
	tc := t.core.GetThreadCore()
	if tc.SchedPolicy != nil && (tc.GetSchedPolicy() != unix.SCHED_NORMAL || tc.GetSchedPrio() != 0) {
		attr := &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: tc.GetSchedPolicy(), Priority: tc.GetSchedPrio()}
		if err := unix.SchedSetAttr(t.tid, attr, 0); err != nil {
			return fmt.Errorf("sched_setattr policy %d priority %d: %w", tc.GetSchedPolicy(), tc.GetSchedPrio(), err)
		}
	}
	if n := tc.GetSchedNice(); n != 0 {
		if err := unix.Setpriority(unix.PRIO_PROCESS, t.tid, int(n)); err != nil {
			return fmt.Errorf("setpriority %d: %w", n, err)
		}
	}
	return nil
}

// finishMM moves injection to a syscall instruction of the restored vDSO
// (or text), unmaps the puppet's code, sets the dumped protections, then
// PR_SET_MM_MAP (exe, auxv, brk, boundaries: the per-field PR_SET_MM_*
// calls need CAP_SYS_RESOURCE) and finally chroot.
func (r *Restorer) finishMM() error {
	pid := r.img.pid
	addr, err := ptrace.FindSyscallInsn(pid)
	if err != nil {
		return err
	}
	if addr >= r.win.base && addr < r.win.base+windowSize {
		return fmt.Errorf("no syscall instruction in the restored executable mappings")
	}
	r.tr.SetSyscallAddr(pid, addr)
	s, err := r.begin(pid)
	if err != nil {
		return err
	}
	return s.end(r.finishMMIn(s))
}

func (r *Restorer) finishMMIn(s *session) error {
	if _, err := s.call("unmap puppet code", unix.SYS_MUNMAP, r.win.base, scratchOff); err != nil {
		return err
	}
	for _, p := range r.protFix {
		if _, err := s.call(fmt.Sprintf("mprotect vma %#x-%#x", p.start, p.end), unix.SYS_MPROTECT,
			p.start, p.end-p.start, uint64(p.prot)); err != nil {
			return err
		}
	}
	m := r.img.mm
	exe := r.img.filePath(m.GetExeFileId())
	efd, err := s.openat("exe", exe, unix.O_RDONLY|unix.O_CLOEXEC)
	if err != nil {
		return err
	}
	auxv := m.GetMmSavedAuxv()
	var ab []byte
	for _, w := range auxv {
		ab = le64(ab, w)
	}
	auxvAddr := uint64(0)
	if len(ab) > 0 {
		if auxvAddr, err = s.put(1024, ab); err != nil {
			return err
		}
	}
	b := make([]byte, 0, linux.SizeofPrctlMmMap)
	for _, v := range []uint64{m.GetMmStartCode(), m.GetMmEndCode(), m.GetMmStartData(), m.GetMmEndData(),
		m.GetMmStartBrk(), m.GetMmBrk(), m.GetMmStartStack(), m.GetMmArgStart(), m.GetMmArgEnd(),
		m.GetMmEnvStart(), m.GetMmEnvEnd(), auxvAddr} {
		b = le64(b, v)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(ab)))
	b = binary.LittleEndian.AppendUint32(b, uint32(efd))
	a, err := s.put(0, b)
	if err != nil {
		return err
	}
	_, err = s.call("prctl(PR_SET_MM_MAP) with exe "+exe, unix.SYS_PRCTL, unix.PR_SET_MM, unix.PR_SET_MM_MAP, a, linux.SizeofPrctlMmMap, 0)
	if _, cerr := s.call("close exe", unix.SYS_CLOSE, efd); cerr != nil && err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if root := r.img.filePath(r.img.fs.GetRootId()); root != "/" {
		a, err := s.putString(0, root)
		if err != nil {
			return err
		}
		if _, err := s.call("chroot "+root, unix.SYS_CHROOT, a); err != nil {
			return err
		}
	}
	return nil
}

// queueSignals queues a thread's pending signals again, from the thread
// itself: the kernel lets a task queue any siginfo (si_code >= 0 or
// SI_TKILL, which others may not forge) only to itself. The leader also
// queues the process-wide ones and sets dumpable.
func (r *Restorer) queueSignals(s *session, t *thread) error {
	pid := uint64(r.img.pid)
	queue := func(info []byte, shared bool) error {
		if len(info) != linux.SiginfoSize {
			return fmt.Errorf("siginfo of %d bytes", len(info))
		}
		a, err := s.put(0, info)
		if err != nil {
			return err
		}
		sig := uint64(binary.LittleEndian.Uint32(info))
		if shared {
			_, err = s.call(fmt.Sprintf("queue shared signal %d", sig), unix.SYS_RT_SIGQUEUEINFO, pid, sig, a)
		} else {
			_, err = s.call(fmt.Sprintf("queue signal %d", sig), unix.SYS_RT_TGSIGQUEUEINFO, pid, uint64(t.tid), sig, a)
		}
		return err
	}
	for _, si := range t.core.GetThreadCore().GetSignalsP().GetSignals() {
		if err := queue(si.GetSiginfo(), false); err != nil {
			return err
		}
	}
	if t.tid != r.img.pid {
		return nil
	}
	for _, si := range r.img.tc.GetSignalsS().GetSignals() {
		if err := queue(si.GetSiginfo(), true); err != nil {
			return err
		}
	}
	if d := r.img.mm.Dumpable; d != nil {
		if _, err := s.call("prctl(PR_SET_DUMPABLE)", unix.SYS_PRCTL, unix.PR_SET_DUMPABLE, uint64(*d)); err != nil {
			return err
		}
	}
	return nil
}

// registers unmaps godwit's window and gives every thread its signal mask,
// FPU state and registers, last (the injections above ran on the puppet's
// registers, which each session put back).
func (r *Restorer) registers() error {
	pid := r.img.pid
	s, err := r.begin(pid)
	if err != nil {
		return err
	}
	_, err = s.call("unmap scratch", unix.SYS_MUNMAP, r.win.base, windowSize)
	if err = s.end(err); err != nil {
		return err
	}
	for i := range r.img.threads {
		t := &r.img.threads[i]
		if err := r.setThreadRegs(t); err != nil {
			return fmt.Errorf("thread %d: %w", t.tid, err)
		}
	}
	return nil
}

func (r *Restorer) setThreadRegs(t *thread) error {
	ti := t.core.GetThreadInfo()
	mask := t.core.GetThreadCore().GetBlkSigset()
	if t.core.GetThreadCore().BlkSigset == nil && t.tid == r.img.pid {
		mask = r.img.tc.GetBlkSigset()
	}
	if err := r.tr.SetSigmask(t.tid, mask); err != nil {
		return err
	}
	base, err := r.tr.GetFPU(t.tid)
	if err != nil {
		return err
	}
	x, err := xstate.FromCRIU(base, ti.GetFpregs())
	if err != nil {
		return err
	}
	if err := r.tr.SetFPU(t.tid, x); err != nil {
		return err
	}
	regs := gpRegs(ti.GetGpregs())
	if ptrace.Restart(&regs) == ptrace.RestartBlock {
		// restart_syscall would call this thread's restart block,
		// which the dumped thread's kernel state held and ours lacks:
		// have the kernel re-run the syscall itself with its original
		// arguments instead (a relative timeout starts over; after a
		// handler the call returns EINTR, as it would have).
		regs.Rax = negErrno(ptrace.ERESTARTNOHAND)
	}
	return r.tr.SetRegs(t.tid, regs)
}
