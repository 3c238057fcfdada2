package restorer

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
	"godwit/internal/testutil"
)

// startPythonTree starts python3 running prog with the log path as its
// argument, and waits for "ready" in the log.
func startPythonTree(t *testing.T, prog string) (*testutil.Proc, string) {
	t.Helper()
	log := filepath.Join(t.TempDir(), "log")
	return startWorkload(t, log, "ready", "/usr/bin/python3", "-c", prog, log), log
}

// subreaper makes the test process the reaper of its tree's orphans for
// the test (PID 1 of a test's pid namespace may never reap them), so that
// reapGone can free their PIDs.
func subreaper(t *testing.T) {
	t.Helper()
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })
}

// kidsOf lists pid's children.
func kidsOf(t *testing.T, pid int) []int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		n, _ := strconv.Atoi(f)
		out = append(out, n)
	}
	return out
}

// reapGone waits until pid is gone, reaping it if it came to us.
func reapGone(t *testing.T, pid int) {
	t.Helper()
	for i := 0; i < 2000; i++ {
		var ws unix.WaitStatus
		unix.Wait4(pid, &ws, unix.WALL|unix.WNOHANG, nil)
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("pid %d not gone", pid)
}

// TestRestoreTreeFailureKillsAll fails the restore of a child (the file
// it has open is gone): the error names the task and every task made is
// killed, with nothing left behind.
func TestRestoreTreeFailureKillsAll(t *testing.T) {
	needRoot(t)
	subreaper(t)
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	prog := "import os, sys, time\n" +
		"if os.fork() == 0:\n" +
		"    f = open(" + strconv.Quote(victim) + ")\n" +
		"    open(sys.argv[1] + '.kid', 'w').write(str(os.getpid())); time.sleep(60)\n" +
		"time.sleep(0.3); open(sys.argv[1], 'w').write('ready'); time.sleep(60)\n"
	w, log := startPythonTree(t, prog)
	kid, _ := strconv.Atoi(strings.TrimSpace(string(mustRead(t, log+".kid"))))
	t.Cleanup(func() { syscall.Kill(kid, syscall.SIGKILL) })
	imgs := filepath.Join(dir, "img")
	dump(t, w.Pid, imgs, nil)
	w.Reaped(t)
	reapGone(t, kid)
	os.Remove(victim)
	restoreFails(t, imgs, w.Pid, fmt.Sprintf("task %d", kid), "victim")
	reapGone(t, kid) // orphaned to us by the kill of its parent
}

// TestRestoreTreeSharedAnon restores a parent and child sharing an
// anonymous MAP_SHARED page: after restore the child's writes are seen by
// the parent, one object again, with the value it had at the dump.
func TestRestoreTreeSharedAnon(t *testing.T) {
	needRoot(t)
	subreaper(t)
	prog := "import mmap, os, sys, time, struct\n" +
		"m = mmap.mmap(-1, 8192)\n" +
		"m[4096:4104] = struct.pack('Q', 1000)\n" +
		"if os.fork() == 0:\n" +
		"    while True:\n" +
		"        n = struct.unpack('Q', m[0:8])[0]; m[0:8] = struct.pack('Q', n + 1); time.sleep(0.005)\n" +
		"time.sleep(0.2); open(sys.argv[1], 'w').write('ready')\n" +
		"while True:\n" +
		"    open(sys.argv[1] + '.n', 'w').write('%d %d' % struct.unpack('QQ', m[0:8] + m[4096:4104])); time.sleep(0.005)\n"
	w, log := startPythonTree(t, prog)
	imgs := filepath.Join(t.TempDir(), "img")
	kids := kidsOf(t, w.Pid)
	dump(t, w.Pid, imgs, nil)
	w.Reaped(t)
	for _, k := range kids {
		reapGone(t, k)
	}
	r := restore(t, imgs, nil)
	pids := r.PIDs()
	t.Cleanup(func() {
		for _, p := range pids {
			syscall.Kill(p, syscall.SIGKILL)
		}
		for _, p := range pids[1:] {
			reapGone(t, p)
		}
	})
	if len(pids) != 2 {
		t.Fatalf("restored %v, want a parent and a child", pids)
	}
	read := func() (int, int) {
		var a, b int
		fmt.Sscan(string(mustRead(t, log+".n")), &a, &b)
		return a, b
	}
	first, mark := read()
	if mark != 1000 {
		t.Fatalf("second page %d after restore, want 1000", mark)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, _ := read()
		if n > first+5 {
			break // the parent sees the child's writes
		}
		if time.Now().After(deadline) {
			t.Fatalf("the parent sees %d, still %d: the child's writes do not reach it", n, first)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	for i := 0; i < 500; i++ {
		if b, err := os.ReadFile(p); err == nil && len(b) > 0 {
			return b
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s: never written", p)
	return nil
}

// TestRestoreTreeDeadGroupLeader restores a task whose process group's
// leader had exited and been reaped: a helper with the leader's pid makes
// the group again and goes, and the member is back in it.
func TestRestoreTreeDeadGroupLeader(t *testing.T) {
	needRoot(t)
	subreaper(t)
	prog := "import os, sys, time\n" +
		"l = os.fork()\n" +
		"if l == 0:\n" +
		"    os.setpgid(0, 0); time.sleep(0.1); os._exit(0)\n" +
		"try: os.setpgid(l, l)\n" +
		"except OSError: pass\n" +
		"m = os.fork()\n" +
		"if m == 0:\n" +
		"    os.setpgid(0, l)\n" +
		"    while True: time.sleep(0.01)\n" +
		"os.waitpid(l, 0)\n" +
		"open(sys.argv[1] + '.ids', 'w').write('%d %d' % (l, m))\n" +
		"open(sys.argv[1], 'w').write('ready')\n" +
		"while True: time.sleep(0.01)\n"
	w, log := startPythonTree(t, prog)
	var l, m int
	fmt.Sscan(string(mustRead(t, log+".ids")), &l, &m)
	t.Cleanup(func() { syscall.Kill(m, syscall.SIGKILL) })
	if pg, err := syscall.Getpgid(m); err != nil || pg != l {
		t.Fatalf("member %d in group %d (%v), want %d", m, pg, err, l)
	}
	imgs := filepath.Join(t.TempDir(), "img")
	dump(t, w.Pid, imgs, nil)
	w.Reaped(t)
	reapGone(t, m)
	r := restore(t, imgs, nil)
	t.Cleanup(func() {
		for _, p := range r.PIDs() {
			syscall.Kill(p, syscall.SIGKILL)
		}
		reapGone(t, m)
	})
	if pg, err := syscall.Getpgid(m); err != nil || pg != l {
		t.Fatalf("restored member %d in group %d (%v), want %d", m, pg, err, l)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", l)); err == nil {
		t.Fatalf("the helper %d for the dead leader is still there", l)
	}
	noChildren(t, w.Pid)
}

// TestRestoreTreeWorkers restores a root and seven children, each writing
// its number into one pipe the root reads: the tasks are spread over
// several tracer threads while they are rebuilt (the TracerPids differ
// after Layout), and after Resume every child's writes reach the root
// through the one pipe, each child with its own number (its own memory).
func TestRestoreTreeWorkers(t *testing.T) {
	needRoot(t)
	subreaper(t)
	const kids = 7
	prog := "import os, sys, time\n" +
		"r, w = os.pipe()\n" +
		"for i in range(" + strconv.Itoa(kids) + "):\n" +
		"    if os.fork() == 0:\n" +
		"        os.close(r)\n" +
		"        while True:\n" +
		"            os.write(w, b'%d\\n' % i); time.sleep(0.01)\n" +
		"os.close(w)\n" +
		"f = os.fdopen(r)\n" +
		"n = [0] * " + strconv.Itoa(kids) + "\n" +
		"while True:\n" +
		"    n[int(f.readline())] += 1\n" +
		"    open(sys.argv[1] + '.n', 'w').write(' '.join(map(str, n)))\n" +
		"    if min(n) > 0 and not os.path.exists(sys.argv[1]): open(sys.argv[1], 'w').write('ready')\n"
	w, log := startPythonTree(t, prog)
	pids := append([]int{w.Pid}, kidsOf(t, w.Pid)...)
	t.Cleanup(func() {
		for _, p := range pids {
			syscall.Kill(p, syscall.SIGKILL)
		}
	})
	if len(pids) != kids+1 {
		t.Fatalf("tree %v, want a root and %d children", pids, kids)
	}
	imgs := filepath.Join(t.TempDir(), "img")
	dump(t, w.Pid, imgs, nil)
	w.Reaped(t)
	for _, p := range pids[1:] {
		reapGone(t, p)
	}
	r, err := New(Options{ImagesDir: imgs}, nil)
	if err != nil {
		t.Fatal(err)
	}
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			r.Abort()
		} else {
			syscall.Kill(r.PID(), syscall.SIGKILL)
			r.Wait()
		}
		for _, p := range pids[1:] {
			reapGone(t, p)
		}
	})
	if err := r.Layout(); err != nil {
		t.Fatal(err)
	}
	tracers := map[int]bool{}
	for _, p := range pids {
		st, err := procfs.ReadStatus(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.TracerPid == 0 {
			t.Fatalf("task %d untraced after Layout", p)
		}
		tracers[st.TracerPid] = true
	}
	if want := min(treeWorkers, len(pids)); len(tracers) != want {
		t.Fatalf("tasks traced by %d threads after Layout, want %d", len(tracers), want)
	}
	if err := r.fillAll(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := r.Finalize(); err != nil {
		t.Fatal(err)
	}
	if err := r.Resume(); err != nil {
		t.Fatal(err)
	}
	resumed = true
	for _, p := range pids[1:] {
		if st, err := procfs.ReadStatus(p); err != nil || st.PPid != w.Pid {
			got := -1
			if err == nil {
				got = st.PPid
			}
			t.Fatalf("restored child %d has parent %d, want %d", p, got, w.Pid)
		}
	}
	counts := func() []int {
		var out []int
		for _, f := range strings.Fields(string(mustRead(t, log+".n"))) {
			n, _ := strconv.Atoi(f)
			out = append(out, n)
		}
		return out
	}
	first := counts()
	deadline := time.Now().Add(20 * time.Second)
	for {
		now, behind := counts(), -1
		for i := range first {
			if i >= len(now) || now[i] <= first[i] {
				behind = i
				break
			}
		}
		if behind < 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("child %d's writes no longer reach the root (counts %v, then %v)", behind, first, now)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
