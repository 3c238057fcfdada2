package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/abi/linux"
)

var (
	cOnce sync.Map // name → *cBuild
)

type cBuild struct {
	once sync.Once
	path string
	err  error
}

// cWorkload builds workloads/NAME.c once (into the directory of the other
// workloads) and returns its path.
func cWorkload(t *testing.T, name string) string {
	t.Helper()
	v, _ := cOnce.LoadOrStore(name, &cBuild{})
	c := v.(*cBuild)
	c.once.Do(func() {
		c.path = filepath.Join(filepath.Dir(godwitBin), name)
		out, err := exec.Command("gcc", "-O2", "-Wall", "-o", c.path, "workloads/"+name+".c").CombinedOutput()
		if err != nil {
			c.err = fmt.Errorf("gcc %s.c: %v\n%s", name, err, out)
		}
	})
	if c.err != nil {
		t.Fatal(c.err)
	}
	return c.path
}

// startTree starts argv as a session leader under workloads/reaper.c, a
// subreaper that reaps the orphans of its tree (PID 1 of a pid namespace
// may not: a test runner), so that the tree's PIDs are free again after a
// dump kills it. The workload's pid is argv's; waiting for it waits for
// the reaper, which ends as argv did.
func startTree(t *testing.T, argv ...string) *workload {
	t.Helper()
	w := startWorkload(t, append([]string{cWorkload(t, "reaper")}, argv...)...)
	m := regexp.MustCompile(`pid (\d+)`).FindStringSubmatch(readFile(w.output))
	if m == nil {
		t.Fatalf("reaper: no pid\n%s", w.tail())
	}
	w.pid, _ = strconv.Atoi(m[1])
	return w
}

// taskInfo is what a test compares of a task before and after.
type taskInfo struct {
	Ppid, Pgid, Sid int
	State           byte
}

func statOf(pid int) (taskInfo, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return taskInfo{}, false
	}
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+2:]))
	atoi := func(s string) int { n, _ := strconv.Atoi(s); return n }
	st := f[0][0]
	if st == 'R' || st == 'D' {
		st = 'S' // running or sleeping is scheduling, not restored state
	}
	return taskInfo{State: st, Ppid: atoi(f[1]), Pgid: atoi(f[2]), Sid: atoi(f[3])}, true
}

// subtree lists pid and its descendants with their ids and states.
func subtree(t *testing.T, pid int) map[int]taskInfo {
	t.Helper()
	out := map[int]taskInfo{}
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		ti, ok := statOf(p)
		if !ok {
			t.Fatalf("task %d vanished", p)
		}
		out[p] = ti
		ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", p))
		for _, e := range ents {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", p, e.Name()))
			for _, c := range strings.Fields(string(b)) {
				n, _ := strconv.Atoi(c)
				queue = append(queue, n)
			}
		}
	}
	return out
}

func kcmp(pid1, pid2, typ, a, b int) (uintptr, error) {
	r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(pid1), uintptr(pid2), uintptr(typ), uintptr(a), uintptr(b), 0)
	if e != 0 {
		return 0, e
	}
	return r, nil
}

// fdOf finds pid's fd open on path.
func fdOf(t *testing.T, pid int, path string) int {
	t.Helper()
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, e := range ents {
		if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name())); l == path {
			n, _ := strconv.Atoi(e.Name())
			return n
		}
	}
	t.Fatalf("pid %d has no fd on %s", pid, path)
	return -1
}

