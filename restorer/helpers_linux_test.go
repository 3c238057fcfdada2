package restorer

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/dumper"
	"godwit/internal/testutil"
)

func TestMain(m *testing.M) {
	if job := os.Getenv(nsRestoreEnv); job != "" {
		os.Exit(nsRestoreMain(job))
	}
	// Descriptors our own parent leaked to us (a CI runner's pipes) would
	// leak on into the workloads, and the dumper refuses pipes.
	testutil.CloseInheritedFDs()
	code := m.Run()
	testutil.RemoveBuilds()
	if goodDir != "" {
		os.RemoveAll(goodDir)
	}
	os.Exit(code)
}

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("restoring needs root (clone3 set_tid, ptrace)")
	}
}

// startWorkload runs argv with stdin, stdout and stderr on one /dev/null
// file (no pipes: the dumper handles regular files and devices only); see
// testutil.Start.
func startWorkload(t testing.TB, log, ready string, argv ...string) *testutil.Proc {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = null, null, null
	return testutil.Start(t, cmd, log, ready)
}

var tickRe = regexp.MustCompile(`^tick (\d+)$`)

// ticks returns the tick numbers in the log, checking that they run
// 1, 2, 3 … without a gap or duplicate.
func ticks(t testing.TB, file string) int {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		m := tickRe.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		v, _ := strconv.Atoi(m[1])
		if v != n+1 {
			t.Fatalf("%s: tick %d after tick %d", file, v, n)
		}
		n = v
	}
	return n
}

// waitTicks waits until the log has more than n ticks.
func waitTicks(t testing.TB, file string, n int) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if m := ticks(t, file); m > n {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no tick after %d", file, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// dump dumps pid into dir with the dumper (killing it).
func dump(t testing.TB, pid int, dir string, mod func(*dumper.Options)) {
	t.Helper()
	o := dumper.Options{}
	o.Pid = pid
	o.ImagesDir = dir
	if mod != nil {
		mod(&o)
	}
	watch := time.AfterFunc(15*time.Second, func() {
		st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		wc, _ := os.ReadFile(fmt.Sprintf("/proc/%d/wchan", pid))
		fmt.Fprintf(os.Stderr, "dump of %d is slow; wchan %s; status:\n%s\n", pid, wc, st)
	})
	defer watch.Stop()
	if _, err := dumper.Dump(o, nil); err != nil {
		t.Fatalf("dump %d: %v", pid, err)
	}
}

// restore restores dir; the task is killed and reaped at test end unless
// waited for.
func restore(t testing.TB, dir string, mod func(*Options)) *Restorer {
	t.Helper()
	o := Options{}
	o.ImagesDir = dir
	if mod != nil {
		mod(&o)
	}
	r, err := Restore(o, nil)
	if err != nil {
		t.Fatalf("restore %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if !r.waited {
			_ = unix.Kill(r.PID(), unix.SIGKILL)
			r.Wait()
		}
	})
	return r
}

// finish sends SIGUSR1 and checks that the task exits 0 with "done".
func finish(t tb, r *Restorer, log string) string {
	t.Helper()
	if err := unix.Kill(r.PID(), unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	type res struct {
		code int
		err  error
	}
	c := make(chan res, 1)
	go func() { code, err := r.Wait(); c <- res{code, err} }()
	var got res
	select {
	case got = <-c:
	case <-time.After(20 * time.Second):
		_ = unix.Kill(r.PID(), unix.SIGKILL)
		got = <-c
		t.Fatalf("restored %d did not exit after SIGUSR1", r.PID())
	}
	b, _ := os.ReadFile(log)
	if got.err != nil || got.code != 0 {
		t.Fatalf("restored %d: exit %d, %v; log:\n%s", r.PID(), got.code, got.err, testutil.Tail(string(b)))
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	last := lines[len(lines)-1]
	if !strings.HasPrefix(last, "done ") {
		t.Fatalf("restored %d: last log line %q", r.PID(), last)
	}
	return last
}

// threadsOf lists the TIDs of pid.
func threadsOf(t testing.TB, pid int) []int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range ents {
		n, _ := strconv.Atoi(e.Name())
		out = append(out, n)
	}
	return out
}
