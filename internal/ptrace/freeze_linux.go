package ptrace

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
)

// maxFreezeRounds bounds the re-scans of /proc/PID/task: a process that keeps
// creating threads faster than we stop them fails the freeze instead of
// looping forever.
const maxFreezeRounds = 100

// maxExitRetries bounds how often a thread that refuses PTRACE_SEIZE while
// nobody traces it is taken for one that is exiting.
const maxExitRetries = 20

// FreezeProcess seizes and stops every thread of process pid, re-reading
// /proc/PID/task until a full pass finds no thread it has not stopped (a
// stopped thread cannot create more, and a clone interrupted half-way is
// backed out by the kernel with -ERESTARTNOINTR). It returns the stopped
// tids, leader first. On any error every thread it stopped is detached
// again and the process runs on untouched.
func (t *Tracer) FreezeProcess(pid int, opts int) ([]int, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("freeze: bad pid %d", pid)
	}
	if pid == os.Getpid() {
		return nil, fmt.Errorf("freeze %d: cannot freeze ourselves", pid)
	}
	var tids []int
	err := t.Do(func() error {
		var err error
		tids, err = t.freeze(pid, opts)
		return err
	})
	return tids, err
}

func (t *Tracer) freeze(pid int, opts int) ([]int, error) {
	var ours []*task
	fail := func(err error) ([]int, error) {
		for i := len(ours) - 1; i >= 0; i-- {
			tk := ours[i]
			if t.tasks[tk.tid] != tk {
				continue // exited meanwhile
			}
			if !tk.stopped {
				if _, serr := t.stop(tk); serr != nil {
					continue
				}
			}
			_ = t.detach(tk, 0)
		}
		return nil, fmt.Errorf("freeze %d: %w", pid, err)
	}
	seen := make(map[int]bool)
	retries := make(map[int]int)
	for round := 0; ; round++ {
		if round == maxFreezeRounds {
			return fail(errors.New("thread set does not settle"))
		}
		list, err := procfs.Tasks(pid)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return fail(fmt.Errorf("no such process: %w", unix.ESRCH))
			}
			return fail(err)
		}
		fresh := false
		for _, tid := range list {
			if seen[tid] {
				continue
			}
			seen[tid] = true
			fresh = true
			if _, ok := t.tasks[tid]; ok {
				return fail(fmt.Errorf("thread %d already traced by this tracer", tid))
			}
			if _, err := ptrace(unix.PTRACE_SEIZE, tid, 0, uintptr(opts|DefaultOptions)); err != nil {
				if err == unix.ESRCH && tid != pid {
					continue // the thread exited under us
				}
				if err == unix.EPERM && tid != pid && retries[tid] < maxExitRetries && threadExiting(pid, tid) {
					// A thread on its way out refuses PTRACE_SEIZE; it
					// vanishes shortly, so look again next round. One
					// that stays is refused for another reason (an
					// LSM): report that, bounded.
					retries[tid]++
					delete(seen, tid)
					fresh = true
					time.Sleep(100 * time.Microsecond)
					continue
				}
				if err == unix.EPERM {
					return fail(fmt.Errorf("seize thread %d: %w (traced by someone else, a zombie, or not permitted)", tid, err))
				}
				return fail(fmt.Errorf("seize thread %d: %w", tid, err))
			}
			tk := &task{tid: tid, tgid: pid, opts: opts | DefaultOptions}
			t.tasks[tid] = tk
			ours = append(ours, tk)
			if _, err := t.stop(tk); err != nil {
				if errors.Is(err, ErrGone) && tid != pid {
					continue
				}
				return fail(err)
			}
		}
		if !fresh {
			break
		}
	}
	// Leader first, then the other threads by tid (tids wrap around
	// pid_max, so the leader need not be the smallest).
	tids := []int{pid}
	leader := false
	for _, tk := range ours {
		if t.tasks[tk.tid] != tk {
			continue
		}
		if tk.tid == pid {
			leader = true
		} else {
			tids = append(tids, tk.tid)
		}
	}
	if !leader {
		return fail(fmt.Errorf("leader %d not stopped: %w", pid, ErrGone))
	}
	sort.Ints(tids[1:])
	return tids, nil
}

