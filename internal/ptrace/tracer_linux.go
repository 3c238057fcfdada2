// Package ptrace drives other tasks through ptrace(2): seize and interrupt
// threads, freeze a whole thread group, read and write registers, signal
// state and memory, and inject system calls.
//
// The kernel ties a tracee to the one thread that attached it: every ptrace
// request must come from that thread. A Go goroutine may hop between OS
// threads, so a Tracer owns a goroutine locked to its OS thread and runs
// every ptrace call there. The thread is never unlocked; when the Tracer is
// closed the goroutine returns and the thread exits, and the kernel then
// detaches (or, with PTRACE_O_EXITKILL, kills) anything still attached.
package ptrace

import (
	"errors"
	"fmt"
	"runtime"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
)

// ErrClosed is returned by calls on a closed Tracer.
var ErrClosed = errors.New("ptrace: tracer closed")

// ErrGone reports that a tracee exited (or was killed) while we waited for it.
var ErrGone = errors.New("task exited")

// DefaultOptions are always added to Seize: TRACESYSGOOD tells syscall stops
// from SIGTRAPs, which syscall injection relies on.
const DefaultOptions = unix.PTRACE_O_TRACESYSGOOD

// task is the tracer's view of one tracee. Only the tracer thread touches it.
type task struct {
	tid  int
	tgid int // 0 until known
	// own is its tgid and tid in its own pid namespace, for the calls
	// injected in it that name it (zero until known).
	own     [2]int
	opts    int // PTRACE_O_* it was seized with (inherited by auto-attached children)
	stopped bool
	last    Stop // the last interrupt/group stop it reached
	// stash holds signals the tracee dequeued while we were injecting
	// syscalls (signals are blocked then, but SIGSTOP cannot be, nor a
	// forced SIGTRAP); they are sent again on detach.
	stash []stashed
	// session is the injection session in progress, ended (registers
	// restored) before any detach.
	session *Session
}

// Tracer serialises ptrace requests onto one locked OS thread.
type Tracer struct {
	reqs   chan func()
	quit   chan struct{}
	exited chan struct{}
	tid    int // OS thread id of the tracer thread
	// closing: Close was called on the tracer thread (inside Do); the
	// loop ends after the current function.
	closing bool

	// Owned by the tracer thread.
	tasks       map[int]*task
	syscallAddr map[int]uint64 // tgid → address of a syscall instruction
	xstateSize  int
	// injecting sums the time injection sessions were open (Begin to
	// End): the time a tracee spent in a state it cannot resume from
	// alone if the tracer died (borrowed rip, every signal blocked).
	injecting time.Duration
	// calls counts injected syscalls (a figure of where time goes), by
	// number in byNr; sessions counts injection sessions, stops the
	// ptrace stops they took (each a round trip through the scheduler).
	calls    int
	byNr     map[uintptr]int
	sessions int
	stops    int
}

// New starts a tracer thread.
func New() *Tracer {
	t := newTracer()
	ready := make(chan int)
	go t.loop(ready)
	t.tid = <-ready
	return t
}

func newTracer() *Tracer {
	return &Tracer{
		reqs:        make(chan func()),
		quit:        make(chan struct{}),
		exited:      make(chan struct{}),
		tasks:       make(map[int]*task),
		syscallAddr: make(map[int]uint64),
		byNr:        make(map[uintptr]int),
	}
}

func (t *Tracer) loop(ready chan<- int) {
	runtime.LockOSThread()
	if unix.Gettid() == unix.Getpid() {
		// The main thread: the runtime never lets it exit (it parks
		// it), so PTRACE_O_EXITKILL and Pdeathsig tied to it would not
		// fire on Close. Hold it until a goroutine locked to another
		// thread takes over; the new one cannot land here meanwhile.
		moved := make(chan int)
		go t.loop(moved)
		ready <- <-moved
		runtime.UnlockOSThread()
		return
	}
	// No UnlockOSThread: returning while locked makes the runtime terminate
	// this thread, which is what releases any tracee left behind.
	ready <- unix.Gettid()
	defer close(t.exited)
	for {
		select {
		case fn := <-t.reqs:
			fn()
			if t.closing {
				t.releaseAll()
				return
			}
		case <-t.quit:
			t.releaseAll()
			return
		}
	}
}