func fdPos(t *testing.T, pid, fd int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, fd))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`pos:\s+(\d+)`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("fdinfo of %d/%d: %s", pid, fd, b)
	}
	n, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return n
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestTreeRestore dumps workloads/tree.c (a tree three levels deep with
// two sessions and three groups, two zombies, a stopped task, a task
// sharing an open file with the root by fork, and one sharing its fd
// table), restores it, and checks the restored tree against the original
// and what each part of it does afterwards.
func TestTreeRestore(t *testing.T) {
	needRoot(t)
	w := startTree(t, cWorkload(t, "tree"))
	ready := regexp.MustCompile(`ready A=(\d+) B=(\d+) Z=(\d+) K=(\d+) S=(\d+) W=(\d+) C=(\d+)`).FindStringSubmatch(readFile(w.log))
	if ready == nil {
		t.Fatalf("no ready line\n%s", w.tail())
	}
	id := map[string]int{}
	for i, n := range []string{"A", "B", "Z", "K", "S", "W", "C"} {
		id[n], _ = strconv.Atoi(ready[i+1])
	}
	before := subtree(t, w.pid)
	t.Cleanup(func() {
		for p := range before {
			killAndForget(p)
		}
	})
	if len(before) != 12 {
		t.Fatalf("the workload has %d tasks, want 12: %v", len(before), before)
	}
	dir := w.dump(t)
	w.reapKilled(t)
	for p := range before {
		waitFor(t, fmt.Sprintf("pid %d to go", p), func() bool { return !pidExists(p) })
	}
	r := restore(t, w, dir)
	after := subtree(t, w.pid)
	var pids []int
	for p := range before {
		pids = append(pids, p)
	}
	sort.Ints(pids)
	for _, p := range pids {
		want, got := before[p], after[p]
		if p == w.pid {
			want.Ppid = r.cmd.Process.Pid
		}
		if got != want {
			t.Errorf("task %d: restored %+v, want %+v", p, got, want)
		}
	}
	if len(after) != len(before) {
		t.Errorf("restored %d tasks, want %d", len(after), len(before))
	}

	// One open file description in R and W: one offset, moving in both.
	shared := w.log + ".shared"
	rfd, wfd := fdOf(t, w.pid, shared), fdOf(t, id["W"], shared)
	if c, err := kcmp(w.pid, id["W"], linux.KcmpFile, rfd, wfd); err != nil || c != 0 {
		t.Errorf("R fd %d and W fd %d: kcmp %d %v, want one open file description", rfd, wfd, c, err)
	}
	pos0 := fdPos(t, w.pid, rfd)
	waitFor(t, "both to write through the shared fd", func() bool {
		b, _ := os.ReadFile(shared)
		return fdPos(t, w.pid, rfd) > pos0+8 && bytes.Count(b[pos0:], []byte("R\n")) > 0 && bytes.Count(b[pos0:], []byte("W\n")) > 0
	})
	if c, err := kcmp(w.pid, id["C"], linux.KcmpFiles, 0, 0); err != nil || c != 0 {
		t.Errorf("R and C: kcmp files %d %v, want one fd table (CLONE_FILES)", c, err)
	}

	// The stopped task resumes on SIGCONT.
	syscall.Kill(id["S"], syscall.SIGCONT)
	waitFor(t, "S to continue", func() bool { return strings.Contains(readFile(w.log), "S continued") })

	// R is still a subreaper: A1, orphaned, is R's.
	a1 := 0
	for p, ti := range before {
		if ti.Ppid == id["A"] {
			a1 = p
		}
	}
	syscall.Kill(id["A"], syscall.SIGKILL)
	waitFor(t, "A1 to be reparented to R", func() bool { ti, _ := statOf(a1); return ti.Ppid == w.pid })

	// R reaps its zombies: their statuses are the dumped ones.
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("restored root exited %d\n%s", code, w.tail())
	}
	if !strings.Contains(readFile(w.log), "zombies ok") {
		t.Fatalf("zombie statuses wrong after restore\n%s", w.tail())
	}
}

