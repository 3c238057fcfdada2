package restorer

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"godwit/internal/drivers"
	"godwit/internal/inject"
	"godwit/internal/model"
	"godwit/internal/ptrace"
	"godwit/internal/turns"
	"godwit/internal/xstate"
)

// Finalize rebuilds everything but memory: the threads, then every kind of
// state by its driver (internal/drivers: session and process group, file
// descriptors, fs, sigactions, timers, personality and other prctls,
// per-thread state, rlimits, credentials, pending signals …) in their
// dependency order, with the engine's phases where they fall: the mm
// (exe, auxv, brk and boundaries, final protections) before the rlimits,
// and last the removal of godwit's window and every thread's registers,
// FPU state and signal mask. The task stays stopped until Resume.
func (r *Restorer) Finalize() error {
	if err := r.need(phaseLaidOut, "finalize"); err != nil {
		return err
	}
	ds, err := drivers.Ordered()
	if err != nil {
		return r.fail("finalize", err)
	}
	tables := map[model.ID]bool{} // fd tables restored (CLONE_FILES), in turn
	if r.held == nil {            // else made with the tree (earlyCtty)
		r.held = drivers.NewHeld()
	}
	defer func() { r.held.Close(); r.held = nil }()
	// Each task on its tracer's thread: every ptrace call of its drivers
	// runs inline, with no cross-thread hop (each a wake-up, far dearer
	// than the call on a loaded machine); the tracers at once.
	t, err := r.eachTask(func(t *taskRun, ts *turns.Turns) error {
		if serr := t.finalize(ds, tables, ts); serr != nil {
			return serr
		}
		return nil
	})
	if err != nil {
		var serr *stepErr
		if errors.As(err, &serr) {
			if t == r.root {
				return r.fail(serr.step, serr.err)
			}
			return r.fail(fmt.Sprintf("task %d: %s", t.img.pid, serr.step), serr.err)
		}
		return r.fail(fmt.Sprintf("task %d", t.img.pid), err)
	}
	r.phase = phaseFinalized
	return nil
}

// stepErr is a failed step of one task.
type stepErr struct {
	step string
	err  error
}

func (e *stepErr) Error() string { return e.step + ": " + e.err.Error() }
func (e *stepErr) Unwrap() error { return e.err }

// turnDrivers restore what other tasks of the tree share or take from
// this one (open file descriptions, objects held for a task not restored
// yet, the session's terminal, fs info): they run in tree order, one task
// at a time, as with a single tracer.
var turnDrivers = map[string]bool{"session": true, "files": true, "ctty": true, "fs": true}

func (t *taskRun) finalize(ds []drivers.Driver, tables map[model.ID]bool, ts *turns.Turns) (serr *stepErr) {
	r := t
	k := t.img.task
	// The turn spans the turn drivers; a task sharing its fd table or
	// fs info with another holds it throughout (sharesTables).
	first, last := -1, -1
	for i, d := range ds {
		if turnDrivers[d.Name()] {
			if first < 0 {
				first = i
			}
			last = i
		}
	}
	if r.sharesTables(t) {
		first, last = 0, len(ds)-1
	}
	defer ts.Leave(t.idx)
	rc := &drivers.Restore{Tree: r.img.tree, Task: k, Log: r.log,
		// Only the root's parent is godwit (its parent-death signal
		// would fire as godwit exits); the others' are in the tree, and
		// a sibling root's is godwit's parent, which lives on.
		Detach: r.o.Detach && !r.o.RestoreSibling && t == r.root, ShellJob: r.o.ShellJob, Validated: r.validated, Opened: r.opened,
		Inherit: r.o.InheritFD, Held: r.held, TCPEstablished: r.o.TCPEstablished, TCPClose: r.o.TCPClose}
	// One injection session in the leader serves every driver up to the
	// next engine phase: opening and ending one costs a stop of its own.
	lead := &leaderSession{r: r}
	step := ""
	defer func() {
		if err := lead.end(); err != nil && serr == nil {
			serr = &stepErr{step, err}
		}
	}()
	for i, d := range ds {
		var err error
		step = d.Name()
		if i == first {
			if err := ts.Enter(t.idx); err != nil {
				return &stepErr{step, err}
			}
		}
		if i == last+1 {
			// The leader's calls still queued (fs's chdir and umask)
			// touch nothing another task sees: its fs info is its own.
			ts.Leave(t.idx)
		}
		switch d.Name() {
		case drivers.PhaseThreads:
			// Made by Layout, with the tasks.
		case drivers.PhaseMM:
			if r.runner && r.scratchMapped {
				// In the leader's session, queued: the runner
				// lies outside the puppet's code it unmaps.
				var s *session
				if s, err = lead.get(); err == nil {
					err = r.finishMMQueued(s)
				}
				break
			}
			if err = lead.end(); err == nil {
				err = r.finishMM()
			}
		case drivers.PhaseRegisters:
			if lead.s != nil {
				// The window goes with the session's last call.
				s := lead.s
				lead.s = nil
				err = r.unmapWindowAndEnd(s)
			}
			if err == nil {
				err = r.registers()
			}
		default:
			if d.Name() == "files" {
				// An fd table shared with CLONE_FILES is restored
				// once, by its first task.
				if tables[k.IDs.Files] {
					continue
				}
				tables[k.IDs.Files] = true
			}
			if tr, ok := d.(drivers.TaskRestorer); ok {
				var s *session
				if s, err = lead.get(); err == nil {
					err = tr.Restore(rc, s)
				}
			}
			if thr, ok := d.(drivers.ThreadRestorer); ok && err == nil {
				err = r.eachThread(lead, func(s *session, t *thread) error { return thr.RestoreThread(rc, s, t) })
			}
		}
		if err != nil {
			return &stepErr{d.Name(), err}
		}
	}
	return nil
}

