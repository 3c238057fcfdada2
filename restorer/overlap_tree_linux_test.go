package restorer

import (
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/dumper"
	"godwit/internal/procfs"
	"godwit/internal/testutil"
)

// treeShareBin builds e2e's treeshare workload (a root and two children,
// private memory and one shared anonymous mapping, each task checking its
// own pages) for this test binary.
func treeShareBin(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "treeshare")
	if out, err := exec.Command("gcc", "-O2", "-Wall", "-o", bin, "../e2e/workloads/treeshare.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v %s", err, out)
	}
	return bin
}

// startTreeShare starts treeshare and returns it and its children's pids.
func startTreeShare(t *testing.T, log string) (*testutil.Proc, []int) {
	t.Helper()
	subreaper(t)
	w := startWorkload(t, log, "ready", treeShareBin(t), log)
	m := regexp.MustCompile(`(?m)^ready (\d+) (\d+) (\d+)$`).FindStringSubmatch(readLog(t, log))
	if m == nil {
		t.Fatalf("no ready line:\n%s", readLog(t, log))
	}
	var kids []int
	for _, s := range m[2:] {
		n, _ := strconv.Atoi(s)
		kids = append(kids, n)
	}
	t.Cleanup(func() {
		dumper.EndTracking(w.Pid)
		for _, k := range kids {
			_ = unix.Kill(k, unix.SIGKILL)
		}
	})
	return w, kids
}

