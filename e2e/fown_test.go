package e2e

import (
	"fmt"
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
