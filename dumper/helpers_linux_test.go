package dumper

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"godwit/internal/procfs"
	"godwit/internal/testutil"
)

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("dumping needs root (ptrace of any task, pagemap PFNs)")
	}
}

// start runs argv with nil stdio (/dev/null, an fd kind the dumper
// supports); see testutil.Start.
func start(t testing.TB, log, ready string, argv ...string) *testutil.Proc {
	t.Helper()
	return testutil.Start(t, exec.Command(argv[0], argv[1:]...), log, ready)
}

func startCounter(t testing.TB, static bool, args ...string) *testutil.Proc {
	t.Helper()
	log := filepath.Join(t.TempDir(), "counter.Log")
	argv := append([]string{testutil.CounterBin(t, static)}, args...)
	argv = append(argv, log)
	return start(t, log, "ready pid=", argv...)
}

// status returns State and TracerPid of pid.
func status(t testing.TB, pid int) (byte, int) {
	t.Helper()
	st, err := procfs.ReadStatus(pid)
	if err != nil {
		t.Fatal(err)
	}
	return st.State, st.TracerPid
}

// assertRunningUntraced checks pid is not stopped and not traced.
func assertRunningUntraced(t testing.TB, pid int) {
	t.Helper()
	// A task may be caught in "t"/"T" for an instant only if we broke it;
	// give the kernel a moment to settle after detach.
	var state byte
	var tracer int
	for i := 0; i < 50; i++ {
		state, tracer = status(t, pid)
		if state != 'T' && state != 't' && tracer == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("pid %d: state %c, tracer %d after dump", pid, state, tracer)
}

func dumpOpts(pid int, dir string) Options {
	return Options{Pid: pid, ImagesDir: dir}
}

func crit(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("crit", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("crit %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