// waitLine waits until the log has line.
func waitLine(t *testing.T, log, line string) {
	t.Helper()
	for i := 0; i < 2000; i++ {
		if strings.Contains("\n"+readLog(t, log), "\n"+line+"\n") {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no %q in the log:\n%s", line, readLog(t, log))
}

func readLog(t *testing.T, log string) string {
	t.Helper()
	b, err := exec.Command("cat", log).Output()
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// treeLayout is the layout of the running tree pids (root first), as
// the migration's source reads it.
func treeLayout(t *testing.T, pids []int) Layout {
	t.Helper()
	var ls []Layout
	for _, pid := range pids {
		l := layoutOf(t, pid)
		st, err := procfs.ReadStat(pid)
		if err != nil {
			t.Fatal(err)
		}
		l.Ppid, l.Sid, l.Pgid = st.Ppid, st.Session, st.Pgrp
		ls = append(ls, l)
	}
	root := ls[0]
	root.Tasks = ls[1:]
	return root
}

// TestPendingTree prepares a tree of three tasks (private memory written
// between the rounds, one shared anonymous mapping) from two pre-dump
// rounds, then finishes it from the final dump: the tasks have their
// parents, session and group, every task checks its own pages, and the
// mapping is still one object in all three (the children answer the
// root through it). The object is prepared and written with the rounds;
// or, when a layout between the rounds maps it otherwise, unmapped from
// every task and made again from the final images.
func TestPendingTree(t *testing.T) {
	t.Run("kept", func(t *testing.T) { testPendingTree(t, false, false) })
	t.Run("remapped", func(t *testing.T) { testPendingTree(t, true, false) })
	// The root removes its part of the object after the last round:
	// those pages, written by the rounds, must read as zeros.
	t.Run("removed", func(t *testing.T) { testPendingTree(t, false, true) })
}

func testPendingTree(t *testing.T, remap, remove bool) {
	needRoot(t)
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	w, kids := startTreeShare(t, log)
	pids := append([]int{w.Pid}, kids...)
	r1 := preRound(t, w.Pid, dir, 1)
	l1 := treeLayout(t, pids)
	if l1.Sid != w.Pid || l1.Tasks[0].Ppid != w.Pid {
		t.Fatalf("layout %+v", l1)
	}
	waitTicks(t, log, ticks(t, log))
	r2 := preRound(t, w.Pid, dir, 2)
	l2 := treeLayout(t, pids)
	if remove {
		if err := unix.Kill(w.Pid, unix.SIGUSR2); err != nil {
			t.Fatal(err)
		}
		waitLine(t, log, "removed")
	}
	waitTicks(t, log, ticks(t, log))
	final := filepath.Join(dir, "final")
	dump(t, w.Pid, final, func(o *dumper.Options) { o.PrevImagesDir, o.TrackMem = "../r2", true })
	w.Reaped(t)
	for _, k := range kids {
		reapGone(t, k)
	}
	// The test runs in whatever session: the layout's, read here, is
	// what the prepared tree must have.
	p, err := Prepare(Options{}, l1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Abort)
	for _, l := range append([]Layout{l1}, l1.Tasks...) {
		st, err := procfs.ReadStat(l.Pid)
		if err != nil {
			t.Fatalf("prepared task %d: %v", l.Pid, err)
		}
		if l.Pid != w.Pid && st.Ppid != l.Ppid || st.Session != l.Sid || st.Pgrp != l.Pgid {
			t.Fatalf("prepared task %d: parent %d session %d group %d, want %d %d %d", l.Pid, st.Ppid, st.Session, st.Pgrp, l.Ppid, l.Sid, l.Pgid)
		}
	}
	if err := p.WritePages(context.Background(), r1); err != nil {
		t.Fatal(err)
	}
	shared := 1
	if remap {
		// As if the last child had unmapped the shared memory for a
		// while: the object goes from every task, for good.
		lx := l2
		lx.Tasks = append([]Layout(nil), l2.Tasks...)
		k := &lx.Tasks[len(lx.Tasks)-1]
		k.VMAs = slices.DeleteFunc(slices.Clone(k.VMAs), func(v dumper.VMA) bool { return v.SharedAnon() })
		if err := p.ApplyLayout(lx); err != nil {
			t.Fatal(err)
		}
		shared = 0
	}
	if err := p.ApplyLayout(l2); err != nil {
		t.Fatal(err)
	}
	if err := p.WritePages(context.Background(), r2); err != nil {
		t.Fatal(err)
	}
	st := p.Stats()
	if st.Tasks != 3 || st.Shared != shared || st.Rounds != 2 || st.Pages < 3*2048+3*64 {
		t.Fatalf("after two rounds: %+v, want three tasks' 8 MiB each and %d shared object written", st, shared)
	}
	for _, l := range append([]Layout{l1}, l1.Tasks...) {
		m, err := procfs.ReadMaps(l.Pid)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range m {
			if strings.HasPrefix(e.Path, "/dev/zero") || strings.HasPrefix(e.Path, "[anon_shmem") {
				n++
			}
		}
		if n != shared {
			t.Fatalf("prepared task %d maps %d shared anonymous areas, want %d", l.Pid, n, shared)
		}
	}
	if !remap && !remove {
		// Signals sent here to the prepared tasks are not the
		// program's: drained, they would kill every task at the resume.
		for _, pid := range pids {
			if err := unix.Kill(pid, unix.SIGTERM); err != nil {
				t.Fatal(err)
			}
		}
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
	if got := r.PIDs(); len(got) != 3 {
		t.Fatalf("restored %v", got)
	}
	mark := len(readLog(t, log))
	waitTicks(t, log, ticks(t, log))
	finish(t, r, log)
	after := readLog(t, log)[mark:]
	for _, want := range []string{"ok 0 ", "ok 1 ", "ok 2 ", "shared ok "} {
		if !strings.Contains(after, want) || strings.Contains(after, "bad ") {
			t.Fatalf("restored tree: want %q and no bad page:\n%s", want, after)
		}
	}
}

// TestPendingTreeChanges: a tree whose tasks changed between rounds is
// not followed (every prepared task killed), and a Finish whose images
// are not the prepared tree kills it too (ErrNotPrepared), leaving the
// images to restore alone.
func TestPendingTreeChanges(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	w, kids := startTreeShare(t, log)
	pids := append([]int{w.Pid}, kids...)
	l := treeLayout(t, pids)
	single := layoutOf(t, w.Pid)
	imgs := filepath.Join(dir, "img")
	dump(t, w.Pid, imgs, nil)
	w.Reaped(t)
	for _, k := range kids {
		reapGone(t, k)
	}
	allGone := func(what string) {
		t.Helper()
		for _, pid := range pids {
			if !gone(pid) {
				t.Fatalf("%s: prepared task %d still exists", what, pid)
			}
		}
	}
	// A child ended.
	p, err := Prepare(Options{}, l)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Abort)
	less := l
	less.Tasks = l.Tasks[:1]
	if err := p.ApplyLayout(less); err == nil {
		t.Fatal("followed a tree that lost a task")
	}
	allGone("a task ended")
	// A child's session changed.
	p, err = Prepare(Options{}, l)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Abort)
	moved := l
	moved.Tasks = append([]Layout(nil), l.Tasks...)
	moved.Tasks[1].Pgid = moved.Tasks[1].Pid
	if err := p.ApplyLayout(moved); err == nil {
		t.Fatal("followed a task that changed its group")
	}
	allGone("a group changed")
	// One task prepared, a tree in the images.
	p, err = Prepare(Options{}, single)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Abort)
	if _, err := p.Finish(context.Background(), Options{ImagesDir: imgs}, nil); !errors.Is(err, ErrNotPrepared) {
		t.Fatalf("finish of a tree onto one task: %v, want ErrNotPrepared", err)
	}
	allGone("a refused finish")
	// Abort of a whole tree.
	p, err = Prepare(Options{}, l)
	if err != nil {
		t.Fatal(err)
	}
	p.Abort()
	allGone("abort")
	// A layout whose child's parent is not in the tree is refused
	// before anything is made.
	bad := l
	bad.Tasks = append([]Layout(nil), l.Tasks...)
	bad.Tasks[0].Ppid = 1
	if _, err := Prepare(Options{}, bad); err == nil {
		t.Fatal("prepared a task whose parent is not in the tree")
	}
	allGone("a refused layout")
	// The images alone restore the tree.
	r := restore(t, imgs, nil)
	finish(t, r, log)
}