// Do runs fn on the tracer thread and returns its error. Use it to batch
// several calls: each trip to the tracer thread costs a cross-thread
// wake-up (~5 µs idle, far more on a loaded machine), while Tracer methods
// called from inside fn run inline. Also use it to fork a child whose
// parent thread (and so whose Pdeathsig) must be the tracer thread.
func (t *Tracer) Do(fn func() error) error {
	if unix.Gettid() == t.tid {
		// Already on the tracer thread (a nested call): only the
		// tracer goroutine can run here, since it is locked to it.
		return fn()
	}
	errc := make(chan error, 1)
	select {
	case t.reqs <- func() { errc <- fn() }:
	case <-t.exited:
		return ErrClosed
	}
	return <-errc
}

// ThreadID returns the OS thread id of the tracer thread (the TracerPid
// /proc shows for our tracees).
func (t *Tracer) ThreadID() int { return t.tid }

// Close detaches every tracee still attached (stopping running ones first,
// as the kernel only detaches stopped tracees) and ends the tracer thread;
// tracees seized with PTRACE_O_EXITKILL are not detached but killed by the
// kernel as the thread exits.
func (t *Tracer) Close() error {
	if unix.Gettid() == t.tid {
		// From a function run by Do: the loop ends once it returns
		// (waiting for it here would wait for ourselves).
		t.closing = true
		return nil
	}
	select {
	case <-t.exited:
		return nil
	default:
	}
	select {
	case t.quit <- struct{}{}:
	case <-t.exited:
	}
	<-t.exited
	return nil
}

func (t *Tracer) releaseAll() {
	for tid, tk := range t.tasks {
		if tk.opts&unix.PTRACE_O_EXITKILL != 0 {
			// Meant to die with us: the kernel kills it when the
			// tracer thread exits, right after this.
			continue
		}
		if !tk.stopped {
			if _, err := t.stop(tk); err != nil {
				continue
			}
		}
		_ = t.detach(tk, 0)
		delete(t.tasks, tid)
	}
}

// ptrace issues one raw ptrace request.
//
// Callers pass Go memory as uintptr(unsafe.Pointer(&x)) in the call: the
// directive below moves such x to the heap and keeps it alive for the
// call. Without it a stack x could be moved by a stack growth inside this
// wrapper, and the kernel would write to the stale stack: heap
// corruption, the likely cause of a rare GC crash seen in kerndat's tests.
//
//go:uintptrescapes
func ptrace(req int, tid int, addr, data uintptr) (uintptr, error) {
	r, _, e := unix.Syscall6(unix.SYS_PTRACE, uintptr(req), uintptr(tid), addr, data, 0, 0)
	if e != 0 {
		return 0, e
	}
	return r, nil
}

// Stop describes a ptrace stop as reported by wait.
type Stop struct {
	Sig   unix.Signal // WSTOPSIG (SIGTRAP|0x80 for syscall stops)
	Event int         // PTRACE_EVENT_* from status>>16, 0 for signal stops
}

// GroupStop reports whether the stop is a group-stop (the task was stopped
// by SIGSTOP/SIGTSTP/SIGTTIN/SIGTTOU and stays stopped after detach).
func (s Stop) GroupStop() bool {
	if s.Event != unix.PTRACE_EVENT_STOP {
		return false
	}
	switch s.Sig {
	case unix.SIGSTOP, unix.SIGTSTP, unix.SIGTTIN, unix.SIGTTOU:
		return true
	}
	return false
}

func (s Stop) String() string {
	if s.Event != 0 {
		return fmt.Sprintf("event %d (sig %d)", s.Event, int(s.Sig))
	}
	if s.Sig == unix.SIGTRAP|0x80 {
		return "syscall stop"
	}
	return fmt.Sprintf("signal %v", s.Sig)
}

func (s Stop) isSyscall() bool { return s.Event == 0 && s.Sig == unix.SIGTRAP|0x80 }

