// Package testutil holds what the dumper's and the restorer's tests share:
// building the e2e/workloads C programs and starting workloads that are
// killed and reaped at test end. Only _test.go files import it.
package testutil

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// CloseInheritedFDs marks every fd above stderr close-on-exec, so that
// workloads started by the tests hold only the fds they open themselves
// (an fd leaked into `go test` by its caller, such as a CI runner's pipe,
// would otherwise make every dump fail on an unsupported fd kind). Call it
// from TestMain.
func CloseInheritedFDs() {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range ents {
		var fd int
		if _, err := fmt.Sscan(e.Name(), &fd); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// moduleRoot finds the directory holding go.mod above the working
// directory (go test runs in the package's directory).
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		up := filepath.Dir(dir)
		if up == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = up
	}
}

// CounterBin builds e2e/workloads/counter.c, dynamic and static, once per
// test binary, and returns the path of the one asked for. RemoveBuilds
// deletes them.
func CounterBin(t testing.TB, static bool) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		buildDir, buildErr = os.MkdirTemp("", "godwit-test")
		if buildErr != nil {
			return
		}
		src := filepath.Join(root, "e2e", "workloads", "counter.c")
		for _, v := range []struct {
			out   string
			extra []string
		}{{"counter", nil}, {"counter-static", []string{"-static"}}} {
			args := append([]string{"-O2", "-pthread", "-o", filepath.Join(buildDir, v.out), src}, v.extra...)
			if out, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("gcc %s: %w: %s", src, err, out)
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

var cBins sync.Map // name → path, built once per test binary

// cBin builds the C program src (relative to the module root) into the
// build directory once per test binary and returns its path.
func cBin(t testing.TB, name, src string) string {
	t.Helper()
	if p, ok := cBins.Load(name); ok {
		return p.(string)
	}
	CounterBin(t, false) // makes buildDir
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(buildDir, name)
	if b, err := exec.Command("gcc", "-O2", "-o", out, filepath.Join(root, src)).CombinedOutput(); err != nil {
		t.Fatalf("gcc %s: %v: %s", src, err, b)
	}
	cBins.Store(name, out)
	return out
}

// RemoveBuilds deletes what CounterBin built; call it from TestMain after
// m.Run.
func RemoveBuilds() {
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
}

// Proc is a started workload. It is killed and reaped at test end unless
// the test saw it exit.
type Proc struct {
	Cmd *exec.Cmd
	Pid int
	Log string

	done   chan error // nil until a wait started
	exited bool       // reaped: its PID may be reused, never signal it
}

// Start runs cmd in a session of its own (unless cmd asks for a group
// or session itself), so that it restores the same in any environment,
// including one where the test's session leader is outside its pid
// namespace; at test end it is killed and reaped. If ready is not "", it waits until the file log contains ready.
//
// Nothing waits for the process until the test asks (Wait, Reaped) or
// ends: any thread of the tracer's process that waits for a traced child
// takes the ptrace stops meant for the dumper's tracer thread.
func Start(t testing.TB, cmd *exec.Cmd, log, ready string) *Proc {
	t.Helper()
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	if a := cmd.SysProcAttr; !a.Setpgid && !a.Setsid {
		a.Setsid = true
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &Proc{Cmd: cmd, Pid: cmd.Process.Pid, Log: log}
	t.Cleanup(func() {
		if !p.exited {
			_ = unix.Kill(p.Pid, unix.SIGKILL)
			p.Reaped(t)
		}
	})
	if ready != "" {
		WaitFor(t, log, ready, 20*time.Second)
	}
	return p
}

// reap starts waiting for the process (once) and returns the channel.
func (p *Proc) reap() chan error {
	if p.done == nil {
		p.done = make(chan error, 1)
		go func() { p.done <- p.Cmd.Wait() }()
	}
	return p.done
}

// Wait waits for the process to exit and returns its exit status
// (128+signal if killed).
func (p *Proc) Wait(t testing.TB) int {
	t.Helper()
	select {
	case err := <-p.reap():
		p.exited = true
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				return 128 + int(ws.Signal())
			}
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(20 * time.Second):
		t.Fatalf("pid %d did not exit", p.Pid)
	}
	return -1
}

// Reaped waits until the process is gone (for instance dumped and
// killed). The dumper's tracer may have reaped it already; Wait's ECHILD
// is then fine.
func (p *Proc) Reaped(t testing.TB) {
	t.Helper()
	if p.exited {
		return
	}
	select {
	case <-p.reap():
		p.exited = true
	case <-time.After(10 * time.Second):
		t.Errorf("pid %d did not exit", p.Pid)
	}
}

// WaitFor waits until file contains want, failing the test after limit.
func WaitFor(t testing.TB, file, want string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		b, _ := os.ReadFile(file)
		if strings.Contains(string(b), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %q after %v; it holds:\n%s", file, want, limit, Tail(string(b)))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Tail gives the last 10 lines of s.
func Tail(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > 10 {
		l = l[len(l)-10:]
	}
	return strings.Join(l, "\n")
}

// FanoutBin builds e2e/workloads/fanout.c (a root and N-1 sleeping
// children, for tree benchmarks) once per test binary.
func FanoutBin(t testing.TB) string { return cBin(t, "fanout", "e2e/workloads/fanout.c") }

// ManyFDsBin builds e2e/workloads/manyfds.c once per test binary.
func ManyFDsBin(t testing.TB) string { return cBin(t, "manyfds", "e2e/workloads/manyfds.c") }
