package restorer

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/stats"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"godwit/internal/actions"
	"godwit/internal/drivers"
	"godwit/internal/images"
	"godwit/internal/model"
	"godwit/internal/procfs"
)

// Resume runs the pre-resume scripts, then detaches every thread of every
// task, children first (or,
// with --leave-stopped or a task dumped stopped, queues SIGSTOP first so
// that it stops before running any code), runs the post-restore scripts
// and writes stats-restore.
func (r *Restorer) Resume() error {
	if err := r.need(phaseFinalized, "resume"); err != nil {
		return err
	}
	pid := r.img.pid
	// Checks that can fail come before the pre-resume scripts: a
	// migration agent answers Ready there, after which the copy must
	// resume when told.
	for _, t := range r.tasks {
		if !t.img.dead() && t.img.task.State == model.Stopped {
			if err := canStopWith(t.img.pid, unix.Signal(t.img.task.StopSignal)); err != nil {
				return r.fail("resume", err)
			}
		}
	}
	if err := r.scripts.Run(actions.PreResume, pid); err != nil {
		return r.fail("pre-resume", err)
	}
	// Every connection is back: their packets may flow (CRIU unlocks
	// here too, before the tasks run).
	if err := r.unlockNetwork(); err != nil {
		return r.fail("network unlock", err)
	}
	var errs []error
	thawed := 0
	_ = r.tr.Do(func() error { // on the tracer thread, as Layout
		thawed = r.thawAll(&errs)
		return nil
	})
	if os.Getenv(testRestorerHook) == "fail-thaw" {
		errs = append(errs, errors.New("test: injected thaw failure"))
	}
	if err := errors.Join(errs...); err != nil {
		if thawed > 0 {
			return fmt.Errorf("%w: %w", r.fail("detach", err), ErrPartlyResumed)
		}
		return r.fail("detach", err)
	}
	// The restore succeeded: the --link-remap names, kept until now so
	// that a failed restore could be run again, may go.
	if err := drivers.RemoveLinkRemaps(r.img.tree, pid); err != nil {
		r.log.Warnf("restore %d: %v (left behind)", pid, err)
	}
	return r.resumed()
}

// ErrPartlyResumed marks a Resume that failed after some task was let
// run: the copy is killed, but it may have acted (written, sent), so the
// caller must not treat it as never resumed.
var ErrPartlyResumed = errors.New("some tasks ran before the failure")

// testRestorerHook is a fault-injection hook (e2e): "fail-thaw" fails
// Resume after every task was let run.
const testRestorerHook = "GODWIT_TEST_RESTORER"

// thawAll detaches every task, children first, and returns how many it
// let go.
func (r *Restorer) thawAll(errs *[]error) int {
	n := 0
	for i := len(r.tasks) - 1; i >= 0; i-- {
		t := r.tasks[i]
		if t.img.dead() {
			continue
		}
		var stop unix.Signal
		switch {
		case t.img.task.State == model.Stopped:
			// The signal that stopped it, so that its parent's
			// waitpid(WUNTRACED) reports the same WSTOPSIG.
			stop = unix.Signal(t.img.task.StopSignal)
		case r.o.LeaveStopped:
			stop = unix.SIGSTOP
		}
		if err := t.tr.ThawStopped(t.img.pid, stop); err != nil {
			*errs = append(*errs, fmt.Errorf("task %d: %w", t.img.pid, err))
		} else {
			n++
		}
		r.phase = phaseResumed // (partly) detached: kill by signal from now on
	}
	return n
}

// resumed runs the post-restore scripts and writes the stats.
func (r *Restorer) resumed() error {
	pid := r.img.pid
	restoreTime := time.Since(r.start)
	if err := r.scripts.Run(actions.PostRestore, pid); err != nil {
		// The task runs already; CRIU kills it in this case too.
		return fmt.Errorf("%w: %w", r.fail("post-restore", err), ErrPartlyResumed)
	}
	pages, _ := r.Stats()
	st := &stats.RestoreStatsEntry{
		PagesCompared:   proto.Uint64(0),
		PagesSkippedCow: proto.Uint64(0),
		ForkingTime:     proto.Uint32(uint32(r.forkTime.Microseconds())),
		RestoreTime:     proto.Uint32(uint32(restoreTime.Microseconds())),
		PagesRestored:   proto.Uint64(pages),
	}
	if err := images.WriteRestoreStats(r.dir, r.o.WorkDir, st); err != nil {
		r.log.Warnf("restore %d: write %s: %v", pid, images.StatsRestore, err)
	}
	if r.o.Stats != nil {
		fmt.Fprint(r.o.Stats, images.FormatStats(&stats.StatsEntry{Restore: st}))
	}
	r.log.Infof("restore %d: %d tasks, %d pages in %v", pid, len(r.tasks), pages, restoreTime)
	if r.img != nil {
		r.img.close()
	}
	return nil
}

// InjectedCalls counts the syscalls injected so far (0 before Layout).
func (r *Restorer) InjectedCalls() int {
	n := 0
	for _, tr := range r.tracers() {
		n += tr.InjectedCalls()
	}
	return n
}

// InjectionStops counts the ptrace stops injection took so far (each a
// round trip through the scheduler).
func (r *Restorer) InjectionStops() int {
	_, n, _ := r.injectionStats()
	return n
}

// injectionStats sums the tracers' InjectionStats.
func (r *Restorer) injectionStats() (sessions, stops int, byNr map[uintptr]int) {
	byNr = map[uintptr]int{}
	for _, tr := range r.tracers() {
		s, n, by := tr.InjectionStats()
		sessions += s
		stops += n
		for k, v := range by {
			byNr[k] += v
		}
	}
	return sessions, stops, byNr
}

