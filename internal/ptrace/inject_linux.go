package ptrace

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
)

// Syscall injection.
//
// A stopped thread is made to execute one syscall instruction of its own
// address space with our number and arguments, then put back exactly as it
// was. Method (chosen for having no side effects on the task):
//
//   - save the registers and the signal mask, block every signal (so no
//     signal is dequeued into a signal-delivery-stop mid-call);
//   - rip = a `syscall` instruction, rax = nr, orig_rax = -1 (so the kernel
//     does not treat the task as returning from an interrupted syscall and
//     "restart" it), args in rdi, rsi, rdx, r10, r8, r9;
//   - PTRACE_SYSCALL to the syscall-entry stop, PTRACE_SYSCALL to the exit
//     stop, read rax;
//   - at the end restore registers and mask, then PTRACE_INTERRUPT +
//     PTRACE_CONT so the task traps again inside get_signal: from there the
//     kernel's syscall-restart logic still applies to the restored
//     registers when the task finally resumes. (Resuming straight from the
//     syscall-exit stop would hand -ERESTARTSYS to user space.)
//
// Single-stepping over the instruction would save one stop, but the kernel
// reports the step with a forced SIGTRAP, which resets a program's ignored
// or blocked SIGTRAP disposition to SIG_DFL.

// Session is a run of injected syscalls into one stopped thread. The thread
// keeps signals blocked and its registers are restored only at End, so a
// batch of calls costs two stops each.
type Session struct {
	t         *Tracer
	tk        *task
	addr      uint64
	saved     Regs
	savedMask uint64
	ran       bool
	ended     bool
	children  []int
	began     time.Time
	trapSig   unix.Signal // of batches (batch_linux.go), chosen at the first
	// taken are the program's signals of trapSig a batch dequeued, to
	// be queued again (batch_linux.go).
	taken []Siginfo
	// runner, if set (SetRunner), runs single calls too: one stop each
	// instead of two.
	runCode, runTable uint64
}

// SetSyscallAddr tells the tracer where a `syscall` instruction (0f 05) is
// in process tgid, e.g. a puppet's own code, instead of searching its
// mappings. It must stay mapped and executable while injecting.
func (t *Tracer) SetSyscallAddr(tgid int, addr uint64) {
	_ = t.Do(func() error { t.syscallAddr[tgid] = addr; return nil })
}

// SyscallAddr returns the syscall instruction used for process tgid,
// searching its mappings if not known yet.
func (t *Tracer) SyscallAddr(tgid int) (uint64, error) {
	var a uint64
	err := t.Do(func() error {
		var err error
		a, err = t.syscallAddrOf(tgid)
		return err
	})
	return a, err
}

func (t *Tracer) syscallAddrOf(tgid int) (uint64, error) {
	if a, ok := t.syscallAddr[tgid]; ok {
		return a, nil
	}
	a, err := FindSyscallInsn(tgid)
	if err != nil {
		return 0, err
	}
	t.syscallAddr[tgid] = a
	return a, nil
}

// maxTextScan bounds how much of an executable mapping we read looking for
// a syscall instruction.
const maxTextScan = 4 << 20

// FindSyscallInsn finds the bytes 0f 05 in an executable mapping of pid,
// the [vdso] first (present in every process, tiny, and it contains
// syscall fallbacks), then any other executable mapping. The bytes need not
// be an instruction boundary of the original code: we jump straight at them.
func FindSyscallInsn(pid int) (uint64, error) { return FindSyscallInsnOutside(pid, 0, 0) }

// FindSyscallInsnOutside is FindSyscallInsn skipping mappings inside
// [lo, hi) (a restorer's own code, about to go: a task without a vDSO).
func FindSyscallInsnOutside(pid int, lo, hi uint64) (uint64, error) {
	maps, err := procfs.ReadMaps(pid)
	if err != nil {
		return 0, err
	}
	try := func(m *procfs.Mapping) (uint64, bool) {
		n := m.Size()
		if n > maxTextScan {
			n = maxTextScan
		}
		buf := make([]byte, n)
		if err := PeekMem(pid, m.Start, buf); err != nil {
			return 0, false
		}
		if i := bytes.Index(buf, syscallInsn[:]); i >= 0 {
			return m.Start + uint64(i), true
		}
		return 0, false
	}
	for i := range maps {
		if maps[i].Path == "[vdso]" && maps[i].Exec {
			if a, ok := try(&maps[i]); ok {
				return a, nil
			}
		}
	}
	for i := range maps {
		if maps[i].Exec && maps[i].Path != "[vdso]" && maps[i].Path != "[vsyscall]" &&
			(maps[i].End <= lo || maps[i].Start >= hi) {
			if a, ok := try(&maps[i]); ok {
				return a, nil
			}
		}
	}
	return 0, fmt.Errorf("no syscall instruction in the executable mappings of %d", pid)
}

