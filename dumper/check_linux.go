package dumper

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
	"godwit/internal/ptrace"
)

// pfKthread is PF_KTHREAD of include/linux/sched.h (the flags field of
// /proc/PID/stat).
const pfKthread = 0x00200000

// Check refuses, with a one-line reason, a PID godwit cannot dump: one that
// does not exist, PID 1, godwit itself or one of its ancestors, a zombie or
// a kernel thread, a thread that is not a group leader, and one already
// traced. Children are checked as the tree is frozen.
func Check(pid int) error {
	if pid <= 0 {
		return fmt.Errorf("bad pid %d", pid)
	}
	st, err := procfs.ReadStatus(pid)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("no process with pid %d", pid)
		}
		return fmt.Errorf("pid %d: %w", pid, err)
	}
	if pid == 1 {
		return errors.New("refusing to dump pid 1 (init)")
	}
	if st.Tgid != pid {
		return fmt.Errorf("pid %d is a thread of process %d, not a process", pid, st.Tgid)
	}
	if self := os.Getpid(); pid == self {
		return fmt.Errorf("refusing to dump pid %d: it is godwit itself", pid)
	}
	if isAncestor(pid) {
		return fmt.Errorf("refusing to dump pid %d: it is an ancestor of godwit", pid)
	}
	if st.State == 'Z' || st.State == 'X' {
		if st.Threads > 1 {
			// Alive: the leader thread exited (pthread_exit in main) and
			// the kernel keeps it as a zombie until the last one goes.
			return fmt.Errorf("pid %d: its main thread exited while %d other threads run: a process with an exited leader thread is not supported", pid, st.Threads-1)
		}
		return fmt.Errorf("pid %d is a zombie", pid)
	}
	if st.Kthread {
		return fmt.Errorf("pid %d is a kernel thread", pid)
	}
	if stat, err := procfs.ReadStat(pid); err == nil && stat.Flags&pfKthread != 0 {
		return fmt.Errorf("pid %d is a kernel thread", pid)
	}
	if st.TracerPid != 0 {
		return fmt.Errorf("pid %d is already traced by pid %d", pid, st.TracerPid)
	}
	return nil
}

// seizeOptions are the ptrace options to freeze pid with: a task with a
// thread under seccomp is traced with PTRACE_O_SUSPEND_SECCOMP, so its
// filters (or strict mode) let the injected calls through. Only then:
// the option needs CAP_SYS_ADMIN and a godwit not itself under seccomp.
func seizeOptions(pid int) int {
	tids, err := procfs.Tasks(pid)
	if err != nil {
		return 0 // the freeze reports it
	}
	for _, tid := range tids {
		if st, err := procfs.ReadStatus(tid); err == nil && st.Seccomp != 0 {
			return unix.PTRACE_O_SUSPEND_SECCOMP
		}
	}
	return 0
}

// checkSeccomp refuses, once the task is frozen, a thread under seccomp
// that was not seized with PTRACE_O_SUSPEND_SECCOMP (it entered seccomp
// during the freeze, or the freeze went through a cgroup): its filters
// would see, and could kill it for, the injected calls.
func checkSeccomp(tr *ptrace.Tracer, pid int, tids []int) error {
	for _, tid := range tids {
		st, err := procfs.ReadStatus(tid)
		if err != nil {
			return err
		}
		if st.Seccomp != 0 && !tr.SeccompSuspended(tid) {
			return fmt.Errorf("pid %d: thread %d entered seccomp mode %d during the freeze (or was frozen through a cgroup): dump it again", pid, tid, st.Seccomp)
		}
	}
	return nil
}

// isAncestor reports whether pid is one of our ancestors.
func isAncestor(pid int) bool {
	cur := os.Getpid()
	for i := 0; i < 4096 && cur > 1; i++ {
		st, err := procfs.ReadStatus(cur)
		if err != nil {
			return false
		}
		if st.PPid == pid {
			return true
		}
		cur = st.PPid
	}
	return false
}

// Children lists the children of every thread of pid, from
// /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN).
func Children(pid int) ([]int, error) {
	tids, err := procfs.Tasks(pid)
	if err != nil {
		return nil, err
	}
	var out []int
	for _, tid := range tids {
		b, err := os.ReadFile(procfs.TaskPath(pid, tid, "children"))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // the thread exited
			}
			return nil, fmt.Errorf("children of %d: %w", tid, err)
		}
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				out = append(out, c)
			}
		}
	}
	sort.Ints(out)
	return out, nil
}
