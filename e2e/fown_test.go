package e2e

import (
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// File owners survive a restore: a socketpair end whose SIGIO goes to
// the process as SIGRTMIN+1 (O_ASYNC, F_SETOWN_EX F_OWNER_PID, F_SETSIG)
// and a pipe's read end whose goes to the process group as SIGRTMIN+2.
// After the restore a write still sends each its signal with the right
// si_fd, and F_GETOWN_EX, F_GETSIG and O_ASYNC read as before.
func TestFileOwnerDumpRestore(t *testing.T) {
	needRoot(t)
	w := startWorkload(t, cWorkload(t, "fown"))
	const rtmin = 34 // glibc's SIGRTMIN
	// The workload is a session (and so group) leader: group = pid.
	want := fmt.Sprintf("got 40:%d/40/1 41:%d/41/1 own40=1:%d own41=2:%d sig40=%d sig41=%d async=1/1",
		rtmin+1, rtmin+2, w.pid, w.pid, rtmin+1, rtmin+2)
	if got := fownTrigger(t, w); got != want {
		t.Fatalf("before the dump: %q, want %q", got, want)
	}
	dir := w.dump(t)
	w.reapKilled(t)
	restore(t, w, dir)
	if got := fownTrigger(t, w); got != want {
		t.Fatalf("after the restore: %q, want %q\n%s", got, want, w.tail())
	}
}

// With --shell-job the job's group becomes godwit's on restore, and an
// owner that was the job's group (as tty_fasync makes the foreground
// group the owner of a job's terminal) follows it: F_GETOWN_EX reads
// godwit's group and the group's SIGIO still reaches the program.
func TestFileOwnerShellJob(t *testing.T) {
	needRoot(t)
	w := startWorkload(t, cWorkload(t, "fown"))
	const rtmin = 34 // glibc's SIGRTMIN
	line := func(pg int) string {
		return fmt.Sprintf("got 40:%d/40/1 41:%d/41/1 own40=1:%d own41=2:%d sig40=%d sig41=%d async=1/1",
			rtmin+1, rtmin+2, w.pid, pg, rtmin+1, rtmin+2)
	}
	if got, want := fownTrigger(t, w), line(w.pid); got != want {
		t.Fatalf("before the dump: %q, want %q", got, want)
	}
	dir := w.dump(t, "--shell-job")
	w.reapKilled(t)
	// godwit leads a session and group of its own (the test's group
	// leader may be outside the pid namespace, as in CI); the job joins
	// that group.
	r := restoreWith(t, w, dir, func(c *exec.Cmd) { c.SysProcAttr = &syscall.SysProcAttr{Setsid: true} }, "--shell-job")
	pg, err := syscall.Getpgid(w.pid)
	if err != nil {
		t.Fatal(err)
	}
	if pg != r.cmd.Process.Pid {
		t.Fatalf("restored process group %d, want godwit's %d", pg, r.cmd.Process.Pid)
	}
	if got, want := fownTrigger(t, w), line(pg); got != want {
		t.Fatalf("after the restore: %q, want %q\n%s", got, want, w.tail())
	}
}

// fownTrigger asks the fown workload for a round of signals and returns
// the line it logged.
func fownTrigger(t *testing.T, w *workload) string {
	t.Helper()
	lines := func() []string {
		var out []string
		for _, l := range strings.Split(readFile(w.log), "\n") {
			if strings.HasPrefix(l, "got ") {
				out = append(out, l)
			}
		}
		return out
	}
	n := len(lines())
	if err := syscall.Kill(w.pid, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if l := lines(); len(l) > n {
			return l[len(l)-1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no signal round logged\n%s", w.tail())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