// wait waits for the next stop of tk. If the task exited it is forgotten and
// ErrGone is returned.
func (t *Tracer) wait(tk *task) (Stop, error) {
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(tk.tid, &ws, unix.WALL, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			if err == unix.ECHILD {
				// Someone else reaped it, or it is no longer ours.
				t.forget(tk)
				return Stop{}, fmt.Errorf("wait %d: %w (%w)", tk.tid, ErrGone, err)
			}
			return Stop{}, fmt.Errorf("wait %d: %w", tk.tid, err)
		}
		break
	}
	switch {
	case ws.Exited():
		t.forget(tk)
		return Stop{}, fmt.Errorf("task %d: %w with status %d", tk.tid, ErrGone, ws.ExitStatus())
	case ws.Signaled():
		t.forget(tk)
		return Stop{}, fmt.Errorf("task %d: %w, killed by %v", tk.tid, ErrGone, ws.Signal())
	case ws.Stopped():
		tk.stopped = true
		// Not ws.TrapCause(): it answers -1 unless the signal is exactly
		// SIGTRAP, and group-stops carry their stop signal.
		return Stop{Sig: ws.StopSignal(), Event: int(uint32(ws)>>16) & 0xff}, nil
	}
	return Stop{}, fmt.Errorf("wait %d: unexpected status %#x", tk.tid, uint32(ws))
}

// resume restarts a stopped tracee with request req (PTRACE_CONT,
// PTRACE_SYSCALL, …) delivering sig.
func (t *Tracer) resume(tk *task, req int, sig unix.Signal) error {
	if _, err := ptrace(req, tk.tid, 0, uintptr(sig)); err != nil {
		return fmt.Errorf("resume %d: %w", tk.tid, err)
	}
	tk.stopped = false
	return nil
}

// maxStops bounds the loops that step a tracee through unexpected stops.
const maxStops = 64

// stop brings a seized tracee to a PTRACE_EVENT_STOP trap (inside the
// kernel's get_signal, which is where the syscall-restart logic runs when
// the task is resumed). Signals the task dequeued meanwhile are delivered;
// children reported by fork/clone events are collected.
func (t *Tracer) stop(tk *task) (Stop, error) {
	if _, err := ptrace(unix.PTRACE_INTERRUPT, tk.tid, 0, 0); err != nil {
		return Stop{}, fmt.Errorf("interrupt %d: %w", tk.tid, err)
	}
	return t.waitTrap(tk)
}

// retrap moves a tracee that is stopped somewhere else (a syscall stop) back
// into a PTRACE_EVENT_STOP trap.
func (t *Tracer) retrap(tk *task) (Stop, error) {
	if _, err := ptrace(unix.PTRACE_INTERRUPT, tk.tid, 0, 0); err != nil {
		return Stop{}, fmt.Errorf("interrupt %d: %w", tk.tid, err)
	}
	if err := t.resume(tk, unix.PTRACE_CONT, 0); err != nil {
		return Stop{}, err
	}
	return t.waitTrap(tk)
}

// waitTrap waits for an interrupted tracee's PTRACE_EVENT_STOP.
func (t *Tracer) waitTrap(tk *task) (Stop, error) {
	for i := 0; i < maxStops; i++ {
		st, err := t.wait(tk)
		if err != nil {
			return st, err
		}
		if st.Event == unix.PTRACE_EVENT_STOP {
			tk.last = st
			return st, nil
		}
		sig := unix.Signal(0)
		switch {
		case st.Event != 0:
			if _, err := t.onEvent(tk, st); err != nil {
				return st, err
			}
		case st.isSyscall():
		default:
			// Signal-delivery-stop: let the signal through, as it
			// would have been without us.
			sig = st.Sig
		}
		// Any ptrace trap clears a pending interrupt: ask again before
		// resuming, so the next trap is ours.
		if _, err := ptrace(unix.PTRACE_INTERRUPT, tk.tid, 0, 0); err != nil {
			return st, fmt.Errorf("interrupt %d: %w", tk.tid, err)
		}
		if err := t.resume(tk, unix.PTRACE_CONT, sig); err != nil {
			return st, err
		}
	}
	return Stop{}, fmt.Errorf("task %d did not reach an interrupt stop after %d stops", tk.tid, maxStops)
}

