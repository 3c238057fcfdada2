package e2e

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// mappedFile stats pid's mapping at addr (one page) through map_files and
// returns its inode and the name /proc gives it.
func mappedFile(t *testing.T, pid int, addr uint64) (unix.Stat_t, string) {
	t.Helper()
	p := fmt.Sprintf("/proc/%d/map_files/%x-%x", pid, addr, addr+uint64(os.Getpagesize()))
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatalf("stat %s: %v", p, err)
	}
	name, err := os.Readlink(p)
	if err != nil {
		t.Fatal(err)
	}
	return st, name
}

// TestMapDeletedShared dumps workloads/mapghost.c, a parent and child
// sharing a MAP_SHARED mapping of a deleted file and an fd on it, and
// restores it: both map one deleted file again, the one their fds are
// open on, with the dumped contents, and each sees the other's writes.
func TestMapDeletedShared(t *testing.T) {
	needRoot(t)
	w := startTree(t, cWorkload(t, "mapghost"))
	m := regexp.MustCompile(`ready C=(\d+) ADDR=([0-9a-f]+) FD=(\d+)`).FindStringSubmatch(readFile(w.log))
	if m == nil {
		t.Fatalf("no ready line\n%s", w.tail())
	}
	child, _ := strconv.Atoi(m[1])
	addr, _ := strconv.ParseUint(m[2], 16, 64)
	fd := m[3]
	before := subtree(t, w.pid)
	t.Cleanup(func() {
		for p := range before {
			killAndForget(p)
		}
	})
	dir := w.dump(t)
	w.reapKilled(t)
	for p := range before {
		waitFor(t, fmt.Sprintf("pid %d to go", p), func() bool { return !pidExists(p) })
	}
	r := restore(t, w, dir)
	pst, pname := mappedFile(t, w.pid, addr)
	cst, cname := mappedFile(t, child, addr)
	if pst.Dev != cst.Dev || pst.Ino != cst.Ino {
		t.Errorf("parent maps %d:%d, child %d:%d: want one file", pst.Dev, pst.Ino, cst.Dev, cst.Ino)
	}
	for _, p := range []int{w.pid, child} {
		var st unix.Stat_t
		if err := unix.Stat(fmt.Sprintf("/proc/%d/fd/%s", p, fd), &st); err != nil {
			t.Fatal(err)
		}
		if st.Dev != pst.Dev || st.Ino != pst.Ino {
			t.Errorf("pid %d fd %s is %d:%d, the mapping %d:%d: want one file", p, fd, st.Dev, st.Ino, pst.Dev, pst.Ino)
		}
	}
	if pst.Nlink != 0 || !strings.HasSuffix(pname, " (deleted)") || !strings.HasSuffix(cname, " (deleted)") {
		t.Errorf("restored mapping is of %q (%d links), want a deleted file", pname, pst.Nlink)
	}
	if code := r.finish(t, w); code != 0 || !strings.Contains(readFile(w.log), "shared ok") {
		t.Fatalf("restored root exited %d\n%s", code, w.tail())
	}
}

// TestPythonPool dumps a Python multiprocessing.Pool of 4 workers in the
// middle of its computation (its semaphores are mapped deleted files in
// /dev/shm, shared by the five processes) and restores it: it finishes
// with the right result, every result counted once.
func TestPythonPool(t *testing.T) {
	needRoot(t)
	const n = 400
	w := startTree(t, "/usr/bin/python3", "workloads/pool.py")
	before := subtree(t, w.pid)
	t.Cleanup(func() {
		for p := range before {
			killAndForget(p)
		}
	})
	if len(before) < 5 {
		t.Fatalf("the pool has %d processes, want 5 or more: %v", len(before), before)
	}
	dir := w.dump(t)
	w.reapKilled(t)
	for p := range before {
		waitFor(t, fmt.Sprintf("pid %d to go", p), func() bool { return !pidExists(p) })
	}
	r := restore(t, w, dir)
	select {
	case err := <-r.done:
		r.done <- err
		if err != nil {
			t.Fatalf("restored pool: %v\n%s\n%s", err, r.out.String(), w.tail())
		}
	case <-time.After(120 * time.Second):
		t.Fatalf("restored pool did not finish\n%s", w.tail())
	}
	ticks := w.ticks()
	if len(ticks) != n {
		t.Fatalf("%d results, want %d\n%s", len(ticks), n, w.tail())
	}
	for i, k := range ticks {
		if k != i+1 {
			t.Fatalf("result %d at line %d: lost or repeated across the restore", k, i+1)
		}
	}
	want := (n - 1) * n * (2*n - 1) / 6
	if !strings.Contains(readFile(w.log), fmt.Sprintf("result %d\n", want)) {
		t.Fatalf("wrong result, want %d\n%s", want, w.tail())
	}
}