func (t *Tracer) groupTasks(pid int) []*task {
	var out []*task
	for _, tk := range t.tasks {
		if t.tgidOf(tk) == pid {
			out = append(out, tk)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].tid < out[j].tid })
	return out
}

// ThawProcess detaches every thread of pid this tracer holds; the process
// resumes where it stopped (syscalls interrupted by the freeze restart). With
// leaveStopped the process is instead left in group-stop, as after SIGSTOP
// (dump -s).
func (t *Tracer) ThawProcess(pid int, leaveStopped bool) error {
	if leaveStopped {
		return t.ThawStopped(pid, unix.SIGSTOP)
	}
	return t.ThawStopped(pid, 0)
}

// ThawStopped detaches every thread of pid this tracer holds, leaving the
// process in a group-stop by stopSig (SIGSTOP, SIGTSTP, SIGTTIN or SIGTTOU),
// so that its parent's waitpid(WUNTRACED) reports that very signal; 0 lets
// it run. The caller must know the signal will stop it: the kernel discards
// SIGTSTP/SIGTTIN/SIGTTOU in an orphaned process group, and a handler or a
// mask catches them as any other signal.
func (t *Tracer) ThawStopped(pid int, stopSig unix.Signal) error {
	switch stopSig {
	case 0, unix.SIGSTOP, unix.SIGTSTP, unix.SIGTTIN, unix.SIGTTOU:
	default:
		return fmt.Errorf("thaw %d: %v is not a stop signal", pid, stopSig)
	}
	return t.Do(func() error {
		var errs []error
		if stopSig != 0 {
			// A detach signal is ignored unless the tracee is in a
			// signal-delivery-stop; ours sit in interrupt traps.
			// Queue the stop signal instead: each thread leaves its
			// trap inside get_signal, dequeues it (or sees the group
			// stop it started) and stops before any user code; the
			// group-stop's exit code, which waitpid reports, is the
			// signal that started it.
			if err := unix.Kill(pid, stopSig); err != nil {
				return fmt.Errorf("stop %d: %w", pid, err)
			}
		}
		for _, tk := range t.groupTasks(pid) {
			sig := unix.Signal(0)
			if !tk.stopped {
				if _, err := t.stop(tk); err != nil {
					if !errors.Is(err, ErrGone) {
						errs = append(errs, err)
					}
					continue
				}
			}
			if err := t.detach(tk, sig); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	})
}

// KillProcess kills process pid with SIGKILL while it is traced (so it runs
// no further instruction) and reaps the ptrace exit notifications of its
// threads. If we are also its real parent, the leader is reaped for good.
func (t *Tracer) KillProcess(pid int) error {
	return t.Do(func() error {
		if err := unix.Kill(pid, syscall.SIGKILL); err != nil && err != unix.ESRCH {
			return fmt.Errorf("kill %d: %w", pid, err)
		}
		tasks := t.groupTasks(pid)
		// Non-leaders first: the leader's exit is not reported until
		// the rest of its group is gone.
		sort.Slice(tasks, func(i, j int) bool { return tasks[j].tid == pid })
		for _, tk := range tasks {
			for i := 0; i < maxStops; i++ {
				if _, err := t.wait(tk); err != nil {
					break // ErrGone: reaped
				}
				// A stop raced with the kill: let it go on to die.
				_ = t.resume(tk, unix.PTRACE_CONT, 0)
			}
			t.forget(tk)
		}
		return nil
	})
}

// threadExiting reports whether thread tid of pid is gone or dying, as
// opposed to traced by someone else: an exiting thread refuses
// PTRACE_SEIZE with EPERM while nobody traces it.
func threadExiting(pid, tid int) bool {
	st, err := procfs.ReadTaskStatus(pid, tid)
	if err != nil {
		return true
	}
	return st.TracerPid == 0
}
