package restorer

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/dumper"
	"godwit/internal/opts"
)

func TestMain(m *testing.M) {
	// Descriptors our own parent leaked to us (a CI runner's pipes) would
	// leak on into the workloads, and the dumper refuses pipes.
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		for _, e := range ents {
			if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
				unix.CloseOnExec(fd)
			}
		}
	}
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
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

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// counterBin builds e2e/workloads/counter.c (dynamic and static) once.
func counterBin(t testing.TB, static bool) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "godwit-restorer-test")
		if buildErr != nil {
			return
		}
		src := filepath.Join("..", "e2e", "workloads", "counter.c")
		for _, v := range []struct {
			out   string
			extra []string
		}{{"counter", nil}, {"counter-static", []string{"-static"}}} {
			args := append([]string{"-O2", "-pthread", "-o", filepath.Join(buildDir, v.out), src}, v.extra...)
			if out, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
				buildErr = errors.New("gcc: " + err.Error() + ": " + string(out))
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	if static {
		return filepath.Join(buildDir, "counter-static")
	}
	return filepath.Join(buildDir, "counter")
}

// workload is a started program; it is killed and reaped at test end.
type workload struct {
	pid int
	log string
	cmd *exec.Cmd
}

func startWorkload(t testing.TB, log, ready string, argv ...string) *workload {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	// No pipes: the dumper handles regular files and devices only.
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = null, null, null
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Nobody waits for it while it may be traced: any thread of the
	// tracer's process that waits for a traced child consumes its ptrace
	// stops (the kernel reports them even without WUNTRACED).
	w := &workload{pid: cmd.Process.Pid, log: log, cmd: cmd}
	t.Cleanup(func() {
		if w.cmd != nil {
			_ = unix.Kill(w.pid, unix.SIGKILL)
			w.reaped(t)
		}
	})
	waitFor(t, log, ready, 10*time.Second)
	return w
}

// reaped waits until the original workload is gone (dumped and killed).
func (w *workload) reaped(t testing.TB) {
	t.Helper()
	if w.cmd == nil {
		return
	}
	// The dumper's tracer may have reaped it already (ECHILD then).
	done := make(chan struct{})
	go func() { w.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Errorf("workload %d did not exit", w.pid)
	}
	w.cmd = nil
}

// waitFor waits until file contains want.
func waitFor(t testing.TB, file, want string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		b, _ := os.ReadFile(file)
		if strings.Contains(string(b), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %q after %v; it holds:\n%s", file, want, limit, tail(string(b)))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func tail(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > 10 {
		l = l[len(l)-10:]
	}
	return strings.Join(l, "\n")
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
func dump(t testing.TB, pid int, dir string, mod func(*opts.Options)) {
	t.Helper()
	o := opts.New()
	o.Tree = pid
	o.ImagesDir = dir
	if mod != nil {
		mod(o)
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
func restore(t testing.TB, dir string, mod func(*opts.Options)) *Restorer {
	t.Helper()
	o := opts.New()
	o.ImagesDir = dir
	if mod != nil {
		mod(o)
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
func finish(t testing.TB, r *Restorer, log string) string {
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
		t.Fatalf("restored %d: exit %d, %v; log:\n%s", r.PID(), got.code, got.err, tail(string(b)))
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
