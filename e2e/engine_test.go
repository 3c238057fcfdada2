package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tids lists the thread ids of pid.
func tids(t *testing.T, pid int) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range ents {
		n, _ := strconv.Atoi(e.Name())
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// dumpKillRestore is the basic cycle: dump (which kills), restore, check
// that the program goes on where it was and passes its own checks.
func dumpKillRestore(t *testing.T, w *workload) {
	before := tids(t, w.pid)
	dir := w.dump(t)
	w.reapKilled(t)
	r := restore(t, w, dir)
	if got := tids(t, w.pid); !slices.Equal(got, before) {
		t.Errorf("thread ids after restore %v, want %v", got, before)
	}
	if state, tracer := procState(t, w.pid); tracer != 0 || state == "t" || state == "T" {
		t.Errorf("restored pid %d: state %s, tracer %d; want running and untraced", w.pid, state, tracer)
	}
	w.waitTicks(5)
	syscall.Kill(w.pid, syscall.SIGUSR2)
	time.Sleep(50 * time.Millisecond)
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("restored program exited %d\n%s\n%s", code, w.tail(), r.out.String())
	}
	w.checkLog(1)
}

func TestDumpRestoreC(t *testing.T) {
	needRoot(t)
	for _, c := range []struct {
		name   string
		static bool
		args   []string
	}{
		{"dynamic/1-thread/nanosleep", false, []string{"-m", "16", "-b", "sleep"}},
		{"static/1-thread/futex", true, []string{"-m", "16", "-b", "futex"}},
		{"dynamic/16-threads/spin", false, []string{"-m", "16", "-t", "16", "-b", "spin"}},
		{"static/16-threads/nanosleep", true, []string{"-m", "16", "-t", "16", "-b", "sleep"}},
		{"dynamic/16-threads/futex", false, []string{"-m", "64", "-t", "16", "-b", "futex"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dumpKillRestore(t, startC(t, c.static, c.args...))
		})
	}
}

func TestDumpRestorePython(t *testing.T) {
	needRoot(t)
	t.Run("single-thread", func(t *testing.T) { dumpKillRestore(t, startPython(t, "-m", "8")) })
	t.Run("threading", func(t *testing.T) { dumpKillRestore(t, startPython(t, "-m", "8", "-t", "4")) })
}

// A restored program can be dumped and restored again.
func TestDumpRestoreTwice(t *testing.T) {
	needRoot(t)
	w := startC(t, false, "-m", "8", "-t", "4")
	dir := w.dump(t)
	w.reapKilled(t)
	r1 := restore(t, w, dir)
	w.waitTicks(5)

	dir2 := w.dump(t)
	// The first restore waited for the task the second dump killed.
	select {
	case err := <-r1.done:
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 128+int(syscall.SIGKILL) {
			t.Fatalf("first restore: %v, want exit %d (killed)", err, 128+int(syscall.SIGKILL))
		}
		r1.done <- err
	case <-time.After(10 * time.Second):
		t.Fatal("first restore did not see its task die")
	}
	for i := 0; i < 300 && pidExists(w.pid); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	r2 := restore(t, w, dir2)
	w.waitTicks(5)
	if code := r2.finish(t, w); code != 0 {
		t.Fatalf("twice-restored program exited %d\n%s", code, w.tail())
	}
	w.checkLog(0)
}

