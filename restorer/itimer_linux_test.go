package restorer

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestRestoreExpiredItimer dumps a periodic ITIMER_REAL that expired while
// its SIGALRM was blocked: the kernel reloads it only when the signal is
// dequeued, so getitimer reports value 0 and a restore that takes that
// value as is disarms the timer for good. The restored program must keep
// getting alarms.
func TestRestoreExpiredItimer(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "itimer")
	if out, err := exec.Command("gcc", "-O2", "-o", bin, "testdata/itimer.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	log := filepath.Join(dir, "log")
	w := startWorkload(t, log, "ready", bin, log)
	if b, _ := os.ReadFile(log); !strings.Contains(string(b), "value=0.000000 interval=0.020000") {
		t.Fatalf("the program did not reach the state under test: %s", b)
	}
	imgs := filepath.Join(dir, "img")
	dump(t, w.Pid, imgs, nil)
	w.Reaped(t)
	r := restore(t, imgs, nil)
	finish(t, r, log)
}