// TestTreeBashLoop restores a bash loop whose every iteration runs a
// child and waits for it: the loop goes on from where it was, no tick
// lost or repeated, and bash ends normally.
func TestTreeBashLoop(t *testing.T) {
	needRoot(t)
	const n = 300
	script := fmt.Sprintf(`n=0; while [ $n -lt %d ]; do n=$((n+1)); echo "tick $n" >> "$1"; sleep 0.01 & wait $!; done; echo done >> "$1"`, n)
	w := startTree(t, "/bin/bash", "-c", script, "bash")
	dir := w.dump(t)
	w.reapKilled(t)
	r := restore(t, w, dir)
	select {
	case err := <-r.done:
		r.done <- err
		if err != nil {
			t.Fatalf("restored bash: %v\n%s", err, w.tail())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("restored bash did not finish\n%s", w.tail())
	}
	ticks := w.ticks()
	if len(ticks) != n {
		t.Fatalf("%d ticks, want %d\n%s", len(ticks), n, w.tail())
	}
	for i, k := range ticks {
		if k != i+1 {
			t.Fatalf("tick %d at line %d: lost or repeated across the restore", k, i+1)
		}
	}
	if !strings.HasSuffix(readFile(w.log), "done\n") {
		t.Fatalf("bash did not finish its loop\n%s", w.tail())
	}
}

// waitRestored waits for the restored root to exit 0 (godwit restore
// passes its status on).
func waitRestored(t *testing.T, w *workload, r *restoring) {
	t.Helper()
	select {
	case err := <-r.done:
		r.done <- err
		if err != nil {
			t.Fatalf("restored tree: %v\n%s\n%s", err, r.out.String(), w.tail())
		}
	case <-time.After(90 * time.Second):
		t.Fatalf("restored tree did not finish\n%s", w.tail())
	}
}

// checkCount checks that the lines of file starting with PREFIX are
// "PREFIX 1" … "PREFIX n", in order.
func checkCount(t *testing.T, file, prefix string, n int) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, prefix+" ") {
			lines = append(lines, l)
		}
	}
	if len(lines) != n {
		t.Fatalf("%s: %d lines, want %d", file, len(lines), n)
	}
	for i, l := range lines {
		if l != fmt.Sprintf("%s %d", prefix, i+1) {
			t.Fatalf("%s line %d: %q: lost or repeated across the restore", file, i+1, l)
		}
	}
}

// TestTreeBashPipeline restores a three-stage bash pipeline: the data in
// flight between its stages arrives once, in order, and bash ends
// normally.
func TestTreeBashPipeline(t *testing.T) {
	needRoot(t)
	const n = 300
	script := fmt.Sprintf(`for i in $(seq 1 %d); do echo $i; sleep 0.01; done | while read k; do echo "tick $k" >> "$1"; done | cat; echo done >> "$1"`, n)
	w := startTree(t, "/bin/bash", "-c", script, "bash")
	dir := w.dump(t)
	w.reapKilled(t)
	r := restore(t, w, dir)
	waitRestored(t, w, r)
	b := readFile(w.log)
	if !strings.HasSuffix(b, "done\n") {
		t.Fatalf("the pipeline did not finish\n%s", w.tail())
	}
	checkCount(t, w.log, "tick", n)
}

// TestTreeMakeJ restores make -j3 running three recipes at once through
// its jobserver pipe: every recipe finishes its loop exactly once and
// make exits 0.
func TestTreeMakeJ(t *testing.T) {
	needRoot(t)
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatal("make is not installed")
	}
	src := t.TempDir()
	const n = 150
	mk := fmt.Sprintf("all: a b c\na:\n\tfor i in $$(seq 1 %d); do echo tick $$i >> $(LOG); sleep 0.01; done\n"+
		"b c:\n\tfor i in $$(seq 1 %d); do echo $@ $$i >> $@.out; sleep 0.01; done\n", n, n)
	if err := os.WriteFile(filepath.Join(src, "Makefile"), []byte(mk), 0o644); err != nil {
		t.Fatal(err)
	}
	// The log comes last ($2): startWorkload appends it.
	w := startTree(t, "/bin/bash", "-c", `make -s -C "$1" -j3 LOG="$2" && echo done >> "$2"`, "bash", src)
	dir := w.dump(t)
	w.reapKilled(t)
	r := restore(t, w, dir)
	waitRestored(t, w, r)
	if !strings.HasSuffix(readFile(w.log), "done\n") {
		t.Fatalf("make did not finish\n%s", w.tail())
	}
	checkCount(t, w.log, "tick", n)
	checkCount(t, filepath.Join(src, "b.out"), "b", n)
	checkCount(t, filepath.Join(src, "c.out"), "c", n)
}