// onEvent handles fork/clone/vfork event stops: the new child is already
// attached (auto-attach keeps SEIZE semantics) and begins with a
// PTRACE_EVENT_STOP, which we wait for here so that it is stopped and known.
// It returns the child's tid (0 for other events).
func (t *Tracer) onEvent(tk *task, st Stop) (int, error) {
	switch st.Event {
	case unix.PTRACE_EVENT_FORK, unix.PTRACE_EVENT_VFORK, unix.PTRACE_EVENT_CLONE:
	default:
		return 0, nil
	}
	var msg uint64
	if _, err := ptrace(unix.PTRACE_GETEVENTMSG, tk.tid, 0, uintptr(unsafe.Pointer(&msg))); err != nil {
		return 0, fmt.Errorf("get event message of %d: %w", tk.tid, err)
	}
	child := &task{tid: int(msg), opts: tk.opts}
	t.tasks[child.tid] = child
	// A forked child has a copy of the parent's address space, so the
	// parent's syscall instruction is valid in it too.
	if ptg, ctg := t.tgidOf(tk), t.tgidOf(child); ptg != ctg {
		if a, ok := t.syscallAddr[ptg]; ok {
			t.syscallAddr[ctg] = a
		}
	}
	for i := 0; i < maxStops; i++ {
		cst, err := t.wait(child)
		if err != nil {
			return 0, fmt.Errorf("new child %d of %d: %w", child.tid, tk.tid, err)
		}
		if cst.Event == unix.PTRACE_EVENT_STOP {
			return child.tid, nil
		}
		if err := t.resume(child, unix.PTRACE_CONT, 0); err != nil {
			return 0, err
		}
	}
	return 0, fmt.Errorf("new child %d of %d never stopped", child.tid, tk.tid)
}

// detach releases a stopped tracee. sig only takes effect if the tracee
// is in a signal-delivery-stop (never the case for tasks we stopped: the
// kernel ignores it in interrupt traps), so stashed signals are re-sent.
func (t *Tracer) detach(tk *task, sig unix.Signal) error {
	if s := tk.session; s != nil {
		// Never let a thread go with injection registers.
		if err := s.end(); err != nil {
			return fmt.Errorf("detach %d: %w", tk.tid, err)
		}
	}
	qerr := t.requeueStash(tk)
	_, err := ptrace(unix.PTRACE_DETACH, tk.tid, 0, uintptr(sig))
	for _, s := range tk.stash {
		_ = unix.Tgkill(t.tgidOf(tk), tk.tid, syscall.Signal(s.sig))
	}
	t.forget(tk)
	if err != nil && err != unix.ESRCH {
		return errors.Join(fmt.Errorf("detach %d: %w", tk.tid, err), qerr)
	}
	return qerr
}

// forget drops tk, and the cached syscall address of its process once no
// thread of it is traced any more (the PID may be reused).
func (t *Tracer) forget(tk *task) {
	delete(t.tasks, tk.tid)
	tg := tk.tgid
	if tg == 0 {
		return
	}
	for _, o := range t.tasks {
		if o.tgid == tg {
			return
		}
	}
	delete(t.syscallAddr, tg)
}

// tgidOf returns the thread group of tk, reading /proc/TID/status once.
func (t *Tracer) tgidOf(tk *task) int {
	if tk.tgid == 0 {
		if st, err := procfs.ReadStatus(tk.tid); err == nil {
			tk.tgid = st.Tgid
		}
	}
	return tk.tgid
}

func (t *Tracer) get(tid int) (*task, error) {
	tk := t.tasks[tid]
	if tk == nil {
		return nil, fmt.Errorf("task %d is not traced by this tracer", tid)
	}
	return tk, nil
}

func (t *Tracer) getStopped(tid int) (*task, error) {
	tk, err := t.get(tid)
	if err != nil {
		return nil, err
	}
	if !tk.stopped {
		return nil, fmt.Errorf("task %d is running, not stopped", tid)
	}
	return tk, nil
}

// Seize attaches to tid with PTRACE_SEIZE (the task keeps running).
// opts are PTRACE_O_* flags; DefaultOptions are always added. Use
// PTRACE_O_EXITKILL only for tasks that must die with us (puppets), never
// for a dump target.
func (t *Tracer) Seize(tid int, opts int) error {
	return t.Do(func() error { return t.seize(tid, opts) })
}

