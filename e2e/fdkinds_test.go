package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/images"
	"godwit/internal/model/criuimg"
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
		{"dgram-by-name-queued", `l = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); l.bind("\0godwit-refused-%d" % os.getpid())
c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); c.bind("\0godwit-refused-c-%d" % os.getpid()); c.connect("\0godwit-refused-%d" % os.getpid())
l.sendto(b"x", "\0godwit-refused-c-%d" % os.getpid())`, "messages queued (their senders cannot be restored)", nil},
		{"backlog", `l = socket.socket(socket.AF_UNIX); l.bind("\0godwit-refused-%d" % os.getpid()); l.listen()
c = socket.socket(socket.AF_UNIX); c.connect("\0godwit-refused-%d" % os.getpid())`, "connections waiting in its backlog", nil},
		{"rights", `p, q = socket.socketpair(); socket.send_fds(p, [b"x"], [0])`, "in flight", nil},
		{"inotify", `import ctypes; l = ctypes.CDLL(None); i = l.inotify_init(); open(sys.argv[1], "a").close(); l.inotify_add_watch(i, sys.argv[1].encode(), 2)`, "events not read yet", nil},
		{"pty-unopened", `m = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY)`, "or not opened yet", nil},
		{"pty-queued", `import termios; m, sl = os.openpty(); a = termios.tcgetattr(sl); a[3] &= ~termios.ECHO
termios.tcsetattr(sl, termios.TCSANOW, a); os.write(m, b"typed\n")`, "bytes of input not read yet", nil},
		{"pty-output", `m, sl = os.openpty(); os.write(sl, b"written")`, "not read yet through the master", nil},
		{"proc-other", `p = open("/proc/1/status")`, "a /proc file of process 1, which is outside the tree", nil},
		{"pidfd-other", `p = os.pidfd_open(1)`, "pidfd of process 1, which is outside the tree", nil},
		{"fanotify-queued", `import ctypes; l = ctypes.CDLL(None); l.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
g = l.fanotify_init(3, 0); open(sys.argv[1], "a").close(); l.fanotify_mark(g, 1, 2, -100, sys.argv[1].encode())`, "bytes of events not read yet", nil},
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