// -R leaves the program running, untouched; its images restore it later,
// after the original has exited, once the files it wrote are as dumped.
func TestLeaveRunning(t *testing.T) {
	needRoot(t)
	w := startC(t, false, "-m", "8", "-t", "2")
	dir := w.dump(t, "-R")
	if state, tracer := procState(t, w.pid); tracer != 0 || state == "t" || state == "T" {
		t.Fatalf("after dump -R: state %s, tracer %d", state, tracer)
	}
	w.waitTicks(5)
	w.finishOriginal(t, "after dump -R")
	// The original wrote on into LOG.seq: restoring its offset into the
	// grown file would be wrong state, so restore refuses, naming it.
	seq := w.log + ".seq"
	code, out := godwit(t, "restore", "-D", dir)
	m := regexp.MustCompile(`changed since the dump: \d+ bytes, was (\d+)`).FindStringSubmatch(out)
	if code == 0 || m == nil || !strings.Contains(out, seq) {
		t.Fatalf("restore against a grown %s: exit %d: %s", seq, code, out)
	}
	// With the file as it was at the dump, the images restore.
	size, _ := strconv.ParseInt(m[1], 10, 64)
	if err := os.Truncate(seq, size); err != nil {
		t.Fatal(err)
	}
	r := restore(t, w, dir)
	w.waitTicks(3)
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("program restored after the original exited: exit %d\n%s", code, w.tail())
	}
	b, _ := os.ReadFile(w.log)
	if n := strings.Count(string(b), "done ticks="); n != 2 {
		t.Errorf("want two runs to finish (original and restored), log has %d", n)
	}
}

// -s leaves the program stopped and untraced; SIGCONT resumes it.
func TestLeaveStopped(t *testing.T) {
	needRoot(t)
	w := startC(t, true, "-t", "3")
	w.dump(t, "-s")
	// The detached threads take the queued SIGSTOP on their way out of
	// the kernel: the group stop settles a moment after dump returns.
	state, tracer := procState(t, w.pid)
	for i := 0; i < 200 && state != "T"; i++ {
		time.Sleep(5 * time.Millisecond)
		state, tracer = procState(t, w.pid)
	}
	if state != "T" || tracer != 0 {
		t.Fatalf("after dump -s: state %s, tracer %d; want T and untraced", state, tracer)
	}
	n := len(w.ticks())
	time.Sleep(100 * time.Millisecond)
	if len(w.ticks()) != n {
		t.Fatal("the program ticked while it should be stopped")
	}
	syscall.Kill(w.pid, syscall.SIGCONT)
	w.waitTicks(3)
	w.finishOriginal(t, "after dump -s and SIGCONT")
}

// restore without -d exits with the restored program's status.
func TestRestoreExitStatus(t *testing.T) {
	needRoot(t)
	w := startC(t, false, "-x", "7")
	dir := w.dump(t)
	w.reapKilled(t)
	r := restore(t, w, dir)
	w.waitTicks(2)
	if code := r.finish(t, w); code != 7 {
		t.Fatalf("restore exited %d, want the program's 7\n%s", code, w.tail())
	}
}

// restore -d detaches and writes --pidfile; the program runs on, even one
// with a parent-death signal (its parent after the restore is godwit,
// which exits).
func TestRestoreDetached(t *testing.T) {
	needRoot(t)
	w := startC(t, false, "-t", "2", "-p")
	dir := w.dump(t)
	w.reapKilled(t)
	t.Cleanup(func() { killAndForget(w.pid) })
	code, out := godwit(t, "restore", "-d", "-D", dir, "--pidfile", "restored.pid")
	if code != 0 {
		t.Fatalf("restore -d: exit %d: %s", code, out)
	}
	pidText, err := os.ReadFile(filepath.Join(dir, "restored.pid"))
	if err != nil || strings.TrimSpace(string(pidText)) != strconv.Itoa(w.pid) {
		t.Fatalf("pidfile %q, %v; want %d", pidText, err, w.pid)
	}
	w.waitTicks(5)
	syscall.Kill(w.pid, syscall.SIGUSR1)
	for i := 0; i < 1000 && alive(w.pid); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	w.checkLog(0)
}

// syscallOf returns the system call number thread tid of pid is blocked
// in (/proc/PID/task/TID/syscall), or -1 if it is running.
func syscallOf(t *testing.T, pid, tid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/syscall", pid, tid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	if len(f) == 0 || f[0] == "running" {
		return -1
	}
	n, _ := strconv.Atoi(f[0])
	return n
}