// BeginInjection prepares stopped thread tid for injected syscalls.
func (t *Tracer) BeginInjection(tid int) (*Session, error) {
	var s *Session
	err := t.Do(func() error {
		var err error
		s, err = t.begin(tid)
		return err
	})
	return s, err
}

func (t *Tracer) begin(tid int) (*Session, error) {
	tk, err := t.getStopped(tid)
	if err != nil {
		return nil, err
	}
	if tk.session != nil {
		return nil, fmt.Errorf("inject into %d: a session is already open", tid)
	}
	addr, err := t.syscallAddrOf(t.tgidOf(tk))
	if err != nil {
		return nil, fmt.Errorf("inject into %d: %w", tid, err)
	}
	s := &Session{t: t, tk: tk, addr: addr, began: time.Now()}
	if err := getRegs(tid, &s.saved); err != nil {
		return nil, err
	}
	// The first injected call returns to user mode at our rip, where the
	// kernel settles any rseq critical section the thread was in; do it
	// the way it would have with the thread's own rip.
	aborted, err := rseqAbort(tid, t.tgidOf(tk), &s.saved)
	if err != nil {
		return nil, err
	}
	if aborted {
		// rseq_cs is cleared in memory: make the registers agree at
		// once, whatever happens to the session.
		if err := setRegs(tid, &s.saved); err != nil {
			return nil, err
		}
	}
	if s.savedMask, err = getSigmask(tid); err != nil {
		return nil, err
	}
	if err := setSigmask(tid, ^uint64(0)); err != nil {
		return nil, err
	}
	tk.session = s
	t.sessions++
	return s, nil
}

// Tracer is the tracer the session runs on (for ptrace requests on the
// same thread between injected calls).
func (s *Session) Tracer() *Tracer { return s.t }

// Saved returns the registers the thread had before the session.
func (s *Session) Saved() Regs { return s.saved }

// SavedSigmask returns the signal mask the thread had before the session;
// children forked by injected calls inherit the all-blocked mask of the
// session and should be given this one.
func (s *Session) SavedSigmask() uint64 { return s.savedMask }

// Children returns the tids of tasks created by injected fork/clone calls,
// each attached and stopped.
func (s *Session) Children() []int { return s.children }

// Syscall runs syscall nr with up to six arguments in the thread and returns
// its result. A result in [-4095, -1] is returned as a unix.Errno error
// (with the raw value as well).
func (s *Session) Syscall(nr uintptr, args ...uint64) (uint64, error) {
	if len(args) > 6 {
		return 0, fmt.Errorf("inject syscall %d: %d arguments", nr, len(args))
	}
	var ret uint64
	err := s.t.Do(func() error {
		var err error
		ret, err = s.syscall(nr, args)
		return err
	})
	if err != nil {
		return ret, err
	}
	if r := int64(ret); r < 0 && r >= -4095 {
		return ret, fmt.Errorf("injected syscall %d in %d: %w", nr, s.tk.tid, unix.Errno(-r))
	}
	return ret, nil
}

func (s *Session) syscall(nr uintptr, args []uint64) (uint64, error) {
	if s.ended {
		return 0, errors.New("injection session already ended")
	}
	if s.runCode != 0 && !forks(nr) {
		c := Call{Nr: nr}
		copy(c.Args[:], args)
		if !touchesRunner(&c, s.runCode, s.runTable, BatchTableSize(1)) {
			got, err := s.batch(s.runCode, s.runTable, []Call{c})
			if err != nil {
				return 0, err
			}
			return got[0], nil
		}
	}
	return s.syscallAt(nr, args)
}

// loadCall sets the task's registers to make syscall nr with args at the
// session's syscall instruction, counts the call, and returns the
// registers it set.
func (s *Session) loadCall(nr uintptr, args []uint64) (Regs, error) {
	tk := s.tk
	if s.t.tasks[tk.tid] != tk {
		return Regs{}, fmt.Errorf("inject into %d: %w", tk.tid, ErrGone)
	}
	var a [6]uint64
	copy(a[:], args)
	r := s.saved
	r.Rip = s.addr
	r.Rax = uint64(nr)
	r.Orig_rax = ^uint64(0)
	r.Rdi, r.Rsi, r.Rdx, r.R10, r.R8, r.R9 = a[0], a[1], a[2], a[3], a[4], a[5]
	if err := setRegs(tk.tid, &r); err != nil {
		return Regs{}, err
	}
	s.ran = true
	s.t.calls++
	return r, nil
}