// memfds round-trip with name, size, contents (holes kept), seals that
// still refuse writes, mode and offsets; the mappings and fds of one
// memfd, in parent and child, are one inode again (the child's writes
// through its mapping and fd show in the parent's); a private mapping
// keeps its own copy. The program checks each itself.
func TestMemfdDumpRestore(t *testing.T) {
	needRoot(t)
	w := startTree(t, cWorkload(t, "memfd"))
	before := subtree(t, w.pid)
	t.Cleanup(func() {
		for p := range before {
			killAndForget(p)
		}
	})
	if len(before) != 2 {
		t.Fatalf("want the program and its child, have %v", before)
	}
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

// A pty pair round-trips: the same /dev/pts number, termios, window size
// and packet mode; the child that leads a session of its own gets the
// pty back as its controlling terminal, with its group in the foreground,
// and so does its child, a member of that session; /dev/tty held by the
// leader reaches it; bytes pass both ways through the restored pair. The program checks
// each itself.
func TestPtyDumpRestore(t *testing.T) {
	needRoot(t)
	w := startTree(t, cWorkload(t, "pty"))
	var before map[int]taskInfo
	waitFor(t, "the session member", func() bool { before = subtree(t, w.pid); return len(before) == 3 })
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

// A shell job: a program whose standard streams are the slave of a pty
// held outside the tree (by the test, as a terminal emulator would) is
// refused without --shell-job; with it on both sides the restored program
// writes to the same /dev/pts/N, read on the test's master.
func TestPtyShellJob(t *testing.T) {
	needRoot(t)
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	pts := fmt.Sprintf("/dev/pts/%d", n)
	sl, err := os.OpenFile(pts, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer sl.Close()
	const prog = `import os, sys, time
f = open(sys.argv[1], "a", buffering=1)
i = 0
while True:
    i += 1
    f.write("tick %d\n" % i)
    if os.path.exists(sys.argv[1] + ".say"):
        os.write(1, b"said-on-the-terminal\n")
        os.unlink(sys.argv[1] + ".say")
    time.sleep(0.01)
`
	dir := t.TempDir()
	w := &workload{t: t, log: filepath.Join(dir, "log"), output: pts, waited: make(chan error, 1)}
	w.cmd = exec.Command("/usr/bin/python3", "-c", prog, w.log)
	w.cmd.Stdin, w.cmd.Stdout, w.cmd.Stderr = sl, sl, sl
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
	code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir())
	oneLineError(t, code, out, "--shell-job")
	w.waitTicks(3)
	img := w.dump(t, "--shell-job")
	w.reapKilled(t)
	// godwit in a session of its own, its own group's leader, which the
	// shell job joins (the test's group leader may be outside the pid
	// namespace, as in CI).
	r := restoreWith(t, w, img, func(c *exec.Cmd) { c.SysProcAttr = &syscall.SysProcAttr{Setsid: true} }, "--shell-job")
	w.waitTicks(3)
	if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/1", w.pid)); err != nil || l != pts {
		t.Fatalf("restored stdout is %q (%v), want %s", l, err, pts)
	}
	if err := os.WriteFile(w.log+".say", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	go func() {
		b := make([]byte, 256)
		var acc []byte
		for !strings.Contains(string(acc), "said-on-the-terminal") {
			k, err := m.Read(b)
			if err != nil {
				break
			}
			acc = append(acc, b[:k]...)
		}
		got <- string(acc)
	}()
	select {
	case s := <-got:
		if !strings.Contains(s, "said-on-the-terminal") {
			t.Fatalf("the terminal got %q", s)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("nothing came on the terminal\n%s", w.tail())
	}
	killAndForget(w.pid)
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
	}
}

// pidfds (of a live child, of a reaped child, of the task itself,
// non-blocking), namespace fds of the task's own namespaces and /proc
// files it opened round-trip: after the restore the live child's pidfd
// still kills that child, the reaped one's reports it gone, the namespace
// fds are the task's namespaces, and the /proc files read the restored
// task's state. The program checks each itself.
func TestPidfdNsProcDumpRestore(t *testing.T) {
	needRoot(t)
	const prog = `import os, select, signal, sys, time
log = sys.argv[1]
child = os.fork()
if child == 0:
    while True:
        signal.pause()
gone = os.fork()
if gone == 0:
    os._exit(0)
live = os.pidfd_open(child)
dead = os.pidfd_open(gone)
os.waitpid(gone, 0)
me = os.pidfd_open(os.getpid(), os.O_NONBLOCK)
net = os.open("/proc/self/ns/net", os.O_RDONLY)
uts = os.open("/proc/%d/ns/uts" % os.getpid(), os.O_RDONLY)
status = open("/proc/self/status")
meminfo = open("/proc/meminfo")
done = []
signal.signal(signal.SIGUSR1, lambda *a: done.append(1))
f = open(log, "a", buffering=1)
i = 0
while not done:
    i += 1
    f.write("tick %d\n" % i)
    time.sleep(0.01)
bad = []
def fdinfo(fd, key):
    for l in open("/proc/self/fdinfo/%d" % fd):
        if l.startswith(key + ":"):
            return l.split()[1]
if fdinfo(live, "Pid") != str(child): bad.append("live pidfd: Pid %s" % fdinfo(live, "Pid"))
if fdinfo(dead, "Pid") != "-1": bad.append("dead pidfd: Pid %s" % fdinfo(dead, "Pid"))
if select.select([dead], [], [], 0)[0] != [dead]: bad.append("dead pidfd: not readable")
try:
    signal.pidfd_send_signal(dead, 0)
    bad.append("dead pidfd: signal sent")
except ProcessLookupError:
    pass
if fdinfo(me, "Pid") != str(os.getpid()) or not os.get_blocking(me) is False: bad.append("own pidfd")
signal.pidfd_send_signal(live, signal.SIGTERM)
_, st = os.waitpid(child, 0)
if not os.WIFSIGNALED(st) or os.WTERMSIG(st) != signal.SIGTERM: bad.append("live pidfd: child status %#x" % st)
for fd, n in ((net, "net"), (uts, "uts")):
    if os.fstat(fd).st_ino != os.stat("/proc/self/ns/" + n).st_ino: bad.append(n + " fd: another namespace")
status.seek(0)
if "Pid:\t%d\n" % os.getpid() not in status.read(): bad.append("/proc/self/status: another task")
meminfo.seek(0)
if "MemTotal" not in meminfo.read(): bad.append("/proc/meminfo")
for b in bad:
    f.write("FAIL: %s\n" % b)
f.write("done %s\n" % ("FAILED" if bad else "ok"))
sys.exit(3 if bad else 0)
`
	w := startTree(t, "/usr/bin/python3", "-c", prog)
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
	if !strings.Contains(readFile(w.log), "done ok\n") {
		t.Fatalf("no ok in the log\n%s", w.tail())
	}
}

// A pidfd of a reaped process that exited with another status than 0 is
// refused by name: the kernel still reports that status through the
// pidfd (PIDFD_GET_INFO), and the restore's stand-in exits 0. The program
// runs on after the refused dump.
func TestPidfdGoneStatusRefused(t *testing.T) {
	needRoot(t)
	const prog = `import os, sys, time
gone = os.fork()
if gone == 0:
    os._exit(7)
dead = os.pidfd_open(gone)
os.waitpid(gone, 0)
f = open(sys.argv[1], "a", buffering=1)
i = 0
while True:
    i += 1
    f.write("tick %d\n" % i)
    time.sleep(0.01)
`
	w := startTree(t, "/usr/bin/python3", "-c", prog)
	t.Cleanup(func() { killAndForget(w.pid) })
	w.waitTicks(2)
	code, msg := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir())
	oneLineError(t, code, msg, "pidfd of a reaped process with wait status 0x700")
	w.waitTicks(3)
}

// A fanotify group round-trips: its fdinfo (group flags, event flags,
// every mark with its masks and flags) reads the same after the restore,
// and it still reports a write to the marked file, ignores its opens, and
// reports a read-only close on the marked mount. The program checks
// each itself.
func TestFanotifyDumpRestore(t *testing.T) {
	needRoot(t)
	mnt := t.TempDir()
	if err := unix.Mount(mnt, mnt, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	for _, n := range []string{"watched", "other"} {
		if err := os.WriteFile(filepath.Join(mnt, n), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	const prog = `import ctypes, os, signal, struct, sys, time
mnt, log = sys.argv[1], sys.argv[2]
l = ctypes.CDLL(None, use_errno=True)
l.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
g = l.fanotify_init(3, os.O_RDONLY | os.O_LARGEFILE)  # FAN_CLOEXEC | FAN_NONBLOCK
assert g >= 0
watched = os.path.join(mnt, "watched")
assert l.fanotify_mark(g, 1, 2 | 8, -100, watched.encode()) == 0  # ADD: MODIFY | CLOSE_WRITE
assert l.fanotify_mark(g, 1 | 0x20 | 0x40, 0x20, -100, watched.encode()) == 0  # ignored OPEN, surviving modify
assert l.fanotify_mark(g, 1 | 0x10, 0x10, -100, mnt.encode()) == 0  # MOUNT: CLOSE_NOWRITE
def marks():
    return sorted(x for x in open("/proc/self/fdinfo/%d" % g) if x.startswith("fanotify"))
before = marks()
done = []
signal.signal(signal.SIGUSR1, lambda *a: done.append(1))
f = open(log, "a", buffering=1)
i = 0
while not done:
    i += 1
    f.write("tick %d\n" % i)
    time.sleep(0.01)
bad = []
if marks() != before:
    bad.append("fdinfo %r, was %r" % (marks(), before))
with open(watched, "a") as w:
    w.write("y")
open(os.path.join(mnt, "other")).read()
seen = {}
for _ in range(100):
    try:
        b = os.read(g, 4096)
    except BlockingIOError:
        if 0x10 in seen:
            break
        time.sleep(0.01)
        continue
    o = 0
    while o < len(b):
        n, ver, _, ml, mask, fd, pid = struct.unpack_from("IBBHQii", b, o)
        if fd >= 0:
            os.close(fd)
        if pid == os.getpid():
            for bit in (2, 8, 0x10, 0x20):
                if mask & bit:
                    seen[bit] = seen.get(bit, 0) + 1
        o += n
for bit, what in ((2, "modify"), (8, "close-write"), (0x10, "close-nowrite on the mount")):
    if not seen.get(bit):
        bad.append("no %s event (saw %r)" % (what, seen))
if seen.get(0x20):
    bad.append("an ignored open was reported")
for b in bad:
    f.write("FAIL: %s\n" % b)
f.write("done %s\n" % ("FAILED" if bad else "ok"))
sys.exit(3 if bad else 0)
`
	w := startWorkload(t, "/usr/bin/python3", "-c", prog, mnt)
	dir := w.dump(t)
	w.reapKilled(t)
	r := restore(t, w, dir)
	w.waitTicks(3)
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("restored program exited %d\n%s\n%s", code, w.tail(), r.out.String())
	}
	if !strings.Contains(readFile(w.log), "done ok\n") {
		t.Fatalf("no ok in the log\n%s", w.tail())
	}
}

// Unix sockets whose peer is outside the tree: refused by name without an
// option; with --ext-unix-sk a datagram socket connected to the test's
// bound socket (as a program's to /dev/log) is connected to it again and
// its messages arrive; with --external unix[INO] an end of a socketpair
// whose other end is the test's is restored with its queued bytes and
// its peer gone (EOF after them).
func TestUnixExternalPeers(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	srvPath := filepath.Join(dir, "srv.sock")
	srv, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(srv)
	if err := unix.Bind(srv, &unix.SockaddrUnix{Name: srvPath}); err != nil {
		t.Fatal(err)
	}
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ours := os.NewFile(uintptr(sp[0]), "pair")
	defer ours.Close()
	theirs := os.NewFile(uintptr(sp[1]), "pair")
	const prog = `import os, signal, socket, sys, time
srv, log = sys.argv[1], sys.argv[2]
d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
d.connect(srv)
p = socket.socket(fileno=3)
done = []
signal.signal(signal.SIGUSR1, lambda *a: done.append(1))
f = open(log, "a", buffering=1)
i = 0
while not done:
    i += 1
    f.write("tick %d\n" % i)
    time.sleep(0.01)
bad = []
d.send(b"after-restore")
got = b""
p.settimeout(5)
while True:
    b = p.recv(100)
    if not b:
        break
    got += b
if got != b"from-test":
    bad.append("pair: read %r before EOF" % got)
for b in bad:
    f.write("FAIL: %s\n" % b)
f.write("done %s\n" % ("FAILED" if bad else "ok"))
sys.exit(3 if bad else 0)
`
	w := &workload{t: t, log: filepath.Join(dir, "log"), output: filepath.Join(dir, "output"), waited: make(chan error, 1)}
	out, err := os.Create(w.output)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	w.cmd = exec.Command("/usr/bin/python3", "-c", prog, srvPath, w.log)
	w.cmd.Stdout, w.cmd.Stderr = out, out
	w.cmd.ExtraFiles = []*os.File{theirs}
	w.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	theirs.Close()
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
	if _, err := ours.Write([]byte("from-test")); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/fd/3", w.pid), &st); err != nil {
		t.Fatal(err)
	}
	code, msg := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir())
	oneLineError(t, code, msg, "is outside the tree: dump with --ext-unix-sk")
	code, msg = godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir(), "--external", fmt.Sprintf("unix[%d]", st.Ino))
	oneLineError(t, code, msg, "bound to "+srvPath+") is outside the tree")
	w.waitTicks(3)
	img := w.dump(t, "--ext-unix-sk")
	w.reapKilled(t)
	ours.Close() // the peer of the program's pair end: gone now
	r := restore(t, w, img)
	w.waitTicks(3)
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("restored program exited %d\n%s\n%s", code, w.tail(), r.out.String())
	}
	if !strings.Contains(readFile(w.log), "done ok\n") {
		t.Fatalf("no ok in the log\n%s", w.tail())
	}
	b := make([]byte, 100)
	n, err := unix.Read(srv, b)
	if err != nil || string(b[:n]) != "after-restore" {
		t.Fatalf("the test's socket got %q (%v), want after-restore", b[:n], err)
	}
}

