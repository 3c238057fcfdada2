package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

var (
	cBins    = map[string]string{}
	cBuildMu sync.Mutex
	cBuildEr = map[string]error{}
)

// cWorkload compiles workloads/NAME.c once per test binary run.
func cWorkload(t *testing.T, name string) string {
	t.Helper()
	cBuildMu.Lock()
	defer cBuildMu.Unlock()
	if p, ok := cBins[name]; ok {
		if err := cBuildEr[name]; err != nil {
			t.Fatal(err)
		}
		return p
	}
	dir, err := os.MkdirTemp("", "godwit-e2e-"+name+"-")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	out, err := exec.Command("gcc", "-O2", "-Wall", "-Werror", "-o", p, "workloads/"+name+".c").CombinedOutput()
	cBins[name] = p
	if err != nil {
		cBuildEr[name] = err
		t.Fatalf("gcc %s: %v\n%s", name, err, out)
	}
	return p
}

// Every fd kind round-trips with its state: queued pipe bytes (both ends,
// one end, a dup), pipe size and flags, eventfd counters and semaphore
// mode, a signalfd's mask, timerfds' clock, time left, interval and
// unread expirations (and one still firing), epoll sets (one inside
// another) reporting the right events. The program checks each itself.
func TestFDKindsDumpRestore(t *testing.T) {
	needRoot(t)
	w := startWorkload(t, cWorkload(t, "fdkinds"))
	dir := w.dump(t)
	w.reapKilled(t)
	r := restore(t, w, dir)
	w.waitTicks(3)
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("restored program exited %d\n%s\n%s", code, w.tail(), r.out.String())
	}
	if !strings.Contains(readFile(w.log), " ok\n") {
		t.Fatalf("no ok in the log\n%s", w.tail())
	}
}

// Dumping peeks: with -R the original still holds every queued byte,
// counter and expiration afterwards.
func TestFDKindsDumpLeavesStateAlone(t *testing.T) {
	needRoot(t)
	w := startWorkload(t, cWorkload(t, "fdkinds"))
	w.dump(t, "-R")
	w.waitTicks(3)
	w.finishOriginal(t, "after dump -R")
	if !strings.Contains(readFile(w.log), " ok\n") {
		t.Fatalf("no ok in the log\n%s", w.tail())
	}
}

// What cannot be restored exactly is refused at dump with one line naming
// the fd and its kind, and the program runs on untouched.
func TestFDKindsRefused(t *testing.T) {
	needRoot(t)
	const ticker = `
f = open(sys.argv[1], "a", buffering=1)
i = 0
while True:
    i += 1
    f.write("tick %d\n" % i)
    time.sleep(0.01)
`
	for _, c := range []struct {
		name, setup, want string
		args              []string
	}{
		{"inet", `s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()`, "AF_INET sockets are not supported yet", nil},
		{"accepted", `l = socket.socket(socket.AF_UNIX); l.bind("\0godwit-refused-%d" % os.getpid()); l.listen()
c = socket.socket(socket.AF_UNIX); c.connect("\0godwit-refused-%d" % os.getpid()); a, _ = l.accept()`, "connected through a bound name", nil},
		{"backlog", `l = socket.socket(socket.AF_UNIX); l.bind("\0godwit-refused-%d" % os.getpid()); l.listen()
c = socket.socket(socket.AF_UNIX); c.connect("\0godwit-refused-%d" % os.getpid())`, "connections waiting in its backlog", nil},
		{"rights", `p, q = socket.socketpair(); socket.send_fds(p, [b"x"], [0])`, "in flight", nil},
		{"inotify", `import ctypes; ctypes.CDLL(None).inotify_init()`, "inotify is not supported yet", nil},
		{"ghost-limit", `g = open(sys.argv[1] + ".big", "wb+"); g.write(b"x" * 5000); g.flush(); os.unlink(g.name)`, "over --ghost-limit (4096)", []string{"--ghost-limit", "4K"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := startWorkload(t, "/usr/bin/python3", "-c", "import os, socket, sys, time\n"+c.setup+ticker)
			code, out := godwit(t, append([]string{"dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir()}, c.args...)...)
			oneLineError(t, code, out, c.want)
			if !strings.Contains(out, "fd ") {
				t.Errorf("the error does not name the fd: %s", out)
			}
			w.waitTicks(3)
			if state, tracer := procState(t, w.pid); tracer != 0 || state == "t" || state == "T" {
				t.Fatalf("after a refused dump: state %s, tracer %d", state, tracer)
			}
		})
	}
}

// A Go program (its runtime's epoll and eventfd, threads, a ticker
// feeding a goroutine's channel) goes on after a restore, losing no tick.
func TestGoProgramDumpRestore(t *testing.T) {
	needRoot(t)
	bin := filepath.Join(t.TempDir(), "goticker")
	if out, err := exec.Command("go", "build", "-o", bin, "./workloads/goticker").CombinedOutput(); err != nil {
		t.Fatalf("go build goticker: %v\n%s", err, out)
	}
	w := startWorkload(t, bin)
	dir := w.dump(t)
	w.reapKilled(t)
	r := restore(t, w, dir)
	w.waitTicks(10)
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("restored Go program exited %d\n%s", code, w.tail())
	}
	if !strings.Contains(readFile(w.log), " ok\n") {
		t.Fatalf("no ok in the log\n%s", w.tail())
	}
}