// leaderSession is an injection session in the task's leader, opened
// when first needed and kept for the drivers after it.
type leaderSession struct {
	r *taskRun
	s *session
}

func (l *leaderSession) get() (*session, error) {
	if l.s == nil {
		s, err := l.r.begin(l.r.img.pid)
		if err != nil {
			return nil, err
		}
		l.s = s
	}
	return l.s, nil
}

func (l *leaderSession) end() error {
	if l.s == nil {
		return nil
	}
	s := l.s
	l.s = nil
	return s.End(nil)
}

// eachThread runs fn in every thread, the leader in its open session.
func (r *taskRun) eachThread(lead *leaderSession, fn func(*session, *thread) error) error {
	for i := range r.img.threads {
		t := r.img.threads[i]
		if t.Tid == r.img.pid {
			s, err := lead.get()
			if err == nil {
				err = fn(s, t)
			}
			if err != nil {
				return fmt.Errorf("thread %d: %w", t.Tid, err)
			}
			continue
		}
		if lead.s != nil {
			// The leader's queued calls (inject.Session.Later) run
			// before another thread's.
			if err := lead.s.Flush(); err != nil {
				return err
			}
		}
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

// makeThreads adds every dumped thread with its TID (clone3 CLONE_THREAD
// with set_tid, injected into the task).
func (r *taskRun) makeThreads() error {
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

// finishMM moves injection to a syscall instruction of the restored vDSO
// (or text), unmaps the puppet's code, sets the dumped protections, then
// PR_SET_MM_MAP (exe, auxv, brk, boundaries: the per-field PR_SET_MM_*
// calls need CAP_SYS_RESOURCE) and finally chroot.
func (r *taskRun) finishMM() error {
	pid := r.img.pid
	addr, err := ptrace.FindSyscallInsnOutside(pid, r.win.base, r.win.base+windowSize)
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

// finishMMQueued is finishMM in the leader's open session (which has the
// runner), its calls queued for the session's next stop.
func (r *taskRun) finishMMQueued(s *session) error {
	pid := r.img.pid
	addr, err := ptrace.FindSyscallInsnOutside(pid, r.win.base, r.win.base+windowSize)
	if err != nil {
		return err
	}
	if addr >= r.win.base && addr < r.win.base+windowSize {
		return fmt.Errorf("no syscall instruction in the restored executable mappings")
	}
	r.tr.SetSyscallAddr(pid, addr)
	s.Ptrace().UseSyscallAddr(addr)
	s.Later("unmap puppet code", unix.SYS_MUNMAP, r.win.base, scratchOff)
	for _, p := range r.protFix {
		s.Later(fmt.Sprintf("mprotect vma %#x-%#x", p.start, p.end), unix.SYS_MPROTECT, p.start, p.end-p.start, uint64(p.prot))
	}
	return nil
}

// unmapWindowAndEnd runs the queued calls, then unmaps godwit's window
// (at the session's syscall instruction: the runner goes with it) as the
// session's last call, and ends the session.
func (r *taskRun) unmapWindowAndEnd(s *session) error {
	err := s.EndWith("unmap scratch", unix.SYS_MUNMAP, r.win.base, windowSize)
	r.windowGone = err == nil
	return err
}

func (r *taskRun) finishMMIn(s *session) error {
	if _, err := s.Call("unmap puppet code", unix.SYS_MUNMAP, r.win.base, scratchOff); err != nil {
		return err
	}
	b := &batch{s: s}
	for _, p := range r.protFix {
		b.add(inject.C(fmt.Sprintf("mprotect vma %#x-%#x", p.start, p.end), unix.SYS_MPROTECT,
			p.start, p.end-p.start, uint64(p.prot)), nil)
	}
	return b.flush()
}

// registers unmaps godwit's window and gives every thread its signal mask,
// FPU state and registers, last (the injections above ran on the puppet's
// registers, which each session put back).
func (r *taskRun) registers() error {
	pid := r.img.pid
	if !r.windowGone {
		s, err := r.begin(pid)
		if err != nil {
			return err
		}
		if err := r.unmapWindowAndEnd(s); err != nil {
			return err
		}
	}
	for i := range r.img.threads {
		t := r.img.threads[i]
		if err := r.setThreadRegs(t); err != nil {
			return fmt.Errorf("thread %d: %w", t.Tid, err)
		}
	}
	return nil
}

func (r *taskRun) setThreadRegs(t *thread) error {
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
	if tl := t.Tiles; tl != nil {
		if err := xstate.PutTiles(x, tl.Cfg, tl.Data); err != nil {
			return fmt.Errorf("amx tile state: %w", err)
		}
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
		// A thread already inside restart_syscall re-runs the call
		// it restarts (drivers.RestartedCall; the dump checked it).
		nr, err := drivers.RestartedCall(t.Tid, &t.Regs)
		if err != nil {
			return err
		}
		regs.Orig_rax = nr
	}
	return r.tr.SetRegs(t.Tid, regs)
}

// negErrno is -e as a register value.
func negErrno(e int) uint64 { return uint64(-int64(e)) }