// Connections a listener of the tree accepted round-trip: a stream one on
// a path (its client bound to a name of its own) and a seqpacket one on an
// abstract name whose client is in a child, with bytes queued both ways;
// and a datagram socket connected to another by its name.
// After the restore the ends have the names they had, the queued bytes
// and messages are there, bytes still pass, and the listeners accept new
// connections. The program checks each itself.
func TestUnixAcceptedDumpRestore(t *testing.T) {
	needRoot(t)
	const prog = `import os, signal, socket, sys, time
log = sys.argv[1]
path = log + ".sock"
abstract = "\0godwit-accepted-%d" % os.getpid()
l = socket.socket(socket.AF_UNIX); l.bind(path); l.listen(4)
c = socket.socket(socket.AF_UNIX); c.bind(log + ".client"); c.connect(path)
a, _ = l.accept()
c.send(b"to-server"); a.send(b"to-client")
q = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); q.bind(abstract); q.listen(4)
child = os.fork()
if child == 0:
    k = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); k.connect(abstract)
    k.send(b"m1"); k.send(b"m22")
    signal.signal(signal.SIGUSR1, lambda *a: None)
    signal.pause()
    got = k.recv(100)
    os._exit(0 if got == b"reply" and k.getpeername() == abstract.encode() else 9)
qa, _ = q.accept()
ds = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); ds.bind(abstract + "-d")
d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); d.connect(abstract + "-d")
time.sleep(0.1)
done = []
signal.signal(signal.SIGUSR1, lambda *a: done.append(1))
f = open(log, "a", buffering=1)
i = 0
while not done:
    i += 1
    f.write("tick %d\n" % i)
    time.sleep(0.01)
bad = []
if a.getsockname() != path or c.getpeername() != path or c.getsockname() != log + ".client":
    bad.append("names: %r %r %r" % (a.getsockname(), c.getpeername(), c.getsockname()))
if a.recv(100) != b"to-server" or c.recv(100) != b"to-client":
    bad.append("stream: queued bytes")
c.send(b"again"); 
if a.recv(100) != b"again":
    bad.append("stream: bytes after restore")
if qa.recv(100) != b"m1" or qa.recv(100) != b"m22":
    bad.append("seqpacket: queued messages")
if qa.getsockname() != abstract.encode():
    bad.append("seqpacket: name %r" % qa.getsockname())
qa.send(b"reply")
os.kill(child, signal.SIGUSR1)
_, st = os.waitpid(child, 0)
if st != 0:
    bad.append("child: status %#x" % st)
n = socket.socket(socket.AF_UNIX); n.connect(path); b, _ = l.accept()
n.send(b"new")
if b.recv(100) != b"new":
    bad.append("listener: new connection")
d.send(b"dgram")
if ds.recv(100) != b"dgram" or d.getpeername() != abstract.encode() + b"-d":
    bad.append("datagram socket connected by name")
for b in bad:
    f.write("FAIL: %s\n" % b)
f.write("done %s\n" % ("FAILED" if bad else "ok"))
sys.exit(3 if bad else 0)
`
	w := startTree(t, "/usr/bin/python3", "-c", prog)
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
	if !strings.Contains(readFile(w.log), "done ok\n") {
		t.Fatalf("no ok in the log\n%s", w.tail())
	}
}

