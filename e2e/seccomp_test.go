package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
)

var (
	seccompOnce sync.Once
	seccompBin  string
	seccompErr  error
)

// TestSeccompFilterSurvives: a program whose threads share seccomp
// filters is dumped and restored through the binary; after restore its
// filter still returns EACCES for getppid in both threads and still
// kills the process (SIGSYS) at sethostname.
func TestSeccompFilterSurvives(t *testing.T) {
	needRoot(t)
	seccompOnce.Do(func() {
		seccompBin = filepath.Join(filepath.Dir(godwitBin), "seccomp")
		out, err := exec.Command("gcc", "-O2", "-Wall", "-pthread", "-o", seccompBin, "workloads/seccomp.c").CombinedOutput()
		if err != nil {
			seccompErr = fmt.Errorf("gcc seccomp.c: %v\n%s", err, out)
		}
	})
	if seccompErr != nil {
		t.Fatal(seccompErr)
	}
	w := startWorkload(t, seccompBin)
	dir := w.dump(t)
	w.reapKilled(t)
	if out := readFile(fmt.Sprintf("/proc/%d/status", w.pid)); out != "" {
		t.Fatalf("pid %d still there after the dump", w.pid)
	}
	r := restore(t, w, dir)
	if st := readFile(fmt.Sprintf("/proc/%d/status", w.pid)); !strings.Contains(st, "Seccomp:\t2") || !strings.Contains(st, "NoNewPrivs:\t1") {
		t.Fatalf("restored pid %d:\n%s", w.pid, st)
	}
	code := r.finish(t, w)
	log := readFile(w.log)
	if code != 128+int(syscall.SIGSYS) || !strings.Contains(log, "checked") || strings.Contains(log, "BAD") {
		t.Fatalf("restored program: exit %d (want %d, killed by SIGSYS); log:\n%s", code, 128+int(syscall.SIGSYS), w.tail())
	}
}
