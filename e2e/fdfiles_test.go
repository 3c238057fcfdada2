package e2e

import (
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The file fds whose state is easy to lose round-trip (fdfiles.c checks
// each itself): O_TMPFILE files (glibc's tmpfile(), and one with a hole
// and O_APPEND) come back unnamed, not linkable, with their contents,
// mode, offset and flags, the hole kept; O_PATH fds of a file and a
// directory; an absolute timerfd stays absolute; a fired EPOLLONESHOT
// registration stays disabled (no HUP either); deleted files sized by
// ftruncate only, held by an fd or only by a shared mapping, come back
// sized, all holes (fiemap or not).
func TestFDFilesDumpRestore(t *testing.T) {
	needRoot(t)
	for _, c := range []struct {
		name string
		args []string
	}{{"fiemap", nil}, {"no-fiemap", []string{"--no-ghost-fiemap"}}} {
		t.Run(c.name, func(t *testing.T) {
			w := startWorkload(t, cWorkload(t, "fdfiles"))
			dir := w.dump(t, c.args...)
			w.reapKilled(t)
			// The absolute timerfd's deadline must not move by the time
			// spent checkpointed: spend some.
			time.Sleep(2 * time.Second)
			r := restore(t, w, dir)
			w.waitTicks(3)
			if code := r.finish(t, w); code != 0 {
				t.Fatalf("restored program exited %d\n%s\n%s", code, w.tail(), r.out.String())
			}
			if !strings.Contains(readFile(w.log), " ok\n") {
				t.Fatalf("no ok in the log\n%s", w.tail())
			}
		})
	}
}

// A dump with -R leaves every one of them as it was (the probes of the
// one-shot's file and of the holes consume nothing).
func TestFDFilesDumpLeavesStateAlone(t *testing.T) {
	needRoot(t)
	w := startWorkload(t, cWorkload(t, "fdfiles"))
	w.dump(t, "-R")
	w.waitTicks(3)
	w.finishOriginal(t, "after dump -R")
	if !strings.Contains(readFile(w.log), " ok\n") {
		t.Fatalf("no ok in the log\n%s", w.tail())
	}
}

// Python's tempfile.TemporaryFile() (O_TMPFILE) comes back with its
// contents and offset, still unnamed.
func TestPythonTemporaryFileDumpRestore(t *testing.T) {
	needRoot(t)
	const prog = `
import os, signal, sys, tempfile, time
f = tempfile.TemporaryFile(dir=os.path.dirname(sys.argv[1]))
f.write(b"python-temp"); f.flush(); f.seek(3)
done = []
signal.signal(signal.SIGUSR1, lambda *a: done.append(1))
log = open(sys.argv[1], "a", buffering=1)
i = 0
while not done:
    i += 1
    log.write("tick %d\n" % i)
    time.sleep(0.01)
st = os.fstat(f.fileno())
ok = f.read() == b"hon-temp" and st.st_nlink == 0 and os.readlink("/proc/self/fd/%d" % f.fileno()).endswith(" (deleted)")
f.seek(0)
ok = ok and f.read() == b"python-temp"
log.write("done %s\n" % ("ok" if ok else "FAILED"))
sys.exit(0 if ok else 3)
`
	w := startWorkload(t, "/usr/bin/python3", "-c", prog)
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

// What cannot be restored exactly among files is refused at dump in one
// line naming the fd (or the cwd), and the program runs on untouched: a
// file, a directory or a cwd whose path now leads to another file (a
// mount over their directory, in the program's own mount namespace), a
// deleted file with extended attributes, a directory with a dnotify
// registration.
func TestFDFilesRefused(t *testing.T) {
	needRoot(t)
	const ticker = `
f = open(sys.argv[1], "a", buffering=1)
i = 0
while True:
    i += 1
    f.write("tick %d\n" % i)
    time.sleep(0.01)
`
	// Each mounts over a directory of its own, in its own mount
	// namespace (unshare -m, private): nothing outside sees the mount.
	const over = `d = os.path.join(os.path.dirname(sys.argv[1]), "d"); os.makedirs(d, exist_ok=True)
open(os.path.join(d, "f"), "w").write("ORIGINAL")
`
	const mount = `
subprocess.run(["mount", "-t", "tmpfs", "none", d], check=True)
open(os.path.join(d, "f"), "w").write("IMPOSTER")
`
	for _, c := range []struct {
		name, setup, want string
		fd, ownNS         bool
		names             string // what else the error must name
	}{
		{"overmounted-file", over + `h = open(os.path.join(d, "f"))` + mount, "now leads to another file", true, true, ""},
		{"overmounted-dir", over + `h = os.open(d, os.O_RDONLY | os.O_DIRECTORY)` + mount, "now leads to another file", true, true, ""},
		{"overmounted-cwd", over + `os.chdir(d)` + mount, "cwd: its path", false, true, ""},
		// Only a MAP_SHARED mapping holds the file (its fd closed; not
		// Python's mmap, which keeps a dup): mapped again by path, it
		// would be the imposter's pages.
		{"overmounted-map", over + `import ctypes; libc = ctypes.CDLL(None); libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
h = os.open(os.path.join(d, "f"), os.O_RDWR); libc.mmap(None, 4096, 3, 1, h, 0); os.close(h)` + mount,
			"now leads to another file", false, true, "vma 0x"},
		// The program runs a copy of python3 in d, which the mount then
		// hides behind another "py".
		{"overmounted-exe", over + `import shutil
if os.path.dirname(sys.executable) != d:
    shutil.copy(sys.executable, os.path.join(d, "py"))
    code = open("/proc/self/cmdline", "rb").read().split(b"\0")[2]
    os.execv(os.path.join(d, "py"), [os.path.join(d, "py"), "-c", code, sys.argv[1]])
subprocess.run(["mount", "-t", "tmpfs", "none", d], check=True)
shutil.copy("/bin/true", os.path.join(d, "py"))
`, "exe: its path", false, true, "now leads to another file"},
		{"ghost-xattr", `g = open(sys.argv[1] + ".x", "wb+"); g.write(b"data"); g.flush(); os.setxattr(g.fileno(), "user.audit", b"val"); os.unlink(g.name)`, "extended attributes (user.audit)", true, false, ""},
		// F_SETSIG is 10 (x86-64); the signal is caught: a create in the
		// directory must not end the program.
		{"dnotify", `import fcntl; signal.signal(signal.SIGRTMIN + 2, lambda *a: None); h = os.open(os.path.dirname(sys.argv[1]), os.O_RDONLY)
fcntl.fcntl(h, 10, signal.SIGRTMIN + 2); fcntl.fcntl(h, fcntl.F_NOTIFY, fcntl.DN_CREATE | fcntl.DN_MULTISHOT)`, "dnotify", true, false, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			argv := []string{"/usr/bin/python3", "-c", "import os, signal, subprocess, sys, time\n" + c.setup + ticker}
			if c.ownNS {
				argv = append([]string{"/usr/bin/unshare", "-m", "--propagation", "private"}, argv...)
			}
			w := startWorkload(t, argv...)
			args := []string{"dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir()}
			if c.ownNS {
				// godwit dumps a tree of its own mount namespace: it
				// runs in the program's.
				args = append([]string{"-t", strconv.Itoa(w.pid), "-m", godwitBin}, args...)
			}
			code, out := godwitVia(t, c.ownNS, args...)
			oneLineError(t, code, out, c.want)
			if c.fd && !strings.Contains(out, "fd ") {
				t.Errorf("the error does not name the fd: %s", out)
			}
			if !strings.Contains(out, c.names) {
				t.Errorf("the error does not name %q: %s", c.names, out)
			}
			w.waitTicks(3)
			if state, tracer := procState(t, w.pid); tracer != 0 || state == "t" || state == "T" {
				t.Fatalf("after a refused dump: state %s, tracer %d", state, tracer)
			}
		})
	}
}

// godwitVia runs godwit, or with nsenter godwit under nsenter (args then
// nsenter's first), and returns its exit code and combined output.
func godwitVia(t *testing.T, nsenter bool, args ...string) (int, string) {
	t.Helper()
	if !nsenter {
		return godwit(t, args...)
	}
	out, err := exec.Command("/usr/bin/nsenter", args...).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	} else if err != nil {
		t.Fatalf("nsenter %v: %v", args, err)
	}
	return 0, string(out)
}

// The same fds survive a migration (stop-and-copy to another lab host):
// the O_TMPFILE files are made again in the destination's mounts.
func TestMigrateFDFiles(t *testing.T) {
	m := newMigLab(t)
	m.startAgent()
	w := startOn(t, m.a, cWorkload(t, "fdfiles"))
	code, _, stderr := m.send(w, "--max-rounds", "0")
	if code != 0 {
		t.Fatalf("migrate send: exit %d: %s", code, stderr)
	}
	root := m.moved(w)
	w.waitTicks(3)
	if err := syscall.Kill(root, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(readFile(w.log), "done ") {
		if time.Now().After(deadline) {
			t.Fatalf("moved program did not finish\n%s", w.tail())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(readFile(w.log), " ok\n") {
		t.Fatalf("no ok in the log\n%s", w.tail())
	}
}
