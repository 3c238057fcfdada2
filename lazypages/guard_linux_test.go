package lazypages

import (
	"context"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A guard started ahead (the migration agent's) is Run's once handed
// over: a Run that fails before serving ends it, and one never handed
// over ends with Close. Neither leaves the guard process behind.
func TestPrestartedGuardEnds(t *testing.T) {
	for _, handed := range []bool{true, false} {
		g, err := StartGuard()
		if err != nil {
			t.Fatal(err)
		}
		pid := g.g.cmd.Process.Pid
		if handed {
			// No images there: Run fails while opening them.
			if _, err := Run(context.Background(), Options{ImagesDir: t.TempDir(), Guard: g}); err == nil {
				t.Fatal("Run without images succeeded")
			}
		} else {
			g.Close()
		}
		select {
		case <-g.g.exited:
		case <-time.After(10 * time.Second):
			_ = unix.Kill(pid, unix.SIGKILL)
			t.Fatalf("handed %v: guard %d still runs", handed, pid)
		}
		if err := unix.Kill(pid, 0); err != unix.ESRCH {
			t.Errorf("handed %v: guard %d: kill 0: %v (want it reaped)", handed, pid, err)
		}
	}
}