// The images of the new fd kinds (memfd.img and its shmem pages, TTY
// entries and tty-info.img, fanotify, pidfd and namespace entries) keep
// CRIU 4.x's invariants, and Debian's crit reads every one of them. Dumps
// with -R: the programs run on, and check themselves after.
func TestFDKindImagesForCRIU(t *testing.T) {
	needRoot(t)
	check := func(t *testing.T, dir string, explore bool) {
		d, err := images.Open(dir, false)
		if err != nil {
			t.Fatal(err)
		}
		err = criuimg.CheckCRIU(d)
		d.Close()
		if err != nil {
			t.Error(err)
		}
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			n := e.Name()
			if !strings.HasSuffix(n, ".img") || strings.HasPrefix(n, "pages-") || strings.HasPrefix(n, "godwit-") {
				continue
			}
			if out, err := exec.Command("crit", "show", filepath.Join(dir, n)).CombinedOutput(); err != nil {
				t.Errorf("crit show %s: %v\n%s", n, err, out)
			}
		}
		if !explore {
			return
		}
		if out, err := exec.Command("crit", "x", dir, "fds").CombinedOutput(); err != nil {
			t.Errorf("crit x fds: %v\n%s", err, out)
		}
	}
	for _, name := range []string{"memfd", "pty"} {
		t.Run(name, func(t *testing.T) {
			w := startTree(t, cWorkload(t, name))
			before := subtree(t, w.pid)
			t.Cleanup(func() {
				for p := range before {
					killAndForget(p)
				}
			})
			dir := w.dump(t, "-R")
			for _, want := range map[string][]string{"memfd": {"memfd.img"}, "pty": {"tty-info.img"}}[name] {
				if _, err := os.Stat(filepath.Join(dir, want)); err != nil {
					t.Errorf("no %s: %v", want, err)
				}
			}
			check(t, dir, true)
			w.finishOriginal(t, "after dump -R")
		})
	}
	t.Run("pidfd-ns-fanotify", func(t *testing.T) {
		const prog = `import ctypes, os, sys, time
l = ctypes.CDLL(None)
g = l.fanotify_init(3, 0)
open(sys.argv[1] + ".w", "w").close()
l.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
assert l.fanotify_mark(g, 1, 8, -100, (sys.argv[1] + ".w").encode()) == 0
me = os.pidfd_open(os.getpid())
net = os.open("/proc/self/ns/net", os.O_RDONLY)
f = open(sys.argv[1], "a", buffering=1)
i = 0
while True:
    i += 1
    f.write("tick %d\n" % i)
    time.sleep(0.01)
`
		w := startWorkload(t, "/usr/bin/python3", "-c", prog)
		// Debian's crit (3.17) shows the PIDFD entry but predates it:
		// its fd explorer stops there.
		check(t, w.dump(t, "-R"), false)
	})
}