// A thread blocked in read(2) when dumped is blocked in the same read
// after the restore, and gets the data written afterwards.
func TestDumpRestoreBlockedInRead(t *testing.T) {
	needRoot(t)
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	w := startC(t, false, "-r", fifo)
	ts := tids(t, w.pid)
	if len(ts) != 2 {
		t.Fatalf("threads %v, want the main thread and the reader", ts)
	}
	reader := ts[1]
	waitBlocked := func(what string) {
		for i := 0; i < 400 && syscallOf(t, w.pid, reader) != syscall.SYS_READ; i++ {
			time.Sleep(5 * time.Millisecond)
		}
		if n := syscallOf(t, w.pid, reader); n != syscall.SYS_READ {
			t.Fatalf("%s: reader thread %d is in syscall %d, not read", what, reader, n)
		}
	}
	waitBlocked("before the dump")
	dir := w.dump(t)
	w.reapKilled(t)
	r := restore(t, w, dir)
	waitBlocked("after the restore")

	f, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("z"))
	f.Close()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(readFile(w.log), "read z\n") {
		if time.Now().After(deadline) {
			t.Fatalf("the restored reader did not get the byte\n%s", w.tail())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("restored program exited %d\n%s", code, w.tail())
	}
	w.checkLog(0)
	if !strings.Contains(readFile(w.log), " reads=1\n") {
		t.Errorf("want exactly one byte read\n%s", w.tail())
	}
}

// A FIFO with bytes in it is dumped with them (peeked, not consumed) and
// restored with them: the restored reader gets both bytes, once.
func TestDumpRestoreFullFIFO(t *testing.T) {
	needRoot(t)
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	w := startC(t, false, "-r", fifo)
	// Stop the reader from draining: the bytes stay queued while the
	// process is stopped, and the dump sees them.
	syscall.Kill(w.pid, syscall.SIGSTOP)
	for _, tid := range tids(t, w.pid) {
		for i := 0; i < 400 && taskState(tid, w.pid) != "T"; i++ {
			time.Sleep(5 * time.Millisecond)
		}
		if st := taskState(tid, w.pid); st != "T" {
			t.Fatalf("thread %d did not stop: %s", tid, st)
		}
	}
	f, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("ab"))
	f.Close()
	dir := w.dump(t)
	w.reapKilled(t)
	// Restored stopped, as dumped: continue it.
	r := restoreStopped(t, w, dir)
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("restored program exited %d\n%s", code, w.tail())
	}
	log := readFile(w.log)
	if !strings.Contains(log, "read a\nread b\n") || !strings.Contains(log, " reads=2\n") {
		t.Fatalf("want the two queued bytes read once each after the restore\n%s", w.tail())
	}
}

// restoreStopped restores w, dumped while stopped, waits until it is
// restored (stopped, untraced), and continues it.
func restoreStopped(t *testing.T, w *workload, dir string) *restoring {
	t.Helper()
	r := &restoring{done: make(chan error, 1)}
	r.cmd = exec.Command(godwitBin, "restore", "-D", dir, "-v4", "-o", "restore.log")
	r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.out
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.done <- r.cmd.Wait() }()
	t.Cleanup(func() {
		killAndForget(w.pid)
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			r.cmd.Process.Kill()
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !(pidExists(w.pid) && tracerOf(w.pid) == 0 && taskState(w.pid, w.pid) == "T") {
		select {
		case err := <-r.done:
			t.Fatalf("restore exited early: %v: %s\n%s", err, r.out.String(), readFile(filepath.Join(dir, "restore.log")))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("restored pid %d did not appear stopped\n%s", w.pid, readFile(filepath.Join(dir, "restore.log")))
		}
		time.Sleep(5 * time.Millisecond)
	}
	syscall.Kill(w.pid, syscall.SIGCONT)
	w.waitTicks(3)
	return r
}

// taskState is the state letter of thread tid of pid.
func taskState(tid, pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/stat", pid, tid))
	if err != nil {
		return ""
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 >= len(b) {
		return ""
	}
	return string(b[i+2])
}

// A program at its RLIMIT_NOFILE (every descriptor it may have is open)
// restores: the limit is set after godwit's last injected open.
func TestDumpRestoreAtFdLimit(t *testing.T) {
	needRoot(t)
	// counter holds 0, 1, 2, LOG and LOG.seq: five descriptors.
	w := startWorkload(t, "/usr/bin/prlimit", "--nofile=5", workloads["counter"])
	dumpKillRestore(t, w)
}
