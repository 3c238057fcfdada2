package restorer

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/dumper"
	"godwit/internal/testutil"
)

// TestPendingReprotect: a VMA mprotect'ed as a whole after the round that
// laid it out keeps its bounds and flags, so Finish keeps it; it must
// still get the final images' protection: rw made rwx (code then runs
// there on B), and r-x made rw (no exec left behind).
func TestPendingReprotect(t *testing.T) {
	needRoot(t)
	bin := filepath.Join(t.TempDir(), "reprot")
	if out, err := exec.Command("gcc", "-O2", "-Wall", "-o", bin, "testdata/reprot.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v %s", err, out)
	}
	for _, c := range []struct{ mode, want string }{{"exec", "rwxp"}, {"noexec", "rw-p"}} {
		t.Run(c.mode, func(t *testing.T) {
			dir := t.TempDir()
			log := filepath.Join(dir, "log")
			w := startWorkload(t, log, "ready", bin, log, c.mode)
			t.Cleanup(func() { dumper.EndTracking(w.Pid) })
			b, err := os.ReadFile(log)
			if err != nil {
				t.Fatal(err)
			}
			m := regexp.MustCompile(`A=0x([0-9a-f]+)`).FindSubmatch(b)
			if m == nil {
				t.Fatalf("no address in %q", b)
			}
			a, _ := strconv.ParseUint(string(m[1]), 16, 64)
			r1 := preRound(t, w.Pid, dir, 1)
			l1 := layoutOf(t, w.Pid)
			if err := unix.Kill(w.Pid, unix.SIGUSR1); err != nil {
				t.Fatal(err)
			}
			testutil.WaitFor(t, log, "changed", 20*time.Second)
			final := filepath.Join(dir, "final")
			dump(t, w.Pid, final, func(o *dumper.Options) { o.PrevImagesDir, o.TrackMem = "../r1", true })
			w.Reaped(t)
			p, err := Prepare(Options{}, l1)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(p.Abort)
			if err := p.WritePages(context.Background(), r1); err != nil {
				t.Fatal(err)
			}
			r, err := p.Finish(context.Background(), Options{ImagesDir: final}, nil)
			if err != nil {
				t.Fatalf("finish: %v", err)
			}
			t.Cleanup(func() { _ = unix.Kill(r.PID(), unix.SIGKILL); r.Wait() })
			if st := p.Stats(); st.Pages == 0 {
				t.Fatalf("no pages written ahead: %+v", st)
			}
			maps, err := os.ReadFile("/proc/" + strconv.Itoa(r.PID()) + "/maps")
			if err != nil {
				t.Fatal(err)
			}
			prefix := strconv.FormatUint(a, 16) + "-"
			var line string
			for _, ln := range strings.Split(string(maps), "\n") {
				if strings.HasPrefix(ln, prefix) {
					line = ln
				}
			}
			if f := strings.Fields(line); len(f) < 2 || f[1] != c.want {
				t.Fatalf("restored VMA at %#x: %q, dumped %s", a, line, c.want)
			}
			// It runs on (in mode exec, calling the code in the VMA).
			waitTicks(t, log, ticks(t, log))
		})
	}
}