func (t *Tracer) seize(tid int, opts int) error {
	if _, ok := t.tasks[tid]; ok {
		return fmt.Errorf("seize %d: already traced by us", tid)
	}
	if _, err := ptrace(unix.PTRACE_SEIZE, tid, 0, uintptr(opts|DefaultOptions)); err != nil {
		return fmt.Errorf("seize %d: %w", tid, err)
	}
	tk := &task{tid: tid, opts: opts | DefaultOptions}
	// Learn the thread group now, while /proc/TID is surely there: thaw,
	// kill and signal forwarding need it later.
	t.tgidOf(tk)
	t.tasks[tid] = tk
	return nil
}

// Interrupt stops a seized, running tracee and waits until it sits in a
// PTRACE_EVENT_STOP trap. A task blocked in a syscall leaves it first: its
// registers then show rax = -ERESTART* and orig_rax = the syscall.
func (t *Tracer) Interrupt(tid int) (Stop, error) {
	var st Stop
	err := t.Do(func() error {
		tk, err := t.get(tid)
		if err != nil {
			return err
		}
		if tk.stopped {
			return fmt.Errorf("interrupt %d: already stopped", tid)
		}
		st, err = t.stop(tk)
		return err
	})
	return st, err
}

// Attach seizes tid and stops it (Seize + Interrupt). On failure tid is left
// untraced.
func (t *Tracer) Attach(tid int, opts int) (Stop, error) {
	var st Stop
	err := t.Do(func() error {
		if err := t.seize(tid, opts); err != nil {
			return err
		}
		var err error
		st, err = t.stop(t.tasks[tid])
		if err != nil && t.tasks[tid] != nil {
			// Not stopped: the kernel only detaches stopped
			// tracees, so the tracer thread's exit will release
			// it; try a detach anyway.
			_ = t.detach(t.tasks[tid], 0)
		}
		return err
	})
	return st, err
}

// Detach releases a stopped tracee. sig (0 for none) is delivered only if
// the tracee is in a signal-delivery-stop; tracees stopped by this package
// sit in interrupt traps, where the kernel ignores it.
func (t *Tracer) Detach(tid int, sig unix.Signal) error {
	return t.Do(func() error {
		tk, err := t.getStopped(tid)
		if err != nil {
			return err
		}
		return t.detach(tk, sig)
	})
}

// Cont resumes a stopped tracee (it stays traced); Interrupt stops it again.
func (t *Tracer) Cont(tid int, sig unix.Signal) error {
	return t.Do(func() error {
		tk, err := t.getStopped(tid)
		if err != nil {
			return err
		}
		return t.resume(tk, unix.PTRACE_CONT, sig)
	})
}

// LastStop returns the interrupt or group stop tid last reached; after a
// freeze, GroupStop() tells whether the task was stopped by a signal (and
// is to be dumped and restored as stopped).
func (t *Tracer) LastStop(tid int) (Stop, error) {
	var st Stop
	err := t.Do(func() error {
		tk, err := t.getStopped(tid)
		if err == nil {
			st = tk.last
		}
		return err
	})
	return st, err
}

// Traced lists the tids this tracer holds.
func (t *Tracer) Traced() []int {
	var out []int
	_ = t.Do(func() error {
		for tid := range t.tasks {
			out = append(out, tid)
		}
		return nil
	})
	return out
}

// KillOnExit sets (on) or clears PTRACE_O_EXITKILL on every stopped tracee:
// set, the kernel kills them if the tracer thread exits (this process
// dies) while they are attached, with no window where they run. Detach
// still lets them go.
func (t *Tracer) KillOnExit(on bool) error {
	return t.Do(func() error {
		var errs []error
		for tid, tk := range t.tasks {
			if !tk.stopped {
				errs = append(errs, fmt.Errorf("PTRACE_O_EXITKILL on %d: not stopped", tid))
				continue
			}
			opts := tk.opts &^ unix.PTRACE_O_EXITKILL
			if on {
				opts |= unix.PTRACE_O_EXITKILL
			}
			if _, err := ptrace(unix.PTRACE_SETOPTIONS, tid, 0, uintptr(opts)); err != nil {
				errs = append(errs, fmt.Errorf("PTRACE_O_EXITKILL on %d: %w", tid, err))
				continue
			}
			tk.opts = opts
		}
		return errors.Join(errs...)
	})
}
