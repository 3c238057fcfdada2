package restorer

import (
	"context"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"godwit/dumper"
	"godwit/internal/procfs"
	"godwit/internal/testutil"
)

// TestPendingSignalsSentHere: the prepared task holds the source's PID on
// this host for the whole pre-copy; signals sent to it there are not the
// program's. Those Finish takes away (SIGTERM to the process, SIGUSR1 to
// a thread, queued real-time ones, and a SIGSTOP, which the tracer takes
// at an injection to send again on detach): the program runs on with the
// final images' pending signals (none) and exits by its own SIGUSR1.
func TestPendingSignalsSentHere(t *testing.T) {
	needRoot(t)
	for _, stop := range []bool{false, true} {
		name := "drained"
		if stop {
			name = "stop"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			log := filepath.Join(dir, "log")
			w := startWorkload(t, log, "tick 3", testutil.CounterBin(t, false), "-t", "2", "-m", "8", log)
			t.Cleanup(func() { dumper.EndTracking(w.Pid) })
			r1 := preRound(t, w.Pid, dir, 1)
			l1 := layoutOf(t, w.Pid)
			final := filepath.Join(dir, "final")
			dump(t, w.Pid, final, func(o *dumper.Options) { o.PrevImagesDir, o.TrackMem = "../r1", true })
			w.Reaped(t)
			p, err := Prepare(Options{}, l1)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(p.Abort)
			pid := p.PID()
			if len(l1.Tids) == 0 {
				t.Fatal("no thread but the leader")
			}
			if err := unix.Kill(pid, unix.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if err := unix.Tgkill(pid, l1.Tids[0], unix.SIGUSR1); err != nil {
				t.Fatal(err)
			}
			for range 5 { // SIGRTMIN+3 (glibc SIGRTMIN is 34), queued 5 times
				if err := unix.Kill(pid, unix.Signal(37)); err != nil {
					t.Fatal(err)
				}
			}
			if stop {
				if err := unix.Kill(pid, unix.SIGSTOP); err != nil {
					t.Fatal(err)
				}
			}
			st, err := procfs.ReadStatus(pid)
			if err != nil {
				t.Fatal(err)
			}
			if st.ShdPnd&(1<<(unix.SIGTERM-1)) == 0 {
				t.Fatalf("SIGTERM not pending in the prepared task: ShdPnd %#x", st.ShdPnd)
			}
			if err := p.WritePages(context.Background(), r1); err != nil {
				t.Fatal(err)
			}
			r, err := p.Finish(context.Background(), Options{ImagesDir: final}, nil)
			if err != nil {
				t.Fatalf("finish: %v", err)
			}
			t.Cleanup(func() {
				if !r.waited {
					_ = unix.Kill(r.PID(), unix.SIGKILL)
					r.Wait()
				}
			})
			waitTicks(t, log, ticks(t, log))
			// The counter had nothing pending when dumped: nor has the
			// restored program, in any thread.
			for _, tid := range append([]int{pid}, l1.Tids...) {
				st, err := procfs.ReadTaskStatus(pid, tid)
				if err != nil {
					t.Fatal(err)
				}
				if st.SigPnd|st.ShdPnd != 0 {
					t.Errorf("restored thread %d: SigPnd %#x ShdPnd %#x, dumped none", tid, st.SigPnd, st.ShdPnd)
				}
			}
			finish(t, r, log)
		})
	}
}
