package restorer

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"godwit/dumper"
	"godwit/internal/actions"
	"godwit/internal/testutil"
)

// TestPendingPreRestoreOnce: a Finish that fails with ErrNotPrepared
// (here: interrupted while it writes the pages) has not run the
// pre-restore scripts, which the caller's restore from the images then
// runs: once in all.
func TestPendingPreRestoreOnce(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	w := startWorkload(t, log, "tick 3", testutil.CounterBin(t, false), "-m", "8", log)
	t.Cleanup(func() { dumper.EndTracking(w.Pid) })
	r1 := preRound(t, w.Pid, dir, 1)
	l1 := layoutOf(t, w.Pid)
	final := filepath.Join(dir, "final")
	dump(t, w.Pid, final, func(o *dumper.Options) { o.PrevImagesDir, o.TrackMem = "../r1", true })
	w.Reaped(t)
	p, err := Prepare(Options{}, l1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Abort)
	if err := p.WritePages(context.Background(), r1); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "actions")
	scripts := &actions.Scripts{Commands: []string{`echo "$CRTOOLS_SCRIPT_ACTION" >> ` + out}}
	runs := func() int {
		b, err := os.ReadFile(out)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		return strings.Count(string(b), actions.PreRestore+"\n")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r, err := p.Finish(ctx, Options{ImagesDir: final}, scripts)
	if err == nil {
		_ = unix.Kill(r.PID(), unix.SIGKILL)
		r.Wait()
		t.Fatal("finish with its context done succeeded")
	}
	if !errors.Is(err, ErrNotPrepared) {
		t.Fatalf("finish: %v, want ErrNotPrepared", err)
	}
	if n := runs(); n != 0 {
		t.Fatalf("pre-restore ran %d times before ErrNotPrepared", n)
	}
	r, err = RestoreContext(context.Background(), Options{ImagesDir: final}, scripts)
	if err != nil {
		t.Fatalf("restore after ErrNotPrepared: %v", err)
	}
	t.Cleanup(func() {
		if !r.waited {
			_ = unix.Kill(r.PID(), unix.SIGKILL)
			r.Wait()
		}
	})
	if n := runs(); n != 1 {
		t.Fatalf("pre-restore ran %d times, want once", n)
	}
	waitTicks(t, log, ticks(t, log))
	finish(t, r, log)
}
