// Package e2e checkpoints and restores real programs with the godwit
// binary, and checks what the restored programs say about themselves.
package e2e

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"godwit/internal/testutil"
)

var (
	godwitBin string            // built once by TestMain
	workloads map[string]string // name → executable
)

func TestMain(m *testing.M) {
	// Descriptors this test binary inherited (from a CI runner or a shell)
	// would leak into every workload and make its dump fail on a foreign
	// fd; the programs under test get only their standard streams.
	testutil.CloseInheritedFDs()
	if os.Geteuid() != 0 {
		fmt.Println("e2e: skipped: checkpoint/restore needs root (ptrace of other processes, clone3 set_tid)")
		os.Exit(m.Run()) // every test skips itself too
	}
	dir, err := os.MkdirTemp("", "godwit-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		if err := build(dir); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: build:", err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

// build compiles godwit and the C workloads (dynamic and static).
func build(dir string) error {
	godwitBin = filepath.Join(dir, "godwit")
	run := func(name string, args ...string) error {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s %v: %v\n%s", name, args, err, out)
		}
		return nil
	}
	if err := run("go", "build", "-o", godwitBin, "../cmd/godwit"); err != nil {
		return err
	}
	workloads = map[string]string{
		"counter":        filepath.Join(dir, "counter"),
		"counter-static": filepath.Join(dir, "counter-static"),
	}
	if err := run("gcc", "-O2", "-Wall", "-pthread", "-o", workloads["counter"], "workloads/counter.c"); err != nil {
		return err
	}
	return run("gcc", "-O2", "-Wall", "-static", "-pthread", "-o", workloads["counter-static"], "workloads/counter.c")
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: checkpoint/restore ptraces other processes and makes tasks with chosen PIDs")
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && i+2 < len(b) && b[i+2] != 'Z' && b[i+2] != 'X'
}

// killAndForget kills pid (a process of a test) and waits, bounded, until
// /proc/PID is gone. Processes that are not our children are reaped by
// their parent (godwit restore, or init).
func killAndForget(pid int) {
	if pid <= 1 {
		return
	}
	syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 500 && pidExists(pid); i++ {
		time.Sleep(10 * time.Millisecond)
	}
}

func pidExists(pid int) bool {
	_, err := os.Stat("/proc/" + strconv.Itoa(pid))
	return err == nil
}

// tracerOf returns pid's TracerPid (-1 if pid is gone).
func tracerOf(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return -1
	}
	for _, ln := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(ln, "TracerPid:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return -1
}

// procState returns the state letter of pid and its tracer.
func procState(t *testing.T, pid int) (state string, tracer int) {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatalf("status of %d: %v", pid, err)
	}
	for _, ln := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(ln, "State:"); ok {
			state = strings.Fields(v)[0]
		}
		if v, ok := strings.CutPrefix(ln, "TracerPid:"); ok {
			tracer, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return state, tracer
}

// workload is a program under test. Its standard streams are /dev/null and
// a regular file, which godwit restores.
type workload struct {
	t      *testing.T
	cmd    *exec.Cmd
	pid    int
	log    string
	output string
	waited chan error
}

func startWorkload(t *testing.T, argv ...string) *workload {
	t.Helper()
	dir := t.TempDir()
	w := &workload{t: t, log: filepath.Join(dir, "log"), output: filepath.Join(dir, "output"), waited: make(chan error, 1)}
	out, err := os.Create(w.output)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	w.cmd = exec.Command(argv[0], append(argv[1:], w.log)...)
	w.cmd.Stdout, w.cmd.Stderr = out, out
	w.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.pid = w.cmd.Process.Pid
	go func() { w.waited <- w.cmd.Wait() }()
	t.Cleanup(func() {
		killAndForget(w.pid)
		select {
		case <-w.waited:
		case <-time.After(5 * time.Second):
		}
	})
	w.waitTicks(3)
	return w
}

func startC(t *testing.T, static bool, args ...string) *workload {
	name := "counter"
	if static {
		name = "counter-static"
	}
	return startWorkload(t, append([]string{workloads[name]}, args...)...)
}

func startPython(t *testing.T, args ...string) *workload {
	return startWorkload(t, append([]string{"/usr/bin/python3", "workloads/counter.py"}, args...)...)
}

var tickRE = regexp.MustCompile(`^tick (\d+)$`)

// ticks returns the tick numbers in the log, in order.
func (w *workload) ticks() []int {
	f, err := os.Open(w.log)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m := tickRE.FindStringSubmatch(sc.Text()); m != nil {
			n, _ := strconv.Atoi(m[1])
			out = append(out, n)
		}
	}
	return out
}

