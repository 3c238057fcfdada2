package e2e

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// leaseProg holds a read lease (on a read-only fd) and a write lease (on
// a read-write one), counts SIGIO (the lease-break signal) and reports
// F_GETLEASE on SIGUSR2; SIGUSR1 checks the leases are being broken
// (their target type), gives them up and exits.
const leaseProg = `import fcntl, os, signal, sys, time
log = sys.argv[1]
open(log + ".r", "w").write("read lease")
open(log + ".w", "w").write("write lease")
r = os.open(log + ".r", os.O_RDONLY); fcntl.fcntl(r, fcntl.F_SETLEASE, fcntl.F_RDLCK)
w = os.open(log + ".w", os.O_RDWR); fcntl.fcntl(w, fcntl.F_SETLEASE, fcntl.F_WRLCK)
sigio = []
signal.signal(signal.SIGIO, lambda *a: sigio.append(1))
rep = []
signal.signal(signal.SIGUSR2, lambda *a: rep.append(1))
done = []
signal.signal(signal.SIGUSR1, lambda *a: done.append(1))
f = open(log, "a", buffering=1)
f.write("fds %d %d\n" % (r, w))
i, seen = 0, 0
while not done:
    i += 1
    f.write("tick %d\n" % i)
    if len(sigio) != seen:
        seen = len(sigio)
        f.write("sigio %d\n" % seen)
    if rep:
        rep.clear()
        f.write("lease %d %d\n" % (fcntl.fcntl(r, fcntl.F_GETLEASE), fcntl.fcntl(w, fcntl.F_GETLEASE)))
    time.sleep(0.01)
got = (fcntl.fcntl(r, fcntl.F_GETLEASE), fcntl.fcntl(w, fcntl.F_GETLEASE))
fcntl.fcntl(r, fcntl.F_SETLEASE, fcntl.F_UNLCK); fcntl.fcntl(w, fcntl.F_SETLEASE, fcntl.F_UNLCK)
if got != (fcntl.F_UNLCK, fcntl.F_RDLCK):
    f.write("FAIL: leases while broken %r\n" % (got,))
    sys.exit(3)
f.write("done ok\n")
`

// waitLog waits for the log of w to match re, and returns the match.
func waitLog(t *testing.T, w *workload, re string) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	var m []string
	waitFor(t, fmt.Sprintf("%q in the log", re), func() bool {
		m = rx.FindStringSubmatch(readFile(w.log))
		return m != nil
	})
	return m
}

// breakLease opens path with flags (non-blocking) from the test, another
// process than the lease holder: the open must fail with EWOULDBLOCK,
// having started the lease break.
func breakLease(t *testing.T, path string, flags int) {
	t.Helper()
	fd, err := unix.Open(path, flags|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err == nil {
		unix.Close(fd)
		t.Fatalf("open %s (flags %#x) succeeded: no lease held", path, flags)
	}
	if !errors.Is(err, unix.EWOULDBLOCK) {
		t.Fatalf("open %s: %v, want EWOULDBLOCK (a lease)", path, err)
	}
}

// TestLeaseDumpRestore: a read lease and a write lease come back on
// their fds (F_GETLEASE and fdinfo the same), and another process's open
// breaks them: EWOULDBLOCK for it, SIGIO in the restored program.
func TestLeaseDumpRestore(t *testing.T) {
	needRoot(t)
	w := startWorkload(t, "/usr/bin/python3", "-c", leaseProg)
	m := waitLog(t, w, `fds (\d+) (\d+)\n`)
	fdinfo := func(fd string) string {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", w.pid, fd))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	want := map[string]string{m[1]: "LEASE  ACTIVE    READ ", m[2]: "LEASE  ACTIVE    WRITE "}
	for fd, l := range want {
		if !strings.Contains(fdinfo(fd), l) {
			t.Fatalf("before dump: fd %s: no %q in\n%s", fd, l, fdinfo(fd))
		}
	}
	code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir())
	oneLineError(t, code, out, "dump with --file-locks (-l)")
	w.waitTicks(3)

	dir := w.dump(t, "-l")
	w.reapKilled(t)
	r := restore(t, w, dir, "-l")
	w.waitTicks(3)
	for fd, l := range want {
		if !strings.Contains(fdinfo(fd), l) {
			t.Fatalf("after restore: fd %s: no %q in\n%s", fd, l, fdinfo(fd))
		}
	}
	if err := syscall.Kill(w.pid, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	waitLog(t, w, fmt.Sprintf(`lease %d %d\n`, unix.F_RDLCK, unix.F_WRLCK))
	if strings.Contains(readFile(w.log), "sigio") {
		t.Fatalf("SIGIO before any break\n%s", w.tail())
	}
	breakLease(t, w.log+".r", unix.O_WRONLY)
	waitLog(t, w, `sigio 1\n`)
	breakLease(t, w.log+".w", unix.O_RDONLY)
	waitLog(t, w, `sigio 2\n`)
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("restored program exited %d\n%s\n%s", code, w.tail(), r.out.String())
	}
	if !strings.Contains(readFile(w.log), "done ok\n") {
		t.Fatalf("no ok in the log\n%s", w.tail())
	}
}

// TestLeaseBreakingRefused: a lease whose break is pending (another
// process waits to open the file) fails the dump by name, and the
// program runs on untraced.
func TestLeaseBreakingRefused(t *testing.T) {
	needRoot(t)
	w := startWorkload(t, "/usr/bin/python3", "-c", leaseProg)
	waitLog(t, w, `fds (\d+) (\d+)\n`)
	breakLease(t, w.log+".r", unix.O_WRONLY)
	waitLog(t, w, `sigio 1\n`)
	code, out := godwit(t, "dump", "-l", "-t", strconv.Itoa(w.pid), "-D", t.TempDir())
	oneLineError(t, code, out, "lease break pending")
	w.waitTicks(3)
	deadline := time.Now().Add(10 * time.Second)
	for tracerOf(w.pid) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still traced after the failed dump", w.pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st, _ := procState(t, w.pid); st == "t" || st == "T" {
		t.Fatalf("pid %d left stopped (%s)", w.pid, st)
	}
}