// Stats returns the page count and elapsed time so far.
func (r *Restorer) Stats() (pagesRestored uint64, elapsed time.Duration) {
	for _, t := range r.tasks {
		pagesRestored += t.pagesRestored
	}
	return pagesRestored, time.Since(r.start)
}

// Wait waits for the restored root task to exit and returns its exit status
// (128+signal if a signal killed it, as a shell reports it), then
// releases the restorer.
func (r *Restorer) Wait() (int, error) {
	if err := r.need(phaseResumed, "wait"); err != nil {
		return 0, err
	}
	defer r.Close()
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(r.img.pid, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("wait for %d: %w", r.img.pid, err)
		}
		break
	}
	r.waited = true
	switch {
	case ws.Exited():
		return ws.ExitStatus(), nil
	case ws.Signaled():
		return 128 + int(ws.Signal()), nil
	}
	return 0, fmt.Errorf("wait for %d: status %#x", r.img.pid, uint32(ws))
}

// Close releases the restorer without waiting for the task (restore -d).
// Before Resume it kills the partial task.
func (r *Restorer) Close() {
	if r.phase != phaseResumed && r.phase != phaseFailed {
		r.Abort()
		return
	}
	r.close()
}

// canStopWith refuses a job-control stop signal the kernel would discard
// for the restored task pid instead of stopping it (it would run where it
// was stopped): get_signal drops SIGTSTP/SIGTTIN/SIGTTOU in an orphaned
// process group. Handlers and masks are the task's restored state, as they
// were when it stopped.
func canStopWith(pid int, sig unix.Signal) error {
	if sig == unix.SIGSTOP {
		return nil
	}
	st, err := procfs.ReadStat(pid)
	if err != nil {
		return fmt.Errorf("task %d: %w", pid, err)
	}
	orphan, err := pgrpOrphaned(st.Pgrp, st.Session)
	if err != nil {
		return fmt.Errorf("task %d: %w", pid, err)
	}
	if orphan {
		return fmt.Errorf("task %d was stopped by %v but its process group %d is orphaned here: the kernel would discard the signal and let it run", pid, sig, st.Pgrp)
	}
	return nil
}

// pgrpOrphaned reports whether no member of process group pgrp has a parent
// in another group of the same session sid (POSIX orphaned process group,
// as the kernel's will_become_orphaned_pgrp counts it: zombies and the
// children of the global init do not count). A member whose parent is not
// visible here (another pid namespace) is refused: we cannot tell.
func pgrpOrphaned(pgrp, sid int) (bool, error) {
	ents, err := os.ReadDir(procfs.Root)
	if err != nil {
		return false, err
	}
	initNS, err := procInitialPidNS()
	if err != nil {
		return false, err
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := procfs.ReadStat(pid)
		if err != nil || st.Pgrp != pgrp {
			continue // gone, or another group
		}
		var pp *procfs.Stat
		if st.Ppid > 0 {
			if pp, err = procfs.ReadStat(st.Ppid); err != nil {
				continue // the parent is gone: the member is reparented
			}
		}
		orphaning, err := orphaningMember(pid, st, pp, pgrp, sid, initNS)
		if err != nil {
			return false, err
		}
		if !orphaning {
			return false, nil
		}
	}
	return true, nil
}

// orphaningMember reports whether member pid (stat st, parent's stat pp,
// nil when its parent is not visible) lets group pgrp of session sid be
// orphaned, as will_become_orphaned_pgrp (kernel/exit.c) judges it; initNS
// tells whether the pids of procfs are those of the initial pid namespace,
// where pid 1 is the global init.
func orphaningMember(pid int, st, pp *procfs.Stat, pgrp, sid int, initNS bool) (bool, error) {
	switch {
	case st.State == 'Z':
		return true, nil // exited
	case st.Ppid == 1 && initNS:
		return true, nil // a child of the global init
	case st.Ppid == 0 && pid == 1 && initNS:
		return true, nil // the global init itself: its parent is no task
	case pp == nil:
		return false, fmt.Errorf("process group %d: the parent of member %d is not visible here (another pid namespace): cannot tell whether the group is orphaned", pgrp, pid)
	}
	return pp.Pgrp == pgrp || pp.Session != sid, nil
}

// procInitialPidNS reports whether procfs shows the initial pid namespace.
// godwit's own task (procfs's self), when in the namespace of procfs (one
// NSpid entry),
// tells by its namespace's inode (PROC_PID_INIT_INO); else procfs's pid 1
// (its namespace's init) does. pid 1 may deny the look (another user
// namespace's init): then refuse rather than guess.
func procInitialPidNS() (bool, error) {
	b, err := os.ReadFile(procfs.Root + "/self/status")
	if errors.Is(err, os.ErrNotExist) {
		return false, nil // godwit is not in procfs's namespace, which the initial one holds all
	}
	if err != nil {
		return false, fmt.Errorf("pid namespace of %s: %w", procfs.Root, err)
	}
	me, err := procfs.ParseStatus(b)
	if err != nil {
		return false, fmt.Errorf("pid namespace of %s: %w", procfs.Root, err)
	}
	ns := procfs.Root + "/1/ns/pid"
	if len(me.NSpid) == 1 {
		ns = procfs.Root + "/self/ns/pid"
	}
	var st unix.Stat_t
	if err := unix.Stat(ns, &st); err != nil {
		return false, fmt.Errorf("pid namespace of %s: %w", procfs.Root, err)
	}
	return st.Ino == procPidInitIno, nil
}

// procPidInitIno is PROC_PID_INIT_INO (include/linux/proc_ns.h), the
// initial pid namespace's inode number.
const procPidInitIno = 0xEFFFFFFC
