package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Every fd kind round-trips with its state: queued pipe bytes (both ends,
// one end, a dup), pipe size and flags, eventfd counters and semaphore
// mode, a signalfd's mask, timerfds' clock, time left, interval and
// unread expirations (and one still firing), epoll sets (one inside
// another) reporting the right events. The program checks each itself.
func TestFDKindsDumpRestore(t *testing.T) {
	needRoot(t)
	// Under a reaper: fdkinds has a child, which must not stay a zombie
	// of a test runner that is PID 1.
	w := startTree(t, cWorkload(t, "fdkinds"))
	before := subtree(t, w.pid)
	t.Cleanup(func() {
		for p := range before {
			killAndForget(p)
		}
	})
	dir := w.dump(t)
	w.reapKilled(t)
	for p := range before {
		waitFor(t, fmt.Sprintf("pid %d to go", p), func() bool { return !pidExists(p) })
	}
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
	w := startTree(t, cWorkload(t, "fdkinds"))
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
		{"inet", `s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(); c = socket.socket(); c.connect(s.getsockname())`, "connections waiting in its accept queue", nil},
		{"accepted", `l = socket.socket(socket.AF_UNIX); l.bind("\0godwit-refused-%d" % os.getpid()); l.listen()
c = socket.socket(socket.AF_UNIX); c.connect("\0godwit-refused-%d" % os.getpid()); a, _ = l.accept()`, "connected through a bound name", nil},
		{"backlog", `l = socket.socket(socket.AF_UNIX); l.bind("\0godwit-refused-%d" % os.getpid()); l.listen()
c = socket.socket(socket.AF_UNIX); c.connect("\0godwit-refused-%d" % os.getpid())`, "connections waiting in its backlog", nil},
		{"rights", `p, q = socket.socketpair(); socket.send_fds(p, [b"x"], [0])`, "in flight", nil},
		{"inotify", `import ctypes; l = ctypes.CDLL(None); i = l.inotify_init(); open(sys.argv[1], "a").close(); l.inotify_add_watch(i, sys.argv[1].encode(), 2)`, "events not read yet", nil},
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

// File locks: without -l a held lock fails the dump; with it, flock, POSIX
// and OFD locks are restored, and another process still cannot take them.
func TestFileLocksDumpRestore(t *testing.T) {
	needRoot(t)
	const prog = `import fcntl, os, struct, sys, time
log = sys.argv[1]
a = open(log + ".lk1", "w+"); fcntl.flock(a, fcntl.LOCK_EX)
b = open(log + ".lk2", "w+"); fcntl.lockf(b, fcntl.LOCK_EX, 10, 5)
c = open(log + ".lk3", "w+")
fcntl.fcntl(c, 37, struct.pack("hhqqi", fcntl.F_RDLCK, 0, 0, 100, 0))  # F_OFD_SETLK
f = open(log, "a", buffering=1)
i = 0
while True:
    i += 1
    f.write("tick %d\n" % i)
    time.sleep(0.01)
`
	w := startWorkload(t, "/usr/bin/python3", "-c", prog)
	code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir())
	oneLineError(t, code, out, "dump with --file-locks (-l)")
	w.waitTicks(3)

	dir := w.dump(t, "-l")
	w.reapKilled(t)
	// Dead, its locks are gone: free to take now.
	for _, n := range []string{".lk1", ".lk2", ".lk3"} {
		checkLocked(t, w.log+n, false)
	}
	restore(t, w, dir, "-l")
	w.waitTicks(3)
	for _, n := range []string{".lk1", ".lk2", ".lk3"} {
		checkLocked(t, w.log+n, true)
	}
}

// checkLocked tries, from this process, the lock the workload holds on
// path (by its suffix) and reports whether it is taken by someone else.
func checkLocked(t *testing.T, path string, want bool) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	var got bool
	switch {
	case strings.HasSuffix(path, ".lk1"):
		err := unix.Flock(fd, unix.LOCK_SH|unix.LOCK_NB)
		got = err == unix.EWOULDBLOCK
		if err == nil {
			unix.Flock(fd, unix.LOCK_UN)
		}
	case strings.HasSuffix(path, ".lk2"):
		// POSIX locks: F_GETLK tells who holds 5..14 and that 20.. is free.
		fl := unix.Flock_t{Type: unix.F_RDLCK, Start: 7, Len: 1}
		if err := unix.FcntlFlock(f.Fd(), unix.F_GETLK, &fl); err != nil {
			t.Fatal(err)
		}
		got = fl.Type == unix.F_WRLCK && fl.Start == 5 && fl.Len == 10
		free := unix.Flock_t{Type: unix.F_WRLCK, Start: 20, Len: 1}
		if err := unix.FcntlFlock(f.Fd(), unix.F_GETLK, &free); err != nil || free.Type != unix.F_UNLCK {
			t.Errorf("%s: the range after the lock is taken too", path)
		}
	default:
		fl := unix.Flock_t{Type: unix.F_WRLCK, Start: 50, Len: 1}
		if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &fl); err != nil {
			t.Fatal(err)
		}
		got = fl.Type == unix.F_RDLCK && fl.Start == 0 && fl.Len == 100
	}
	if got != want {
		t.Errorf("%s: locked by the workload %v, want %v", path, got, want)
	}
}

// --inherit-fd: a program reading a pipe from outside its tree is restored
// with the caller's new pipe in place of the old one, named by the old
// pipe's inode, and reads what is written into the new one.
func TestInheritFDPipe(t *testing.T) {
	needRoot(t)
	const prog = `import sys, threading, time
log = open(sys.argv[1], "a", buffering=1)
def reader():
    for line in sys.stdin:
        log.write("got " + line)
threading.Thread(target=reader, daemon=True).start()
i = 0
while True:
    i += 1
    log.write("tick %d\n" % i)
    time.sleep(0.01)
`
	dirT := t.TempDir()
	w := &workload{t: t, log: filepath.Join(dirT, "log"), output: filepath.Join(dirT, "output"), waited: make(chan error, 1)}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pw.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(pr.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	w.cmd = exec.Command("/usr/bin/python3", "-c", prog, w.log)
	w.cmd.Stdin = pr
	w.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pr.Close()
	w.pid = w.cmd.Process.Pid
	go func() { w.waited <- w.cmd.Wait() }()
	t.Cleanup(func() { killAndForget(w.pid) })
	w.waitTicks(3)
	pw.Write([]byte("before\n"))
	w.waitTicks(3)

	dir := w.dump(t)
	w.reapKilled(t)
	npr, npw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer npw.Close()
	res := fmt.Sprintf("pipe[%d]", st.Ino)
	cmd := exec.Command(godwitBin, "restore", "-d", "-D", dir, "-v4", "-o", "restore.log", "--inherit-fd", "fd[3]:"+res)
	cmd.ExtraFiles = []*os.File{npr}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("restore --inherit-fd fd[3]:%s: %v\n%s\n%s", res, err, out, readFile(filepath.Join(dir, "restore.log")))
	}
	npr.Close()
	w.waitTicks(3)
	npw.Write([]byte("after\n"))
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(readFile(w.log), "got after\n") {
		if time.Now().After(deadline) {
			t.Fatalf("the restored program did not read from the inherited pipe\n%s", w.tail())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if strings.Count(readFile(w.log), "got before\n") != 1 {
		t.Errorf("the line read before the dump shows %d times", strings.Count(readFile(w.log), "got before\n"))
	}
}
