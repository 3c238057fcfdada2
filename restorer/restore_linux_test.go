package restorer

import (
	"errors"
	"fmt"
	"godwit/internal/actions"
	"godwit/internal/procfs"
	"godwit/internal/testutil"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// counterCase dumps a running counter, restores it, and checks it goes on.
func counterCase(t *testing.T, static bool, args ...string) {
	needRoot(t)
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	imgs := filepath.Join(dir, "img")
	argv := append([]string{testutil.CounterBin(t, static)}, args...)
	argv = append(argv, log)
	w := startWorkload(t, log, "tick 3", argv...)
	// SIGUSR2 before the dump: the handler count must survive.
	if err := unix.Kill(w.Pid, unix.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	time.Sleep(30 * time.Millisecond)
	origThreads := threadsOf(t, w.Pid)
	dump(t, w.Pid, imgs, nil)
	w.Reaped(t)
	before := ticks(t, log)

	r := restore(t, imgs, nil)
	if r.PID() != w.Pid {
		t.Fatalf("restored pid %d, want %d", r.PID(), w.Pid)
	}
	got := threadsOf(t, r.PID())
	slices.Sort(got)
	slices.Sort(origThreads)
	if !slices.Equal(got, origThreads) {
		t.Fatalf("restored threads %v, want %v", got, origThreads)
	}
	waitTicks(t, log, before+2)
	if err := unix.Kill(r.PID(), unix.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	time.Sleep(30 * time.Millisecond)
	last := finish(t, r, log)
	if !slices.Contains(strings.Fields(last), "usr2=2") {
		t.Fatalf("last line %q: want usr2=2", last)
	}
	ticks(t, log) // no gap, no duplicate
}

func TestRestoreCounterDynamic(t *testing.T) { counterCase(t, false) }

func TestRestoreCounterStatic(t *testing.T)        { counterCase(t, true) }
func TestRestoreCounterThreads(t *testing.T)       { counterCase(t, false, "-t", "16") }
func TestRestoreCounterStaticThreads(t *testing.T) { counterCase(t, true, "-t", "4", "-b", "futex") }
func TestRestoreCounterFutex(t *testing.T)         { counterCase(t, false, "-b", "futex") }
func TestRestoreCounterSpin(t *testing.T)          { counterCase(t, false, "-b", "spin") }

const pyWorkload = `
import hashlib, os, signal, sys, threading, time
log = open(sys.argv[1], 'a', buffering=1)
lock = threading.Lock()
shared, own, stop, usr2 = 0, [0] * 4, False, 0
def on_usr1(s, f):
    global stop
    stop = True
def on_usr2(s, f):
    global usr2
    usr2 += 1
signal.signal(signal.SIGUSR1, on_usr1)
signal.signal(signal.SIGUSR2, on_usr2)
data = bytearray(os.urandom(4 << 20))
digest = hashlib.sha256(data).hexdigest()
def worker(i):
    global shared
    while not stop:
        with lock:
            shared += 1
            own[i] += 1
        time.sleep(0.001)
ts = [threading.Thread(target=worker, args=(i,)) for i in range(int(sys.argv[2]))]
for t in ts:
    t.start()
log.write("ready pid=%d\n" % os.getpid())
n = 0
while not stop:
    n += 1
    log.write("tick %d\n" % n)
    time.sleep(0.01)
for t in ts:
    t.join()
ok = hashlib.sha256(data).hexdigest() == digest and sum(own) == shared
log.write(("done ticks=%d sum=%d usr2=%d\n" % (n, shared, usr2)) if ok else "BAD\n")
sys.exit(0 if ok else 3)
`

func pythonCase(t *testing.T, threads string) {
	needRoot(t)
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	script := filepath.Join(dir, "w.py")
	if err := os.WriteFile(script, []byte(pyWorkload), 0o644); err != nil {
		t.Fatal(err)
	}
	w := startWorkload(t, log, "tick 5", "/usr/bin/python3", script, log, threads)
	unix.Kill(w.Pid, unix.SIGUSR2)
	time.Sleep(50 * time.Millisecond)
	imgs := filepath.Join(dir, "img")
	dump(t, w.Pid, imgs, nil)
	w.Reaped(t)
	before := ticks(t, log)
	r := restore(t, imgs, nil)
	waitTicks(t, log, before+3)
	unix.Kill(r.PID(), unix.SIGUSR2)
	time.Sleep(50 * time.Millisecond)
	if last := finish(t, r, log); !strings.HasSuffix(last, "usr2=2") {
		t.Fatalf("last line %q: want usr2=2", last)
	}
	ticks(t, log)
}

func TestRestorePython(t *testing.T)          { pythonCase(t, "0") }
func TestRestorePythonThreading(t *testing.T) { pythonCase(t, "4") }

// TestRestoreTwice: dump → restore → dump → restore.
func TestRestoreTwice(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	w := startWorkload(t, log, "tick 3", testutil.CounterBin(t, false), "-t", "3", log)
	pid := w.Pid
	dump(t, pid, filepath.Join(dir, "1"), nil)
	w.Reaped(t)
	r := restore(t, filepath.Join(dir, "1"), nil)
	n := waitTicks(t, log, ticks(t, log)+2)
	// The restored task is our child, so the dumper's tracer (in this
	// process) reaps it when the dump kills it.
	dump(t, pid, filepath.Join(dir, "2"), nil)
	if code, err := r.Wait(); !errors.Is(err, unix.ECHILD) && code != 128+int(unix.SIGKILL) {
		t.Fatalf("first restored task: exit %d, %v; want killed by the dump", code, err)
	}
	r2 := restore(t, filepath.Join(dir, "2"), nil)
	if r2.PID() != pid {
		t.Fatalf("pid %d, want %d", r2.PID(), pid)
	}
	waitTicks(t, log, n+2)
	finish(t, r2, log)
	ticks(t, log)
}

// TestRestoreLeaveStopped: -s leaves the task stopped; SIGCONT resumes it.
func TestRestoreLeaveStopped(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	w := startWorkload(t, log, "tick 3", testutil.CounterBin(t, false), log)
	dump(t, w.Pid, filepath.Join(dir, "img"), nil)
	w.Reaped(t)
	n := ticks(t, log)
	r := restore(t, filepath.Join(dir, "img"), func(o *Options) { o.LeaveStopped = true })
	var st *procfs.Status
	for i := 0; i < 100; i++ {
		var err error
		if st, err = procfs.ReadStatus(r.PID()); err != nil {
			t.Fatal(err)
		}
		if st.State == 'T' {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st.State != 'T' || st.TracerPid != 0 {
		t.Fatalf("state %c tracer %d, want stopped and untraced", st.State, st.TracerPid)
	}
	time.Sleep(100 * time.Millisecond)
	if m := ticks(t, log); m != n {
		t.Fatalf("stopped task ticked: %d → %d", n, m)
	}
	unix.Kill(r.PID(), unix.SIGCONT)
	waitTicks(t, log, n+2)
	finish(t, r, log)
}

// TestRestoreScripts: pre-restore, pre-resume and post-restore scripts run
// in order, the last two with the restored PID.
func TestRestoreScripts(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	w := startWorkload(t, log, "tick 2", testutil.CounterBin(t, false), log)
	imgs := filepath.Join(dir, "img")
	dump(t, w.Pid, imgs, nil)
	w.Reaped(t)
	out := filepath.Join(dir, "scripts")
	o := Options{}
	o.ImagesDir = imgs
	sc := &actions.Scripts{Commands: []string{`echo "$CRTOOLS_SCRIPT_ACTION $CRTOOLS_INIT_PID" >> ` + out}}
	r, err := Restore(o, sc)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	want := fmt.Sprintf("pre-restore \npre-resume %d\npost-restore %d\n", w.Pid, w.Pid)
	if string(b) != want {
		t.Errorf("scripts ran as\n%s\nwant\n%s", b, want)
	}
	finish(t, r, log)
}

// TestRestorePreResumeFails: a failing pre-resume script kills the task,
// which is then gone (killed and reaped), and the error names the step.
func TestRestorePreResumeFails(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	w := startWorkload(t, log, "tick 2", testutil.CounterBin(t, false), "-t", "2", log)
	imgs := filepath.Join(dir, "img")
	dump(t, w.Pid, imgs, nil)
	w.Reaped(t)
	o := Options{}
	o.ImagesDir = imgs
	sc := &actions.Scripts{Commands: []string{`[ "$CRTOOLS_SCRIPT_ACTION" != pre-resume ]`}}
	_, err := Restore(o, sc)
	if err == nil || !strings.Contains(err.Error(), "pre-resume") {
		t.Fatalf("error %v, want one naming pre-resume", err)
	}
	if _, serr := os.Stat(fmt.Sprintf("/proc/%d", w.Pid)); serr == nil {
		t.Fatalf("pid %d still exists after the failed restore", w.Pid)
	}
	noChildren(t)
}