// A session whose controlling terminal is a pty of the tree, with one
// member that has it and one that gave it up (TIOCNOTTY), is refused by
// name (the restore gives it to every member, who inherit it from the
// leader), and the tree runs on.
func TestPtySessionMemberRefused(t *testing.T) {
	needRoot(t)
	const prog = `import os, sys, time, fcntl, termios
m, sl = os.openpty()
if os.fork() == 0:
    os.setsid()
    t = os.open(os.ttyname(sl), os.O_RDWR)
    if os.fork() != 0 and os.fork() == 0:
        fcntl.ioctl(t, termios.TIOCNOTTY)
    while True:
        time.sleep(1)
f = open(sys.argv[1], "a", buffering=1)
i = 0
while True:
    i += 1
    f.write("tick %d\n" % i)
    time.sleep(0.01)
`
	w := startTree(t, "/usr/bin/python3", "-c", prog)
	var before map[int]taskInfo
	waitFor(t, "the session and its members", func() bool { before = subtree(t, w.pid); return len(before) == 4 })
	t.Cleanup(func() {
		for p := range before {
			killAndForget(p)
		}
	})
	waitFor(t, "a member to give its terminal up", func() bool {
		for p, ti := range before {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
			f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
			if p != w.pid && p != ti.Sid && len(f) > 4 && f[4] == "0" {
				return true
			}
		}
		return false
	})
	code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir())
	oneLineError(t, code, out, "without its controlling terminal")
	w.waitTicks(3)
	if after := subtree(t, w.pid); !reflect.DeepEqual(after, before) {
		t.Fatalf("after a refused dump the tree is %v, was %v", after, before)
	}
}

