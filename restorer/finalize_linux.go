package restorer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"godwit/internal/abi/linux"
	"godwit/internal/model"
	"godwit/internal/ptrace"
	"godwit/internal/xstate"
)

// Finalize rebuilds everything but memory: threads, session and process
// group, file descriptors, fs,
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
		{"session and process group", r.inLeader(r.restoreSession)},
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
		return s.End(fn(s))
	}
}

func (r *Restorer) eachThread(fn func(*session, *thread) error) func() error {
	return func() error {
		for i := range r.img.threads {
			t := r.img.threads[i]
			s, err := r.begin(t.Tid)
			if err != nil {
				return err
			}
			if err := s.End(fn(s, t)); err != nil {
				return fmt.Errorf("thread %d: %w", t.Tid, err)
			}
		}
		return nil
	}
}

// makeThreads adds every dumped thread with its TID (clone3 CLONE_THREAD
// with set_tid, injected into the task).
func (r *Restorer) makeThreads() error {
	for _, t := range r.img.threads[1:] {
		tid, err := r.task.CloneThread(t.Tid)
		if tid != 0 {
			r.threads = append(r.threads, tid)
		}
		if err != nil {
			return fmt.Errorf("thread %d: %w", t.Tid, err)
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
	if _, err := s.Call("close puppet's fds", unix.SYS_CLOSE_RANGE, 0, uint64(^uint32(0)), 0); err != nil {
		return err
	}
	first := map[model.ID]uint64{}
	for _, e := range r.img.task.FDs {
		fd := uint64(e.Num)
		what := fmt.Sprintf("fd %d", fd)
		dupFlags := uint64(0)
		if e.Cloexec {
			dupFlags = unix.O_CLOEXEC
		}
		if f, ok := first[e.File]; ok {
			// Another fd of the same open file description.
			if _, err := s.Call(what+": dup3", unix.SYS_DUP3, f, fd, dupFlags); err != nil {
				return err
			}
			continue
		}
		reg := r.img.tree.Files[e.File]
		path := reg.Path
		r.checkSize(what, path, reg.Size, reg.Mode)
		flags := int(reg.Flags) &^ (unix.O_CREAT | unix.O_TRUNC | unix.O_EXCL | unix.O_CLOEXEC)
		tmp, err := s.Openat(what, path, flags|unix.O_NOCTTY)
		if err != nil {
			return err
		}
		if tmp != fd {
			if _, err := s.Call(what+": dup3", unix.SYS_DUP3, tmp, fd, dupFlags); err != nil {
				return err
			}
			if _, err := s.Call(what+": close", unix.SYS_CLOSE, tmp); err != nil {
				return err
			}
		} else if dupFlags != 0 {
			if _, err := s.Call(what+": set close-on-exec", unix.SYS_FCNTL, fd, unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
				return err
			}
		}
		if pos := reg.Pos; pos != 0 && reg.Mode&unix.S_IFMT != unix.S_IFCHR {
			if _, err := s.Call(fmt.Sprintf("%s: seek %s to %d", what, path, pos), unix.SYS_LSEEK, fd, pos, unix.SEEK_SET); err != nil {
				return err
			}
		}
		first[e.File] = fd
	}
	return nil
}

// checkSize warns when a regular file changed size since the dump (CRIU
// refuses; a log that kept growing under -R is the common case, so godwit
// restores and says so).
func (r *Restorer) checkSize(what, path string, size *uint64, mode uint32) {
	if size == nil || mode&unix.S_IFMT != unix.S_IFREG {
		return
	}
	if st, err := os.Stat(path); err == nil && uint64(st.Size()) != *size {
		r.log.Warnf("restore: %s: %s is %d bytes, was %d at dump time", what, path, st.Size(), *size)
	}
}

func (r *Restorer) restoreFs(s *session) error {
	cwd := r.img.filePath(r.img.task.FS.Cwd)
	a, err := s.PutString(0, cwd)
	if err != nil {
		return err
	}
	if _, err := s.Call("chdir "+cwd, unix.SYS_CHDIR, a); err != nil {
		return err
	}
	if u := r.img.task.FS.Umask; u != nil {
		if _, err := s.Call("umask", unix.SYS_UMASK, uint64(*u)); err != nil {
			return err
		}
	}
	return nil
}

// restoreSigactions sets every handler with its original sa_restorer.
func (r *Restorer) restoreSigactions(s *session) error {
	for _, sa := range r.img.task.Sigactions {
		sig := sa.Sig
		if sig == int(unix.SIGKILL) || sig == int(unix.SIGSTOP) {
			continue
		}
		b := le64(le64(le64(le64(nil, sa.Handler), sa.Flags), sa.Restorer), sa.Mask)
		a, err := s.Put(0, b)
		if err != nil {
			return err
		}
		if _, err := s.Call(fmt.Sprintf("rt_sigaction %d", sig), unix.SYS_RT_SIGACTION, uint64(sig), a, 0, 8); err != nil {
			return err
		}
	}
	return nil
}

func (r *Restorer) restoreItimers(s *session) error {
	t := &r.img.task.Itimers
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
func (r *Restorer) restorePosixTimers(s *session) error {
	pts := r.img.task.PosixTimers
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
		binary.LittleEndian.PutUint64(sev[0:], pt.Value)
		binary.LittleEndian.PutUint32(sev[8:], uint32(pt.Signal))
		binary.LittleEndian.PutUint32(sev[12:], pt.Notify)
		if pt.Notify&linux.SigevThreadID != 0 {
			binary.LittleEndian.PutUint32(sev[linux.SigevTidOffset:], uint32(pt.NotifyThread))
		}
		sev = binary.LittleEndian.AppendUint32(sev, uint32(pt.ID)) // timer_t requested
		a, err := s.Put(0, sev)
		if err != nil {
			return err
		}
		if _, err := s.Call(what+": timer_create", unix.SYS_TIMER_CREATE, uint64(pt.Clock), a, a+linux.SigeventSize); err != nil {
			return err
		}
		var got [4]byte
		if err := ptrace.ReadMem(r.img.pid, a+linux.SigeventSize, got[:]); err != nil {
			return err
		}
		if id := binary.LittleEndian.Uint32(got[:]); id != uint32(pt.ID) {
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

var rlimitNames = []string{"RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE",
	"RLIMIT_RSS", "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS", "RLIMIT_LOCKS",
	"RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_RTTIME"}

// restoreRlimits sets the dumped limits. Raising a hard limit needs
// CAP_SYS_RESOURCE, which root lacks on these machines: that is an error
// naming the limit, never a silently lower limit.
func (r *Restorer) restoreRlimits(s *session) error {
	for i, rl := range r.img.task.Rlimits {
		if i >= linux.RlimNlimits {
			break
		}
		a, err := s.Put(0, le64(le64(nil, rl.Cur), rl.Max))
		if err != nil {
			return err
		}
		_, err = s.Call("prlimit64 "+rlimitNames[i], unix.SYS_PRLIMIT64, 0, uint64(i), a, 0)
		if err != nil {
			if en, ok := errnoOf(err); ok && en == unix.EPERM {
				var cur unix.Rlimit
				_ = unix.Getrlimit(i, &cur)
				return fmt.Errorf("%s: the images' hard limit %d is above godwit's %d, and raising it needs CAP_SYS_RESOURCE, which this root lacks: %w",
					rlimitNames[i], rl.Max, cur.Max, err)
			}
			return err
		}
	}
	return nil
}

// restoreMisc: personality, comm, subreaper, THP, oom_score_adj.
func (r *Restorer) restoreMisc(s *session) error {
	tc := r.img.task
	if _, err := s.Call("personality", unix.SYS_PERSONALITY, uint64(tc.Personality)); err != nil {
		return err
	}
	if err := setComm(s, tc.Comm); err != nil {
		return err
	}
	if tc.ChildSubreaper {
		if _, err := s.Call("prctl(PR_SET_CHILD_SUBREAPER)", unix.SYS_PRCTL, unix.PR_SET_CHILD_SUBREAPER, 1); err != nil {
			return err
		}
	}
	if r.img.mm.THPDisabled {
		if _, err := s.Call("prctl(PR_SET_THP_DISABLE)", unix.SYS_PRCTL, unix.PR_SET_THP_DISABLE, 1, 0, 0, 0); err != nil {
			return err
		}
	}
	if tc.OomScoreAdj != nil {
		p := "/proc/" + strconv.Itoa(r.img.pid) + "/oom_score_adj"
		want := int(*tc.OomScoreAdj)
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
	a, err := s.PutString(0, comm)
	if err != nil {
		return err
	}
	_, err = s.Call("prctl(PR_SET_NAME)", unix.SYS_PRCTL, unix.PR_SET_NAME, a)
	return err
}

// threadState restores what belongs to each thread and needs its own
// injected calls.
func (r *Restorer) threadState(s *session, t *thread) error {
	if sas := t.Sigaltstack; sas.Flags&linux.SsDisable == 0 {
		b := le64(nil, sas.SP)
		b = binary.LittleEndian.AppendUint32(b, sas.Flags&^linux.SsOnstack)
		b = binary.LittleEndian.AppendUint32(b, 0)
		b = le64(b, sas.Size)
		a, err := s.Put(0, b)
		if err != nil {
			return err
		}
		if _, err := s.Call("sigaltstack", unix.SYS_SIGALTSTACK, a, 0); err != nil {
			return err
		}
	}
	if re := t.Rseq; re.Pointer != 0 {
		if _, err := s.Call(fmt.Sprintf("rseq %#x", re.Pointer), unix.SYS_RSEQ,
			re.Pointer, uint64(re.Size), 0, uint64(re.Signature)); err != nil {
			return err
		}
	}
	if t.RobustList != 0 {
		if _, err := s.Call("set_robust_list", unix.SYS_SET_ROBUST_LIST, t.RobustList, t.RobustLen); err != nil {
			return err
		}
	}
	if _, err := s.Call("set_tid_address", unix.SYS_SET_TID_ADDRESS, t.ClearTid); err != nil {
		return err
	}
	if err := setSched(t); err != nil {
		return err
	}
	if t.Tid != r.img.pid {
		return setComm(s, t.Comm)
	}
	return nil
}

// setSched sets the thread's scheduling policy, real-time priority and
// nice value from godwit (root may, and no injection is needed).
func setSched(t *thread) error {
	if t.Policy != unix.SCHED_NORMAL || t.RtPrio != 0 {
		attr := &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: t.Policy, Priority: t.RtPrio}
		if err := unix.SchedSetAttr(t.Tid, attr, 0); err != nil {
			return fmt.Errorf("sched_setattr policy %d priority %d: %w", t.Policy, t.RtPrio, err)
		}
	}
	if n := t.Nice; n != 0 {
		if err := unix.Setpriority(unix.PRIO_PROCESS, t.Tid, int(n)); err != nil {
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
	return s.End(r.finishMMIn(s))
}

func (r *Restorer) finishMMIn(s *session) error {
	if _, err := s.Call("unmap puppet code", unix.SYS_MUNMAP, r.win.base, scratchOff); err != nil {
		return err
	}
	for _, p := range r.protFix {
		if _, err := s.Call(fmt.Sprintf("mprotect vma %#x-%#x", p.start, p.end), unix.SYS_MPROTECT,
			p.start, p.end-p.start, uint64(p.prot)); err != nil {
			return err
		}
	}
	m := r.img.mm
	exe := r.img.filePath(m.Exe)
	efd, err := s.Openat("exe", exe, unix.O_RDONLY|unix.O_CLOEXEC)
	if err != nil {
		return err
	}
	auxv := m.Auxv
	var ab []byte
	for _, w := range auxv {
		ab = le64(ab, w)
	}
	auxvAddr := uint64(0)
	if len(ab) > 0 {
		if auxvAddr, err = s.Put(1024, ab); err != nil {
			return err
		}
	}
	b := make([]byte, 0, linux.SizeofPrctlMmMap)
	for _, v := range []uint64{m.StartCode, m.EndCode, m.StartData, m.EndData,
		m.StartBrk, m.Brk, m.StartStack, m.ArgStart, m.ArgEnd,
		m.EnvStart, m.EnvEnd, auxvAddr} {
		b = le64(b, v)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(ab)))
	b = binary.LittleEndian.AppendUint32(b, uint32(efd))
	a, err := s.Put(0, b)
	if err != nil {
		return err
	}
	_, err = s.Call("prctl(PR_SET_MM_MAP) with exe "+exe, unix.SYS_PRCTL, unix.PR_SET_MM, unix.PR_SET_MM_MAP, a, linux.SizeofPrctlMmMap, 0)
	if _, cerr := s.Call("close exe", unix.SYS_CLOSE, efd); cerr != nil && err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if root := r.img.filePath(r.img.task.FS.Root); root != "/" {
		a, err := s.PutString(0, root)
		if err != nil {
			return err
		}
		if _, err := s.Call("chroot "+root, unix.SYS_CHROOT, a); err != nil {
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
	queue := func(si *model.Siginfo, shared bool) error {
		info := si[:]
		a, err := s.Put(0, info)
		if err != nil {
			return err
		}
		sig := uint64(binary.LittleEndian.Uint32(info))
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
	if t.Tid != r.img.pid {
		return nil
	}
	for i := range r.img.task.SharedSignals {
		if err := queue(&r.img.task.SharedSignals[i], true); err != nil {
			return err
		}
	}
	if d := r.img.mm.Dumpable; d != nil {
		if _, err := s.Call("prctl(PR_SET_DUMPABLE)", unix.SYS_PRCTL, unix.PR_SET_DUMPABLE, uint64(*d)); err != nil {
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
	_, err = s.Call("unmap scratch", unix.SYS_MUNMAP, r.win.base, windowSize)
	if err = s.End(err); err != nil {
		return err
	}
	for i := range r.img.threads {
		t := r.img.threads[i]
		if err := r.setThreadRegs(t); err != nil {
			return fmt.Errorf("thread %d: %w", t.Tid, err)
		}
	}
	return nil
}

func (r *Restorer) setThreadRegs(t *thread) error {
	if err := r.tr.SetSigmask(t.Tid, t.Sigmask); err != nil {
		return err
	}
	base, err := r.tr.GetFPU(t.Tid)
	if err != nil {
		return err
	}
	// The model's XSAVE bytes are in the dumping CPU's layout: lay
	// their components over this thread's own buffer, which has the
	// size and layout this kernel takes.
	fp, err := xstate.ToCRIU(t.XState)
	if err != nil {
		return err
	}
	x, err := xstate.FromCRIU(base, fp)
	if err != nil {
		return err
	}
	if err := r.tr.SetFPU(t.Tid, x); err != nil {
		return err
	}
	regs := t.Regs
	if ptrace.Restart(&regs) == ptrace.RestartBlock {
		// restart_syscall would call this thread's restart block,
		// which the dumped thread's kernel state held and ours lacks:
		// have the kernel re-run the syscall itself with its original
		// arguments instead (a relative timeout starts over; after a
		// handler the call returns EINTR, as it would have).
		regs.Rax = negErrno(ptrace.ERESTARTNOHAND)
	}
	return r.tr.SetRegs(t.Tid, regs)
}

// negErrno is -e as a register value.
func negErrno(e int) uint64 { return uint64(-int64(e)) }
