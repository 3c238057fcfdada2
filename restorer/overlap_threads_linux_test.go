package restorer

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"godwit/dumper"
)

// TestPendingThreads prepares a task from a round's layout with two
// threads; by the next round and the final dump it has four: the layout is
// followed as is, and Finish makes the two new threads (their TIDs), which
// run on after the restore with their own state. A prepared thread the
// final images lack (it ended) is ended by Finish.
func TestPendingThreads(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "threadgrow")
	if out, err := exec.Command("gcc", "-O2", "-Wall", "-pthread", "-o", bin, "testdata/threadgrow.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v %s", err, out)
	}
	log := filepath.Join(dir, "log")
	w := startWorkload(t, log, "ready", bin, log)
	t.Cleanup(func() { dumper.EndTracking(w.Pid) })
	grow := func(n int) {
		t.Helper()
		if err := unix.Kill(w.Pid, unix.SIGUSR2); err != nil {
			t.Fatal(err)
		}
		waitLine(t, log, "thread "+strconv.Itoa(n))
	}
	grow(1)
	r1 := preRound(t, w.Pid, dir, 1)
	l1 := layoutOf(t, w.Pid)
	grow(2)
	grow(3)
	r2 := preRound(t, w.Pid, dir, 2)
	l2 := layoutOf(t, w.Pid)
	if len(l1.Tids) != 1 || len(l2.Tids) != 3 {
		t.Fatalf("threads %v then %v, want 1 then 3", l1.Tids, l2.Tids)
	}
	final := filepath.Join(dir, "final")
	dump(t, w.Pid, final, func(o *dumper.Options) { o.PrevImagesDir, o.TrackMem = "../r2", true })
	w.Reaped(t)

	// A thread prepared that the images do not have (it ended): Finish
	// ends it.
	extra := l2
	for tid := 30000; tid > 2000; tid-- {
		if _, err := os.Stat("/proc/" + strconv.Itoa(tid)); err != nil {
			extra.Tids = append(append([]int(nil), l2.Tids...), tid)
			break
		}
	}
	p, err := Prepare(Options{}, extra)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Abort)
	for _, dir := range []string{r1, r2} {
		if err := p.WritePages(context.Background(), dir); err != nil {
			t.Fatal(err)
		}
	}
	if got := threadsOf(t, w.Pid); len(got) != 5 {
		t.Fatalf("prepared threads %v, want 5", got)
	}
	r, err := p.Finish(context.Background(), Options{ImagesDir: final}, nil)
	if err != nil {
		t.Fatalf("finish with a thread that ended: %v", err)
	}
	if got := threadsOf(t, w.Pid); !sameTids(got, append([]int{w.Pid}, l2.Tids...)) {
		_ = unix.Kill(r.PID(), unix.SIGKILL)
		r.Wait()
		t.Fatalf("restored threads %v, want %d and %v", got, w.Pid, l2.Tids)
	}
	if last := finish(t, r, log); !strings.HasPrefix(last, "done threads=3 ") {
		t.Fatalf("last line %q", last)
	}

	// Threads that appeared since the first round.
	p, err = Prepare(Options{}, l1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Abort)
	if err := p.WritePages(context.Background(), r1); err != nil {
		t.Fatal(err)
	}
	if err := p.ApplyLayout(l2); err != nil {
		t.Fatalf("threads appeared: %v", err)
	}
	if err := p.WritePages(context.Background(), r2); err != nil {
		t.Fatal(err)
	}
	r, err = p.Finish(context.Background(), Options{ImagesDir: final}, nil)
	if err != nil {
		t.Fatalf("finish: %v", err)
	}
	t.Cleanup(func() {
		if !r.waited {
			_ = unix.Kill(r.PID(), unix.SIGKILL)
			r.Wait()
		}
	})
	if got := threadsOf(t, w.Pid); len(got) != 4 || !sameTids(got, append([]int{w.Pid}, l2.Tids...)) {
		t.Fatalf("restored threads %v, want %d and %v", got, w.Pid, l2.Tids)
	}
	if last := finish(t, r, log); !strings.HasPrefix(last, "done threads=3 ") {
		t.Fatalf("last line %q", last)
	}
}