// bash -i on a pty the test holds (as a terminal emulator), leading its
// session with the pty as its terminal: dumped and restored with
// --shell-job, it still runs what is typed on the test's master.
func TestBashOnPtyShellJob(t *testing.T) {
	needRoot(t)
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	sl, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer sl.Close()
	// Everything the terminal shows, read as it comes.
	var mu sync.Mutex
	var screen []byte
	go func() {
		b := make([]byte, 4096)
		for {
			k, err := m.Read(b)
			if err != nil {
				return
			}
			mu.Lock()
			screen = append(screen, b[:k]...)
			mu.Unlock()
		}
	}()
	shows := func(s string) bool {
		mu.Lock()
		defer mu.Unlock()
		return strings.Contains(string(screen), s)
	}
	dir := t.TempDir()
	w := &workload{t: t, log: filepath.Join(dir, "log"), waited: make(chan error, 1)}
	w.cmd = exec.Command("/bin/bash", "--norc", "--noprofile", "-i")
	w.cmd.Env = []string{"PS1=bash$ ", "PATH=/usr/bin:/bin", "TERM=dumb"}
	w.cmd.Stdin, w.cmd.Stdout, w.cmd.Stderr = sl, sl, sl
	w.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
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
	typeIn := func(s string) {
		if _, err := m.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	typeIn("echo before-$((6*7))\n")
	waitFor(t, "bash to answer", func() bool { return shows("before-42") })
	waitFor(t, "bash to wait for input", func() bool { return shows("before-42\r\nbash$ ") })
	img := t.TempDir()
	code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", img, "--shell-job", "-v4", "-o", "dump.log")
	if code != 0 {
		t.Fatalf("dump: %s\n%s", out, readFile(filepath.Join(img, "dump.log")))
	}
	w.reapKilled(t)
	r := &restoring{done: make(chan error, 1)}
	r.cmd = exec.Command(godwitBin, "restore", "-D", img, "--shell-job", "-v4", "-o", "restore.log")
	r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.out
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
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
	waitFor(t, "the restored bash to run", func() bool {
		select {
		case err := <-r.done:
			t.Fatalf("restore exited early: %v: %s\n%s", err, r.out.String(), readFile(filepath.Join(img, "restore.log")))
		default:
		}
		return alive(w.pid) && tracerOf(w.pid) == 0
	})
	typeIn("echo after-$((7*6))\n")
	waitFor(t, "the restored bash to answer", func() bool { return shows("after-42") })
}

// A session whose leader has a pty of the tree as its controlling
// terminal (slave only), a member sharing it, and a member holding the
// master that writes to it: the leader's restore must not take the
// session terminal's master from the tasks to come (its close at the
// leader's end hung the terminal up, and a new pty was made for the
// master's holder). After the restore the leader still reads, on its
// terminal, what the master's holder writes.
//
// The holder writes one byte per SIGUSR1, and the test dumps only once the
// leader has read every byte: a byte still in the terminal's input would
// make the dump refuse (a tty cannot be peeked), depending on timing.
func TestPtySessionMasterInMember(t *testing.T) {
	needRoot(t)
	const prog = `import os, signal, sys, time, tty
log = open(sys.argv[1], "a", buffering=1)
m, sl = os.openpty()
tty.setraw(sl)
name = os.ttyname(sl)
if os.fork() == 0:
    os.setsid()
    t = os.open(name, os.O_RDWR)  # the session's terminal
    os.close(sl)
    if os.fork() == 0:  # holds the master, writes to it
        os.close(t)
        signal.signal(signal.SIGUSR1, lambda *a: os.write(m, b"p"))
        log.write("writer %d\n" % os.getpid())
        while True:
            signal.pause()
    os.close(m)
    if os.fork() == 0:  # shares the terminal
        while True:
            time.sleep(1)
    while True:
        try:
            b = os.read(t, 64)
        except OSError as e:
            log.write("error %s\n" % e)
            time.sleep(0.1)
            continue
        log.write("got %d\n" % len(b) if b else "hangup\n")
        if not b:
            time.sleep(0.1)
os.close(m)
os.close(sl)
i = 0
while True:
    i += 1
    log.write("tick %d\n" % i)
    time.sleep(0.01)
`
	w := startTree(t, "/usr/bin/python3", "-c", prog)
	var before map[int]taskInfo
	waitFor(t, "the session and its members", func() bool { before = subtree(t, w.pid); return len(before) == 4 })
	t.Cleanup(func() {
		for p := range before {
			killAndForget(p)
		}
	})
	log := func() string { b, _ := os.ReadFile(w.log); return string(b) }
	writerRE := regexp.MustCompile(`(?m)^writer (\d+)$`)
	var writer int
	waitFor(t, "the master's holder", func() bool {
		m := writerRE.FindStringSubmatch(log())
		if m != nil {
			writer, _ = strconv.Atoi(m[1])
		}
		return writer != 0
	})
	gotRE := regexp.MustCompile(`(?m)^got (\d+)$`)
	got := func() int {
		n := 0
		for _, m := range gotRE.FindAllStringSubmatch(log(), -1) {
			v, _ := strconv.Atoi(m[1])
			n += v
		}
		return n
	}
	// Bytes written one at a time, each read before the next goes.
	written := 0
	write := func(what string, n int) {
		t.Helper()
		for range n {
			if err := unix.Kill(writer, unix.SIGUSR1); err != nil {
				t.Fatal(err)
			}
			written++
			waitFor(t, what, func() bool { return got() >= written })
		}
	}
	write("the leader to read its terminal", 3)
	dir := w.dump(t)
	w.reapKilled(t)
	restore(t, w, dir)
	write("the restored leader to read its terminal", 3)
	if l := log(); strings.Contains(l, "hangup") || strings.Contains(l, "error") {
		t.Fatalf("the session's terminal was hung up:\n%s", l)
	}
	if n := got(); n != written {
		t.Errorf("the leader read %d bytes, the holder wrote %d", n, written)
	}
	if after := subtree(t, w.pid); len(after) != 4 {
		t.Fatalf("restored tree %v, was %v", after, before)
	}
}