// syscallAt runs syscall nr at the session's syscall instruction, two
// stops, never through the runner.
func (s *Session) syscallAt(nr uintptr, args []uint64) (uint64, error) {
	r, err := s.loadCall(nr, args)
	if err != nil {
		return 0, err
	}
	tk := s.tk
	s.t.stops += 2 // entry and exit
	s.t.byNr[nr]++
	if sendsSignal(nr) {
		s.trapSig = 0
	}
	// Entry stop, then exit stop.
	for phase := 0; phase < 2; phase++ {
		if err := s.t.resume(tk, unix.PTRACE_SYSCALL, 0); err != nil {
			return 0, err
		}
		if err := s.waitSyscallStop(); err != nil {
			return 0, fmt.Errorf("inject syscall %d into %d: %w", nr, tk.tid, err)
		}
	}
	if err := getRegs(tk.tid, &r); err != nil {
		return 0, err
	}
	return r.Rax, nil
}

// waitSyscallStop waits for the next syscall stop, stepping over whatever
// comes first: fork/clone events (the child is collected), group-stops,
// and signals that could not be blocked (stashed for Detach).
func (s *Session) waitSyscallStop() error {
	tk := s.tk
	for i := 0; i < maxStops; i++ {
		st, err := s.t.wait(tk)
		if err != nil {
			return err
		}
		if st.isSyscall() {
			return nil
		}
		switch {
		case st.Event == unix.PTRACE_EVENT_FORK || st.Event == unix.PTRACE_EVENT_VFORK || st.Event == unix.PTRACE_EVENT_CLONE:
			child, err := s.t.onEvent(tk, st)
			if err != nil {
				return err
			}
			s.children = append(s.children, child)
		case st.Event != 0:
			// PTRACE_EVENT_STOP (group-stop) or other events: go on.
		default:
			s.t.stash(tk, st.Sig)
		}
		if err := s.t.resume(tk, unix.PTRACE_SYSCALL, 0); err != nil {
			return err
		}
	}
	return fmt.Errorf("no syscall stop after %d stops", maxStops)
}

// End restores the thread's registers and signal mask and parks it in an
// interrupt stop again. The session must be ended even after errors.
func (s *Session) End() error {
	return s.t.Do(func() error { return s.end() })
}

func (s *Session) end() error {
	if s.ended {
		return nil
	}
	s.ended = true
	defer func() { s.t.injecting += time.Since(s.began) }()
	tk := s.tk
	tk.session = nil
	if s.t.tasks[tk.tid] != tk {
		return fmt.Errorf("end injection into %d: %w", tk.tid, ErrGone)
	}
	if !tk.stopped {
		// A failed resume/wait left it running: stop it first.
		if _, err := s.t.stop(tk); err != nil {
			return fmt.Errorf("end injection into %d: %w", tk.tid, err)
		}
	}
	if err := setRegs(tk.tid, &s.saved); err != nil {
		return err
	}
	if err := setSigmask(tk.tid, s.savedMask); err != nil {
		return err
	}
	if !s.ran {
		return nil
	}
	// Re-enter the get_signal trap (see the comment at the top). The
	// interrupt is taken before any pending signal is dequeued.
	s.t.stops++
	if _, err := s.t.retrap(tk); err != nil {
		return fmt.Errorf("end injection into %d: %w", tk.tid, err)
	}
	return nil
}

// EndWithSyscall runs syscall nr as the session's last call, at its
// syscall instruction (never through the runner), and ends the session:
// two stops where Syscall and End take three. From the call's entry stop
// the thread is resumed with an interrupt pending, so the call runs to
// its end and the thread traps inside get_signal on its way out, where
// End's re-trap would have put it; the call's result is in its rax
// there, and the thread gets its registers and mask back in that stop.
// Only for a call that does not sleep interruptibly (munmap): the
// pending interrupt would cut such a sleep short. On any failure the
// session is ended as End does.
func (s *Session) EndWithSyscall(nr uintptr, args ...uint64) (uint64, error) {
	if len(args) > 6 {
		return 0, fmt.Errorf("inject syscall %d: %d arguments", nr, len(args))
	}
	if forks(nr) || sendsSignal(nr) {
		return 0, fmt.Errorf("inject syscall %d: not as a session's last call", nr)
	}
	var ret uint64
	err := s.t.Do(func() error {
		var err error
		ret, err = s.endWithSyscall(nr, args)
		if err != nil {
			return errors.Join(err, s.end())
		}
		return nil
	})
	if err != nil {
		return ret, err
	}
	if r := int64(ret); r < 0 && r >= -4095 {
		return ret, fmt.Errorf("injected syscall %d in %d: %w", nr, s.tk.tid, unix.Errno(-r))
	}
	return ret, nil
}

