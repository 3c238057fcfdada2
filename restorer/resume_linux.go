package restorer

import (
	"errors"
	"fmt"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/stats"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"godwit/internal/actions"
	"godwit/internal/images"
	"godwit/internal/model"
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
	if err := r.scripts.Run(actions.PreResume, pid); err != nil {
		return r.fail("pre-resume", err)
	}
	var errs []error
	for i := len(r.tasks) - 1; i >= 0; i-- {
		t := r.tasks[i]
		if t.img.dead() {
			continue
		}
		stopped := r.o.LeaveStopped || t.img.task.State == model.Stopped
		if err := r.tr.ThawProcess(t.img.pid, stopped); err != nil {
			errs = append(errs, fmt.Errorf("task %d: %w", t.img.pid, err))
		}
		r.phase = phaseResumed // (partly) detached: kill by signal from now on
	}
	if err := errors.Join(errs...); err != nil {
		return r.fail("detach", err)
	}
	restoreTime := time.Since(r.start)
	if err := r.scripts.Run(actions.PostRestore, pid); err != nil {
		// The task runs already; CRIU kills it in this case too.
		return r.fail("post-restore", err)
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
	if r.tr == nil {
		return 0
	}
	return r.tr.InjectedCalls()
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