// waitTicks waits until the log holds at least n ticks more than now.
func (w *workload) waitTicks(n int) {
	w.t.Helper()
	start := len(w.ticks())
	deadline := time.Now().Add(20 * time.Second)
	for len(w.ticks()) < start+n {
		if time.Now().After(deadline) {
			w.t.Fatalf("pid %d made no progress: log has %d ticks\n%s", w.pid, len(w.ticks()), w.tail())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (w *workload) tail() string {
	b, _ := os.ReadFile(w.log)
	if len(b) > 600 {
		b = b[len(b)-600:]
	}
	o, _ := os.ReadFile(w.output)
	return string(b) + "\n-- output --\n" + string(o)
}

// checkLog asserts what a run that was dumped, killed and restored must
// show: every tick exactly once and in order (none lost, none repeated),
// the closing "done" line, and LOG.seq holding word i = i+1 — which only
// holds if the file offset was restored.
func (w *workload) checkLog(wantUsr2 int) {
	w.t.Helper()
	ticks := w.ticks()
	for i, n := range ticks {
		if n != i+1 {
			w.t.Fatalf("tick %d at line %d: ticks lost or repeated across the restore\n%s", n, i+1, w.tail())
		}
	}
	b, err := os.ReadFile(w.log)
	if err != nil {
		w.t.Fatal(err)
	}
	want := fmt.Sprintf("done ticks=%d ", len(ticks))
	if !strings.Contains(string(b), want) {
		w.t.Fatalf("no %q in the log\n%s", want, w.tail())
	}
	if !regexp.MustCompile(fmt.Sprintf(` usr2=%d\b`, wantUsr2)).Match(b) {
		w.t.Errorf("SIGUSR2 handler count is not %d\n%s", wantUsr2, w.tail())
	}
	seq, err := os.ReadFile(w.log + ".seq")
	if err != nil {
		w.t.Fatal(err)
	}
	if len(seq) != 8*len(ticks) {
		w.t.Fatalf("%s.seq holds %d bytes, want %d", w.log, len(seq), 8*len(ticks))
	}
	for i := 0; i < len(ticks); i++ {
		if v := binary.NativeEndian.Uint64(seq[8*i:]); v != uint64(i+1) {
			w.t.Fatalf("%s.seq word %d = %d: the file offset was not restored", w.log, i, v)
		}
	}
}

// godwit runs the binary and returns its exit code and combined output.
func godwit(t *testing.T, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(godwitBin, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		}
		t.Fatalf("godwit %v: %v", args, err)
	}
	return 0, string(out)
}

// dump checkpoints w into a new directory and returns it.
func (w *workload) dump(t *testing.T, args ...string) string {
	t.Helper()
	dir := t.TempDir()
	code, out := godwit(t, append([]string{"dump", "-t", strconv.Itoa(w.pid), "-D", dir, "-v4", "-o", "dump.log"}, args...)...)
	if code != 0 {
		t.Fatalf("dump: exit %d: %s\n%s", code, out, readFile(filepath.Join(dir, "dump.log")))
	}
	return dir
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// finishOriginal asks the original (not restored) program to check itself
// and expects it to exit 0.
func (w *workload) finishOriginal(t *testing.T, what string) {
	t.Helper()
	syscall.Kill(w.pid, syscall.SIGUSR1)
	select {
	case err := <-w.waited:
		w.waited <- nil // let the cleanup's receive pass
		if err != nil {
			t.Fatalf("%s: the program failed its checks: %v\n%s", what, err, w.tail())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: the program did not finish", what)
	}
	for i := 0; i < 300 && pidExists(w.pid); i++ {
		time.Sleep(10 * time.Millisecond)
	}
}

// reapKilled waits for the original process, which dump killed.
func (w *workload) reapKilled(t *testing.T) {
	t.Helper()
	select {
	case err := <-w.waited:
		if ee, ok := err.(*exec.ExitError); !ok || ee.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("dump did not kill pid %d: %v", w.pid, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("pid %d still alive after dump", w.pid)
	}
	w.waited <- nil // let the cleanup's receive pass
	for i := 0; i < 300 && pidExists(w.pid); i++ {
		time.Sleep(10 * time.Millisecond)
	}
}

// restoring is a `godwit restore` running in the background (no -d): it
// waits for the restored process and exits with its status.
type restoring struct {
	cmd  *exec.Cmd
	out  bytes.Buffer
	done chan error
}

func restore(t *testing.T, w *workload, dir string, args ...string) *restoring {
	t.Helper()
	return restoreWith(t, w, dir, nil, args...)
}

// restoreWith is restore with setup, if not nil, given the command before
// it starts (its session, the fds it passes on).
func restoreWith(t *testing.T, w *workload, dir string, setup func(*exec.Cmd), args ...string) *restoring {
	t.Helper()
	r := &restoring{done: make(chan error, 1)}
	r.cmd = exec.Command(godwitBin, append([]string{"restore", "-D", dir, "-v4", "-o", "restore.log"}, args...)...)
	r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.out
	if setup != nil {
		setup(r.cmd)
	}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.done <- r.cmd.Wait() }()
	t.Cleanup(func() {
		killAndForget(w.pid)
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			r.cmd.Process.Kill()
		}
	})
	// The restore is complete once the program runs on its own again:
	// untraced, and ticking.
	ticks := len(w.ticks())
	deadline := time.Now().Add(30 * time.Second)
	for !(alive(w.pid) && tracerOf(w.pid) == 0 && len(w.ticks()) > ticks) {
		select {
		case err := <-r.done:
			t.Fatalf("restore exited early: %v: %s\n%s", err, r.out.String(), readFile(filepath.Join(dir, "restore.log")))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("restored pid %d did not resume\n%s", w.pid, readFile(filepath.Join(dir, "restore.log")))
		}
		time.Sleep(5 * time.Millisecond)
	}
	return r
}

// finish asks the restored program to check itself (SIGUSR1) and returns
// the exit status godwit restore passed on.
func (r *restoring) finish(t *testing.T, w *workload) int {
	t.Helper()
	if err := syscall.Kill(w.pid, syscall.SIGUSR1); err != nil {
		t.Fatalf("signal restored pid %d: %v", w.pid, err)
	}
	select {
	case err := <-r.done:
		r.done <- err
		if err == nil {
			return 0
		}
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		t.Fatalf("restore: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatalf("restored pid %d did not finish\n%s", w.pid, w.tail())
	}
	return -1
}
