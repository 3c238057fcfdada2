package kerndat

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/abi/linux"
)

// Some probes need a child that does something to itself: call clone3 with
// set_tid, PR_SET_MM_MAP its own mm, install a seccomp filter, unmap and
// re-map its vDSO, mount in a private mount namespace. godwit cannot
// re-exec itself in a helper role (the caller is the CLI, whatever it was
// built as) and cannot ship a C helper, so such a child is made here with
// a raw clone3 (no CLONE_VM: the child gets a copy of our memory and only
// the calling thread) that runs a fixed list of raw system calls and then
// exits, or pauses until killed. The child never returns into the Go
// runtime: everything it runs is nosplit and allocation-free, its inputs
// are prepared before the fork, all signals are blocked in it, and its
// results go to a MAP_SHARED page the parent reads after the child exits.

const maxRawSteps = 12

// noArg marks a rawStep argument index as unused.
const noArg = -1

type rawStep struct {
	nr   uintptr
	args [6]uintptr
	// prevArg, if not noArg, is the index of the argument replaced by the
	// previous step's return value (e.g. an fd just opened).
	prevArg int
	// pidArg, if not noArg, is the index of the argument replaced by the
	// child's own PID.
	pidArg int
}

type rawProg struct {
	steps [maxRawSteps]rawStep
	n     int
	// hold makes the child pause after its steps until it is killed.
	hold bool
	// parent is the pid of the process that forks the child (set by
	// startRaw).
	parent uintptr
}

// rawResult lives in a MAP_SHARED page written by the child.
type rawResult struct {
	done   uintptr // steps that succeeded
	failed uintptr // 1 + index of the failed step, 0 if none
	errno  uintptr
	ret    [maxRawSteps]uintptr
}

func (p *rawProg) add(nr uintptr, args ...uintptr) *rawStep {
	if p.n >= maxRawSteps {
		panic("kerndat: raw child program too long")
	}
	s := &p.steps[p.n]
	p.n++
	s.nr = nr
	copy(s.args[:], args)
	s.prevArg, s.pidArg = noArg, noArg
	return s
}

// rawChild is what the forked child runs. It must not return.
//
//go:nosplit
//go:norace
func rawChild(p *rawProg, res *rawResult) {
	// Die with godwit: a killed `godwit check` must not leave children
	// holding namespaces or filters. If it is already gone, stop here.
	syscall.RawSyscall(unix.SYS_PRCTL, unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0)
	if ppid, _, _ := syscall.RawSyscall(unix.SYS_GETPPID, 0, 0, 0); ppid != p.parent {
		syscall.RawSyscall(unix.SYS_EXIT_GROUP, 1, 0, 0)
	}
	self, _, _ := syscall.RawSyscall(unix.SYS_GETPID, 0, 0, 0)
	var prev uintptr
	for i := 0; i < maxRawSteps && i < p.n; i++ {
		s := &p.steps[i]
		a0, a1, a2, a3, a4, a5 := s.args[0], s.args[1], s.args[2], s.args[3], s.args[4], s.args[5]
		switch s.prevArg {
		case 0:
			a0 = prev
		case 1:
			a1 = prev
		case 2:
			a2 = prev
		case 3:
			a3 = prev
		}
		switch s.pidArg {
		case 0:
			a0 = self
		case 1:
			a1 = self
		case 2:
			a2 = self
		}
		r1, _, e := syscall.RawSyscall6(s.nr, a0, a1, a2, a3, a4, a5)
		if e != 0 {
			res.errno = uintptr(e)
			res.failed = uintptr(i) + 1
			syscall.RawSyscall(unix.SYS_EXIT_GROUP, 1, 0, 0)
		}
		res.ret[i] = r1
		res.done = uintptr(i) + 1
		prev = r1
	}
	if p.hold {
		for { // ppoll on nothing, no timeout: sleeps until SIGKILL
			syscall.RawSyscall6(unix.SYS_PPOLL, 0, 0, 0, 0, 0, 0)
		}
	}
	syscall.RawSyscall(unix.SYS_EXIT_GROUP, 0, 0, 0)
}

// rawClone3 forks; in the child it runs p and never returns.
//
//go:nosplit
//go:norace
func rawClone3(args *linux.CloneArgs, p *rawProg, res *rawResult) (pid uintptr, errno syscall.Errno) {
	r1, _, e := syscall.RawSyscall(unix.SYS_CLONE3, uintptr(unsafe.Pointer(args)), linux.CloneArgsSize, 0)
	if e != 0 {
		return 0, e
	}
	if r1 == 0 {
		rawChild(p, res)
	}
	return r1, 0
}

