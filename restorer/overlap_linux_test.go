package restorer

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/dumper"
	"godwit/internal/testutil"
)

// gone reports whether pid no longer exists (reaped).
func gone(pid int) bool {
	_, err := os.Stat("/proc/" + strconv.Itoa(pid))
	return err != nil
}

// preRound runs pre-dump round n of pid into root/rN (chained to the last).
func preRound(t *testing.T, pid int, root string, n int) string {
	t.Helper()
	dir := filepath.Join(root, "r"+strconv.Itoa(n))
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	o := dumper.PreDumpOptions{Pid: pid, ImagesDir: dir, HolderTimeout: time.Minute}
	if n > 1 {
		o.PrevImagesDir = "../r" + strconv.Itoa(n-1)
	}
	if _, err := dumper.PreDump(context.Background(), o); err != nil {
		t.Fatalf("pre-dump round %d: %v", n, err)
	}
	return dir
}

func layoutOf(t *testing.T, pid int) Layout {
	t.Helper()
	vmas, err := dumper.CollectVMAs(pid, nil)
	if err != nil {
		t.Fatal(err)
	}
	l := Layout{Pid: pid, VMAs: vmas}
	for _, tid := range threadsOf(t, pid) {
		if tid != pid {
			l.Tids = append(l.Tids, tid)
		}
	}
	return l
}

// TestPendingRestore prepares a task from two pre-dump rounds of a running
// program (two threads), then finishes it from the final dump: the program
// checks every page of its memory and its threads' invariant after the
// restore, and the rounds' pages were written before Finish.
func TestPendingRestore(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	w := startWorkload(t, log, "tick 3", testutil.CounterBin(t, false), "-t", "2", "-m", "8", log)
	t.Cleanup(func() { dumper.EndTracking(w.Pid) })
	r1 := preRound(t, w.Pid, dir, 1)
	l1 := layoutOf(t, w.Pid)
	if _, err := Prepare(Options{}, l1); err == nil {
		t.Fatal("prepared a task with the PID of a live one")
	}
	waitTicks(t, log, ticks(t, log))
	r2 := preRound(t, w.Pid, dir, 2)
	l2 := layoutOf(t, w.Pid)
	// On one host the source holds the PID until its final dump kills
	// it: the rounds are written into a task prepared after it, in
	// order, as the agent of another host writes them as they come.
	final := filepath.Join(dir, "final")
	dump(t, w.Pid, final, func(o *dumper.Options) { o.PrevImagesDir, o.TrackMem = "../r2", true })
	w.Reaped(t)
	p, err := Prepare(Options{}, l1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Abort)
	if err := p.WritePages(context.Background(), r1); err != nil {
		t.Fatal(err)
	}
	if err := p.ApplyLayout(l2); err != nil {
		t.Fatal(err)
	}
	if err := p.WritePages(context.Background(), r2); err != nil {
		t.Fatal(err)
	}
	st := p.Stats()
	if st.Rounds != 2 || st.Pages < 8<<8 {
		t.Fatalf("after two rounds: %+v, want at least the 8 MiB of the first written", st)
	}
	r, err := p.Finish(context.Background(), Options{ImagesDir: final}, nil)
	if err != nil {
		t.Fatalf("finish: %v", err)
	}
	t.Cleanup(func() {
		if !r.waited {
			_ = unix.Kill(r.PID(), unix.SIGKILL)
			r.Wait()
		}
	})
	st = p.Stats()
	if st.FinalPages >= st.Pages {
		t.Errorf("finish wrote %d pages, the rounds %d: want only the final delta", st.FinalPages, st.Pages)
	}
	t.Logf("rounds wrote %d pages, finish %d", st.Pages, st.FinalPages)
	n := ticks(t, log)
	waitTicks(t, log, n)
	finish(t, r, log)
}

// TestPendingAbort: an aborted prepared task is gone, by PID, and a
// Finish whose images are another tree's kills it too, leaving the
// caller free to restore from the images alone (ErrNotPrepared).
func TestPendingAbort(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	w := startWorkload(t, log, "tick 2", testutil.CounterBin(t, false), "-m", "2", log)
	l := layoutOf(t, w.Pid)
	imgs := filepath.Join(dir, "img")
	dump(t, w.Pid, imgs, nil)
	w.Reaped(t)

	p, err := Prepare(Options{}, l)
	if err != nil {
		t.Fatal(err)
	}
	if gone(w.Pid) {
		t.Fatalf("prepared task %d does not exist", w.Pid)
	}
	p.Abort()
	if !gone(w.Pid) {
		t.Fatalf("aborted task %d still exists", w.Pid)
	}
	p.Abort() // twice: nothing
	if err := p.WritePages(context.Background(), imgs); err == nil {
		t.Fatal("wrote pages after Abort")
	}

	// A layout whose vDSO is elsewhere than the images' one.
	moved := slices.Clone(l.VMAs)
	for i := range moved {
		if p := moved[i].Path; p == "[vdso]" || p == "[vvar]" || p == "[vvar_vclock]" {
			moved[i].Start += 1 << 20
			moved[i].End += 1 << 20
		}
	}
	slices.SortFunc(moved, func(a, b dumper.VMA) int { return cmpU64(a.Start, b.Start) })
	if err := CheckLayout(moved); err != nil {
		t.Fatal(err)
	}
	p, err = Prepare(Options{}, l)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Abort)
	if err := p.ApplyLayout(Layout{Pid: w.Pid, VMAs: moved}); err == nil {
		t.Fatal("followed a moved vDSO")
	}
	if !gone(w.Pid) {
		st, _ := os.ReadFile("/proc/" + strconv.Itoa(w.Pid) + "/status")
		t.Fatalf("task %d still exists after a failed layout:\n%s", w.Pid, st)
	}

	p, err = Prepare(Options{}, Layout{Pid: w.Pid, VMAs: moved})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Abort)
	if _, err := p.Finish(context.Background(), Options{ImagesDir: imgs}, nil); !errors.Is(err, ErrNotPrepared) {
		t.Fatalf("finish onto a task with another vDSO: %v, want ErrNotPrepared", err)
	}
	if !gone(w.Pid) {
		t.Fatalf("task %d still exists after a refused finish", w.Pid)
	}
	// The images alone restore it.
	r := restore(t, imgs, nil)
	finish(t, r, log)
}

func TestRanges(t *testing.T) {
	var rs [][2]uint64
	rs = addRange(rs, 10, 20)
	rs = addRange(rs, 30, 40)
	rs = addRange(rs, 20, 30)
	if !slices.Equal(rs, [][2]uint64{{10, 40}}) {
		t.Fatalf("add: %v", rs)
	}
	rs = subRange(rs, 15, 25)
	if !slices.Equal(rs, [][2]uint64{{10, 15}, {25, 40}}) {
		t.Fatalf("sub: %v", rs)
	}
	got := interRanges(rs, [][2]uint64{{0, 12}, {14, 30}, {35, 50}})
	if !slices.Equal(got, [][2]uint64{{10, 12}, {14, 15}, {25, 30}, {35, 40}}) {
		t.Fatalf("inter: %v", got)
	}
}