func (s *Session) endWithSyscall(nr uintptr, args []uint64) (uint64, error) {
	if s.ended {
		return 0, errors.New("injection session already ended")
	}
	r, err := s.loadCall(nr, args)
	if err != nil {
		return 0, err
	}
	tk := s.tk
	s.t.stops += 2 // entry, and the trap after the call
	s.t.byNr[nr]++
	if err := s.t.resume(tk, unix.PTRACE_SYSCALL, 0); err != nil {
		return 0, err
	}
	if err := s.waitSyscallStop(); err != nil {
		return 0, fmt.Errorf("inject syscall %d into %d: %w", nr, tk.tid, err)
	}
	if _, err := ptrace(unix.PTRACE_INTERRUPT, tk.tid, 0, 0); err != nil {
		return 0, fmt.Errorf("interrupt %d: %w", tk.tid, err)
	}
	if err := s.t.resume(tk, unix.PTRACE_CONT, 0); err != nil {
		return 0, err
	}
	if _, err := s.t.waitTrap(tk); err != nil {
		return 0, fmt.Errorf("inject syscall %d into %d: %w", nr, tk.tid, err)
	}
	if err := getRegs(tk.tid, &r); err != nil {
		return 0, err
	}
	if int64(r.Orig_rax) != int64(nr) {
		// Not the trap after our call (it never ran): End's way.
		return 0, fmt.Errorf("inject syscall %d into %d: trapped with orig_rax %d", nr, tk.tid, int64(r.Orig_rax))
	}
	s.ended = true
	s.t.injecting += time.Since(s.began)
	tk.session = nil
	if err := setRegs(tk.tid, &s.saved); err != nil {
		return r.Rax, err
	}
	return r.Rax, setSigmask(tk.tid, s.savedMask)
}

// InjectedCalls returns how many syscalls were injected so far.
func (t *Tracer) InjectedCalls() int {
	var n int
	_ = t.Do(func() error { n = t.calls; return nil })
	return n
}

// InjectionStats returns how many injection sessions were opened, how
// many ptrace stops injection took (two per call at a syscall
// instruction, one per run of the batch runner, one to end a session),
// and how many syscalls of each number were injected so far.
func (t *Tracer) InjectionStats() (sessions, stops int, byNr map[uintptr]int) {
	_ = t.Do(func() error {
		sessions, stops = t.sessions, t.stops
		byNr = make(map[uintptr]int, len(t.byNr))
		for k, v := range t.byNr {
			byNr[k] = v
		}
		return nil
	})
	return sessions, stops, byNr
}

// InjectionTime returns the total time injection sessions of this tracer
// were open, ended ones only.
func (t *Tracer) InjectionTime() time.Duration {
	var d time.Duration
	_ = t.Do(func() error { d = t.injecting; return nil })
	return d
}

// InjectSyscall runs one syscall in stopped thread tid and restores it.
func (t *Tracer) InjectSyscall(tid int, nr uintptr, args ...uint64) (uint64, error) {
	s, err := t.BeginInjection(tid)
	if err != nil {
		return 0, err
	}
	ret, err := s.Syscall(nr, args...)
	if eerr := s.End(); eerr != nil && err == nil {
		err = eerr
	}
	return ret, err
}

// MapScratch maps size bytes of private anonymous read-write memory in the
// process of stopped thread tid by an injected mmap, for in/out buffers of
// injected calls (fill and read it with WriteMem/ReadMem).
func (t *Tracer) MapScratch(tid int, size uint64) (uint64, error) {
	return t.InjectSyscall(tid, unix.SYS_MMAP, 0, size,
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
}

// UnmapScratch unmaps memory mapped by MapScratch.
func (t *Tracer) UnmapScratch(tid int, addr, size uint64) error {
	_, err := t.InjectSyscall(tid, unix.SYS_MUNMAP, addr, size)
	return err
}