// rawChildProc is a forked raw child.
type rawChildProc struct {
	pid    int
	res    *rawResult
	shared []byte
	prog   *rawProg
	keep   []any // memory the program points into
	reaped bool
}

// startRaw forks a raw child running p. setTID, if non-zero, asks clone3 for
// that PID. keep holds whatever p's arguments point into, so it stays
// alive until the child is reaped.
func startRaw(p *rawProg, setTID int32, keep ...any) (*rawChildProc, error) {
	shared, err := unix.Mmap(-1, 0, unix.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("mmap result page: %w", err)
	}
	res := (*rawResult)(unsafe.Pointer(&shared[0]))
	p.parent = uintptr(os.Getpid())
	tid := []int32{setTID}
	args := &linux.CloneArgs{ExitSignal: uint64(unix.SIGCHLD)}
	if setTID != 0 {
		args.SetTid = uint64(uintptr(unsafe.Pointer(&tid[0])))
		args.SetTidSize = 1
	}

	// Block every signal on this thread across the fork, so that the
	// child starts (and stays) with all of them blocked: no Go signal
	// handler can ever run in it.
	runtime.LockOSThread()
	var all, old unix.Sigset_t
	for i := range all.Val {
		all.Val[i] = ^uint64(0)
	}
	if err := unix.PthreadSigmask(unix.SIG_SETMASK, &all, &old); err != nil {
		runtime.UnlockOSThread()
		_ = unix.Munmap(shared)
		return nil, fmt.Errorf("block signals: %w", err)
	}
	pid, errno := rawClone3(args, p, res)
	_ = unix.PthreadSigmask(unix.SIG_SETMASK, &old, nil)
	runtime.UnlockOSThread()
	runtime.KeepAlive(tid)
	runtime.KeepAlive(args)
	if errno != 0 {
		_ = unix.Munmap(shared)
		return nil, fmt.Errorf("clone3: %w", errno)
	}
	return &rawChildProc{pid: int(pid), res: res, shared: shared, prog: p, keep: keep}, nil
}

// wait reaps the child (killing it first after timeout) and reports how
// its program went.
func (c *rawChildProc) wait(timeout time.Duration) error {
	t := time.AfterFunc(timeout, func() { _ = unix.Kill(c.pid, unix.SIGKILL) })
	ws, err := reap(c.pid)
	t.Stop()
	c.release()
	if err != nil {
		return err
	}
	return c.status(ws)
}

// kill kills and reaps the child.
func (c *rawChildProc) kill() {
	if c.reaped {
		return
	}
	_ = unix.Kill(c.pid, unix.SIGKILL)
	_, _ = reap(c.pid)
	c.release()
}

func (c *rawChildProc) release() {
	c.reaped = true
	runtime.KeepAlive(c.prog)
	runtime.KeepAlive(c.keep)
}

// free unmaps the result page; call after the last look at the results.
func (c *rawChildProc) free() {
	if c.shared != nil {
		_ = unix.Munmap(c.shared)
		c.shared, c.res = nil, nil
	}
}

func (c *rawChildProc) status(ws unix.WaitStatus) error {
	if c.res.failed != 0 {
		return &rawStepError{Step: int(c.res.failed) - 1, Nr: c.prog.steps[c.res.failed-1].nr, Errno: syscall.Errno(c.res.errno)}
	}
	switch {
	case ws.Exited() && ws.ExitStatus() == 0:
		return nil
	case ws.Exited():
		return fmt.Errorf("raw child exited with %d", ws.ExitStatus())
	case ws.Signaled():
		return fmt.Errorf("raw child killed by %v", ws.Signal())
	}
	return fmt.Errorf("raw child: unexpected wait status %#x", uint32(ws))
}

// rawStepError says which system call of a raw child failed.
type rawStepError struct {
	Step  int
	Nr    uintptr
	Errno syscall.Errno
}

func (e *rawStepError) Error() string {
	return fmt.Sprintf("step %d (syscall %d): %v", e.Step, e.Nr, e.Errno)
}

func (e *rawStepError) Unwrap() error { return e.Errno }

// reap waits for pid to terminate, skipping stops, retrying on EINTR.
func reap(pid int) (unix.WaitStatus, error) {
	for {
		var ws unix.WaitStatus
		_, err := unix.Wait4(pid, &ws, unix.WALL, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return ws, fmt.Errorf("wait4 %d: %w", pid, err)
		}
		if ws.Exited() || ws.Signaled() {
			return ws, nil
		}
	}
}
