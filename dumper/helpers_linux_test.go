package dumper

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"godwit/internal/opts"
	"godwit/internal/procfs"
)

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("dumping needs root (ptrace of any task, pagemap PFNs)")
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
		buildDir, buildErr = os.MkdirTemp("", "godwit-dumper-test")
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

// proc is a started workload.
type proc struct {
	cmd  *exec.Cmd
	pid  int
	log  string
	done chan error // nil until reap started
}

// reap starts waiting for the process (once) and returns the channel.
func (p *proc) reap() chan error {
	if p.done == nil {
		p.done = make(chan error, 1)
		go func() { p.done <- p.cmd.Wait() }()
	}
	return p.done
}

// start runs argv, cleaned up (killed and reaped) at test end. If ready is
// not "", it waits until the file log contains it.
func start(t testing.TB, log, ready string, argv ...string) *proc {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	// nil stdio: /dev/null, an fd kind the dumper supports.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, pid: cmd.Process.Pid, log: log}
	// No goroutine waits for it meanwhile: a wait by any thread of ours
	// would take the ptrace stops meant for the dumper's tracer thread.
	t.Cleanup(func() {
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
		select {
		case <-p.reap():
		case <-time.After(10 * time.Second):
			t.Errorf("pid %d not reaped", p.pid)
		}
	})
	if ready != "" {
		deadline := time.Now().Add(20 * time.Second)
		for {
			b, _ := os.ReadFile(log)
			if bytes.Contains(b, []byte(ready)) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%v: not ready; log: %s", argv, b)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return p
}

func startCounter(t testing.TB, static bool, args ...string) *proc {
	t.Helper()
	log := filepath.Join(t.TempDir(), "counter.log")
	argv := append([]string{counterBin(t, static)}, args...)
	argv = append(argv, log)
	return start(t, log, "ready pid=", argv...)
}

// wait waits for the process to exit and returns its exit status.
func (p *proc) wait(t testing.TB) int {
	t.Helper()
	select {
	case err := <-p.reap():
		p.done <- err // for Cleanup
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
		t.Fatalf("pid %d did not exit", p.pid)
	}
	return -1
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

func dumpOpts(pid int, dir string) *opts.Options {
	o := opts.New()
	o.Tree = pid
	o.ImagesDir = dir
	return o
}

func crit(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("crit", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("crit %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
