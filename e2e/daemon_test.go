package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestDumpRefusesDaemon dumps a daemonized program (its session's and
// group's leader, a shell, forked it and exited): without --shell-job the
// dump is refused naming the task, the session and --shell-job, and the
// program runs on untraced; with --shell-job it is dumped and restored
// into godwit's session.
func TestDumpRefusesDaemon(t *testing.T) {
	needRoot(t)
	w := startWorkload(t, cWorkload(t, "reaper"), "/bin/sh", "-c", `"$0" "$1" & echo $! > "$1.pid"`, workloads["counter"])
	b, err := os.ReadFile(w.log + ".pid")
	if err != nil {
		t.Fatal(err)
	}
	w.pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	st, _ := statOf(w.pid)
	if st.Sid == w.pid || pidExists(st.Sid) {
		t.Fatalf("pid %d is not a daemon: session %d", w.pid, st.Sid)
	}
	dir := t.TempDir()
	code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", dir)
	for _, s := range []string{"task " + strconv.Itoa(w.pid), "session " + strconv.Itoa(st.Sid), "--shell-job"} {
		if code == 0 || !strings.Contains(out, s) {
			t.Fatalf("dump of a daemon: exit %d, want an error naming %q: %s", code, s, out)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "inventory.img")); err == nil {
		t.Errorf("a refused dump left inventory.img")
	}
	if state, tracer := procState(t, w.pid); tracer != 0 || state == "T" || state == "t" {
		t.Fatalf("after the refused dump pid %d is %s, tracer %d", w.pid, state, tracer)
	}
	w.waitTicks(2)
	dir = w.dump(t, "--shell-job")
	waitFor(t, "the dumped daemon to go", func() bool { return !pidExists(w.pid) })
	// godwit in a session of its own: its group's leader is in its pid
	// namespace (also under unshare -pf).
	r := restoreWith(t, w, dir, func(c *exec.Cmd) { c.SysProcAttr = &syscall.SysProcAttr{Setsid: true} }, "--shell-job")
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("restored daemon exited %d\n%s", code, w.tail())
	}
	w.checkLog(0)
}

// TestDumpRefusesExitedLeader dumps a live process whose main thread
// exited (pthread_exit in main): the error says so, not "a zombie", and
// the process ticks on untraced.
func TestDumpRefusesExitedLeader(t *testing.T) {
	needRoot(t)
	w := startWorkload(t, cWorkload(t, "leaderexit"))
	waitFor(t, "the main thread to exit", func() bool { st, _ := statOf(w.pid); return st.State == 'Z' })
	code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir())
	if code == 0 || !strings.Contains(out, "main thread exited") || !strings.Contains(out, strconv.Itoa(w.pid)) {
		t.Fatalf("dump of a process whose main thread exited: exit %d: %s", code, out)
	}
	w.waitTicks(2)
	if _, tracer := procState(t, w.pid); tracer != 0 {
		t.Fatalf("pid %d still traced by %d", w.pid, tracer)
	}
}
