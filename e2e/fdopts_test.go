package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/rpc"
	"golang.org/x/sys/unix"

	"godwit/internal/images"
	"godwit/internal/model/criuimg"
)

// fdOn finds the fd of pid whose link ends with suffix; -1 when none.
func fdOn(t *testing.T, pid int, suffix string) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		if err == nil && strings.HasSuffix(l, suffix) {
			n, _ := strconv.Atoi(e.Name())
			return n
		}
	}
	return -1
}

// checkCRIUImages checks dir with criuimg.CheckCRIU and has crit decode
// name; it returns crit's text.
func checkCRIUImages(t *testing.T, dir, name string) string {
	t.Helper()
	d, err := images.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	err = criuimg.CheckCRIU(d)
	d.Close()
	if err != nil {
		t.Error(err)
	}
	out, err := exec.Command("crit", "show", filepath.Join(dir, name)).CombinedOutput()
	if err != nil {
		t.Fatalf("crit show %s: %v\n%s", name, err, out)
	}
	return string(out)
}

// --link-remap: a file whose name was removed while another hard link
// stays (open and mapped) is linked back to link_remap.N at dump, a
// LINKED remap in remap-fpath.img; the restore opens it by that link,
// removes the link once it succeeded (a failed one keeps it, and runs
// again), and the restored fd and mapping are that very inode
// again (the program's writes land in the other link). A file of no link
// at all stays a ghost. Without the option the dump is refused; a dump
// that fails after linking removes the link.
func TestLinkRemap(t *testing.T) {
	needRoot(t)
	const prog = `import mmap, os, sys, time
log = sys.argv[1]
a, b = log + ".a", log + ".b"
fd = os.open(a, os.O_RDWR | os.O_CREAT, 0o640)
os.write(fd, b"linked" + bytes(4090))
os.link(a, b)
os.unlink(a)
m = mmap.mmap(fd, 4096)
g = open(log + ".g", "wb+"); g.write(b"ghost"); g.flush(); os.unlink(g.name)
f = open(log, "a", buffering=1)
i = 0
while True:
    i += 1
    f.write("tick %d\n" % i)
    os.pwrite(fd, b"%8d" % i, 100)
    m[200:208] = b"%8d" % i
    time.sleep(0.01)
`
	w := startWorkload(t, "/usr/bin/python3", "-c", prog)
	logDir := filepath.Dir(w.log)
	links := func() []string {
		m, _ := filepath.Glob(filepath.Join(logDir, "link_remap.*"))
		return m
	}
	code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir())
	oneLineError(t, code, out, "dump with --link-remap")
	// The ghost (5 bytes) is over a 1-byte limit: the dump fails after
	// the linked file (a lower fd) was linked, and must unlink it.
	code, out = godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir(), "--link-remap", "--ghost-limit", "1")
	oneLineError(t, code, out, "over --ghost-limit")
	if l := links(); len(l) != 0 {
		t.Fatalf("a failed dump left its links: %v", l)
	}
	w.waitTicks(3)

	var bst unix.Stat_t
	if err := unix.Stat(w.log+".b", &bst); err != nil {
		t.Fatal(err)
	}
	dir := w.dump(t, "--link-remap")
	w.reapKilled(t)
	l := links()
	if len(l) != 1 {
		t.Fatalf("links after the dump: %v, want one link_remap.N", l)
	}
	var lst unix.Stat_t
	if err := unix.Stat(l[0], &lst); err != nil || lst.Ino != bst.Ino || lst.Dev != bst.Dev {
		t.Fatalf("%s is not the file of %s.b: %v", l[0], w.log, err)
	}
	img := checkCRIUImages(t, dir, criuimg.RemapFpathImg)
	if !strings.Contains(img, "LINKED") || !strings.Contains(img, "GHOST") {
		t.Errorf("remap-fpath.img has not a LINKED and a GHOST remap:\n%s", img)
	}

	// A restore that fails at its end keeps the link: it can be run
	// again.
	t.Setenv("GODWIT_TEST_RESTORER", "fail-thaw")
	code, out = godwit(t, "restore", "-D", dir, "-v4", "-o", "restore-failed.log")
	os.Unsetenv("GODWIT_TEST_RESTORER")
	if code == 0 {
		t.Fatalf("restore with a failing thaw succeeded: %s", out)
	}
	killAndForget(w.pid)
	if l := links(); len(l) != 1 {
		t.Fatalf("links after a failed restore: %v, want the link_remap.N kept", l)
	}
	r := restore(t, w, dir)
	w.waitTicks(5)
	if l := links(); len(l) != 0 {
		t.Errorf("the restore left the links: %v", l)
	}
	if _, err := os.Lstat(w.log + ".a"); !os.IsNotExist(err) {
		t.Errorf("the restore left the old name %s.a: %v", w.log, err)
	}
	fd := fdOn(t, w.pid, ".a (deleted)")
	if fd < 0 {
		t.Fatalf("restored task has no fd on %s.a (deleted)", w.log)
	}
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/fd/%d", w.pid, fd), &st); err != nil {
		t.Fatal(err)
	}
	if st.Dev != bst.Dev || st.Ino != bst.Ino || st.Nlink != 1 {
		t.Errorf("restored fd %d is %d:%d (%d links), want %s.b's %d:%d with 1 link", fd, st.Dev, st.Ino, st.Nlink, w.log, bst.Dev, bst.Ino)
	}
	if g := fdOn(t, w.pid, ".g (deleted)"); g < 0 {
		t.Errorf("restored task has no fd on the ghost %s.g (deleted)", w.log)
	}
	// The program writes its tick through the fd and the mapping: they
	// land in .b, the other link.
	n := len(w.ticks())
	w.waitTicks(n + 3)
	b, err := os.ReadFile(w.log + ".b")
	if err != nil || len(b) != 4096 || string(b[:6]) != "linked" {
		t.Fatalf("%s.b: %v (%d bytes)", w.log, err, len(b))
	}
	byFD, _ := strconv.Atoi(strings.TrimSpace(string(b[100:108])))
	byMap, _ := strconv.Atoi(strings.TrimSpace(string(b[200:208])))
	if byFD <= n || byMap <= n {
		t.Errorf("after tick %d, %s.b has tick %d by the fd and %d by the mapping: the restored fd or mapping is not that file", n, w.log, byFD, byMap)
	}
	killAndForget(w.pid)
	<-r.done
	r.done <- nil
}

// --external file[mnt_id:inode]: the file is left out of the images (a
// REG entry with ext, named by the key); the restore refuses it without
// --inherit-fd, naming it, and with --inherit-fd fd[3]:KEY the task gets
// the caller's (different) file at that fd and writes to it.
func TestExternalFile(t *testing.T) {
	needRoot(t)
	const prog = `import os, sys, time
log = sys.argv[1]
e = os.open(log + ".ext", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
f = open(log, "a", buffering=1)
i = 0
while True:
    i += 1
    f.write("tick %d\n" % i)
    os.write(e, b"w%d\n" % i)
    time.sleep(0.01)
`
	w := startWorkload(t, "/usr/bin/python3", "-c", prog)
	fd := fdOn(t, w.pid, ".ext")
	if fd < 0 {
		t.Fatal("no fd on the .ext file")
	}
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/fd/%d", w.pid, fd), &st); err != nil {
		t.Fatal(err)
	}
	mnt := -1
	for _, l := range strings.Split(readFile(fmt.Sprintf("/proc/%d/fdinfo/%d", w.pid, fd)), "\n") {
		if v, ok := strings.CutPrefix(l, "mnt_id:"); ok {
			mnt, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	if mnt < 0 {
		t.Fatal("no mnt_id in fdinfo")
	}
	res := fmt.Sprintf("file[%x:%x]", mnt, st.Ino)
	img := w.dump(t, "--external", res)
	w.reapKilled(t)
	files := checkCRIUImages(t, img, "files.img")
	if !strings.Contains(files, `"name": "`+res+`"`) || !strings.Contains(files, `"ext": true`) {
		t.Errorf("files.img has no REG entry %s with ext:\n%s", res, files)
	}

	code, out := godwit(t, "restore", "-D", img)
	oneLineError(t, code, out, "--inherit-fd fd[N]:"+res)
	if pidExists(w.pid) {
		t.Fatalf("a refused restore left pid %d", w.pid)
	}

	other := w.log + ".other"
	of, err := os.OpenFile(other, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer of.Close()
	restoreWith(t, w, img, func(c *exec.Cmd) { c.ExtraFiles = []*os.File{of} }, "--inherit-fd", "fd[3]:"+res)
	n := len(w.ticks())
	w.waitTicks(n + 3)
	var got unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/fd/%d", w.pid, fd), &got); err != nil {
		t.Fatal(err)
	}
	var ost unix.Stat_t
	if err := unix.Fstat(int(of.Fd()), &ost); err != nil {
		t.Fatal(err)
	}
	if got.Dev != ost.Dev || got.Ino != ost.Ino {
		t.Fatalf("restored fd %d is %d:%d, want the inherited %s (%d:%d)", fd, got.Dev, got.Ino, other, ost.Dev, ost.Ino)
	}
	b, _ := os.ReadFile(other)
	if !strings.Contains(string(b), fmt.Sprintf("w%d\n", n+1)) {
		t.Errorf("the inherited file has %q: the restored program did not write tick %d to it", b, n+1)
	}
}

// --evasive-devices: a /dev/null fd opened through a node of its own that
// was then removed, and one whose path now names /dev/zero, are refused
// without the option; with it they are dumped by /dev/null and restored
// as that device, and the program writes to them.
func TestEvasiveDevices(t *testing.T) {
	needRoot(t)
	const prog = `import os, stat, sys, time
log = sys.argv[1]
a, b = log + ".null1", log + ".null2"
os.mknod(a, stat.S_IFCHR | 0o666, os.makedev(1, 3))
os.mknod(b, stat.S_IFCHR | 0o666, os.makedev(1, 3))
x = os.open(a, os.O_WRONLY)
y = os.open(b, os.O_RDWR)
os.unlink(a)
os.unlink(b)
os.mknod(b, stat.S_IFCHR | 0o666, os.makedev(1, 5))
f = open(log, "a", buffering=1)
i = 0
while True:
    i += 1
    assert os.write(x, b"x") == 1 and os.write(y, b"y") == 1 and os.read(y, 4) == b""
    f.write("tick %d\n" % i)
    time.sleep(0.01)
`
	w := startWorkload(t, "/usr/bin/python3", "-c", prog)
	x, y := fdOn(t, w.pid, ".null1 (deleted)"), fdOn(t, w.pid, ".null2 (deleted)")
	if x < 0 || y < 0 {
		t.Fatalf("no fds on the device nodes (%d, %d)", x, y)
	}
	code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir())
	oneLineError(t, code, out, "dump with --evasive-devices")
	w.waitTicks(3)
	dir := w.dump(t, "--evasive-devices")
	w.reapKilled(t)
	if files := checkCRIUImages(t, dir, "files.img"); !strings.Contains(files, `"name": "/dev/null"`) {
		t.Errorf("files.img names no /dev/null:\n%s", files)
	}
	r := restore(t, w, dir)
	n := len(w.ticks())
	w.waitTicks(n + 3)
	for _, fd := range []int{x, y} {
		p := fmt.Sprintf("/proc/%d/fd/%d", w.pid, fd)
		var st unix.Stat_t
		l, err := os.Readlink(p)
		if err != nil || unix.Stat(p, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != unix.Mkdev(1, 3) || l != "/dev/null" {
			t.Errorf("restored fd %d is %q (rdev %d:%d, %v), want /dev/null", fd, l, unix.Major(st.Rdev), unix.Minor(st.Rdev), err)
		}
	}
	if !alive(w.pid) {
		t.Fatalf("the restored program died\n%s", w.tail())
	}
	killAndForget(w.pid)
	<-r.done
	r.done <- nil
}

// --force-irmap: an inotify watch and a fanotify inode mark on overlayfs
// (without nfs_export, its file handles cannot be opened) are refused
// without the option; with it the dump finds the file by name, the image
// carries the path, and the restored watch and mark deliver the events
// of a write.
func TestForceIrmap(t *testing.T) {
	needRoot(t)
	base := t.TempDir()
	for _, d := range []string{"lower", "upper", "work", "merged"} {
		if err := os.Mkdir(filepath.Join(base, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(base, "lower", "watched"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	merged := filepath.Join(base, "merged")
	data := fmt.Sprintf("lowerdir=%s/lower,upperdir=%s/upper,workdir=%s/work", base, base, base)
	if err := unix.Mount("overlay", merged, "overlay", 0, data); err != nil {
		t.Fatalf("mount overlay: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(merged, unix.MNT_DETACH) })
	watched := filepath.Join(merged, "watched")
	const prog = `import ctypes, os, sys, time
l = ctypes.CDLL(None, use_errno=True)
i = l.inotify_init1(os.O_NONBLOCK)
assert l.inotify_add_watch(i, sys.argv[1].encode(), 2) == 1  # IN_MODIFY
l.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
g = l.fanotify_init(3, 0)  # FAN_CLOEXEC | FAN_NONBLOCK, FAN_CLASS_NOTIF
assert g >= 0 and l.fanotify_mark(g, 1, 2, -100, sys.argv[1].encode()) == 0  # FAN_MARK_ADD, FAN_MODIFY
f = open(sys.argv[2], "a", buffering=1)
n = 0
while True:
    n += 1
    f.write("tick %d\n" % n)
    try:
        if len(os.read(i, 4096)) >= 16:
            f.write("event\n")
    except BlockingIOError:
        pass
    try:
        e = os.read(g, 4096)
        if len(e) >= 24:
            os.close(int.from_bytes(e[16:20], "little", signed=True))
            f.write("fevent\n")
    except BlockingIOError:
        pass
    time.sleep(0.01)
`
	w := startWorkload(t, "/usr/bin/python3", "-c", prog, watched)
	code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir())
	oneLineError(t, code, out, "dump with --force-irmap")
	w.waitTicks(3)
	dir := w.dump(t, "--force-irmap")
	w.reapKilled(t)
	if files := checkCRIUImages(t, dir, "files.img"); !strings.Contains(files, `"path": "`+watched+`"`) {
		t.Errorf("files.img has no watch with path %s:\n%s", watched, files)
	}
	r := restore(t, w, dir)
	if strings.Contains(readFile(w.log), "event") {
		t.Fatal("an event before any write")
	}
	if err := os.WriteFile(watched, []byte("modified"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the restored watch's event", func() bool { return strings.Contains(readFile(w.log), "\nevent\n") })
	waitFor(t, "the restored fanotify mark's event", func() bool { return strings.Contains(readFile(w.log), "fevent\n") })
	killAndForget(w.pid)
	<-r.done
	r.done <- nil
}

// Through the RPC: link_remap, evasive_devices and force_irmap map onto
// the same options; the program restored through RPC has the linked file
// and /dev/null back.
func TestRPCFDOptions(t *testing.T) {
	needRoot(t)
	const prog = `import ctypes, os, stat, sys, time
log = sys.argv[1]
a, b, n = log + ".a", log + ".b", log + ".null"
fd = os.open(a, os.O_RDWR | os.O_CREAT, 0o640)
os.link(a, b)
os.unlink(a)
os.mknod(n, stat.S_IFCHR | 0o666, os.makedev(1, 3))
x = os.open(n, os.O_WRONLY)
os.unlink(n)
f = open(log, "a", buffering=1)
l = ctypes.CDLL(None)
i = l.inotify_init1(os.O_NONBLOCK)
assert l.inotify_add_watch(i, log.encode(), 2) == 1
k = 0
while True:
    k += 1
    f.write("tick %d\n" % k)
    os.pwrite(fd, b"%8d" % k, 0)
    os.write(x, b"x")
    try:
        os.read(i, 4096)
    except BlockingIOError:
        pass
    time.sleep(0.01)
`
	w := startWorkload(t, "/usr/bin/python3", "-c", prog)
	fd, x := fdOn(t, w.pid, ".a (deleted)"), fdOn(t, w.pid, ".null (deleted)")
	if fd < 0 || x < 0 {
		t.Fatalf("no fds on the files (%d, %d)", fd, x)
	}
	dir := t.TempDir()
	d := openDir(t, dir)
	s := startSwrk(t)
	resp := s.call(t, &rpc.CriuReq{Type: rpc.CriuReqType_DUMP.Enum(), Opts: &rpc.CriuOpts{Pid: ptr(int32(w.pid)), ImagesDirFd: ptr(int32(d.Fd())),
		LogLevel: ptr(int32(4)), LogFile: ptr("dump.log"), LinkRemap: ptr(true), EvasiveDevices: ptr(true), ForceIrmap: ptr(true)}})
	if !resp.GetSuccess() {
		t.Fatalf("dump: %v\n%s", resp, readFile(filepath.Join(dir, "dump.log")))
	}
	w.reapKilled(t)
	resp = s.call(t, &rpc.CriuReq{Type: rpc.CriuReqType_RESTORE.Enum(), Opts: &rpc.CriuOpts{ImagesDirFd: ptr(int32(d.Fd())), LogFile: ptr("restore.log")}})
	if !resp.GetSuccess() {
		t.Fatalf("restore: %v\n%s", resp, readFile(filepath.Join(dir, "restore.log")))
	}
	t.Cleanup(func() { killAndForget(w.pid) })
	n := len(w.ticks())
	w.waitTicks(n + 3)
	var bst, st unix.Stat_t
	if err := unix.Stat(w.log+".b", &bst); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(fmt.Sprintf("/proc/%d/fd/%d", w.pid, fd), &st); err != nil || st.Ino != bst.Ino || st.Dev != bst.Dev {
		t.Errorf("restored fd %d is not %s.b (%v)", fd, w.log, err)
	}
	if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", w.pid, x)); err != nil || l != "/dev/null" {
		t.Errorf("restored fd %d is %q (%v), want /dev/null", x, l, err)
	}
	if m, _ := filepath.Glob(filepath.Join(filepath.Dir(w.log), "link_remap.*")); len(m) != 0 {
		t.Errorf("the restore left %v", m)
	}
}

// --link-remap in a chrooted task: /proc/PID/fd names the file by its
// path from godwit's root, which is not the task's, so the link goes next
// to the old name in the jail (not in a copy of the jail's path inside
// it), and the restored task, in its jail again, gets that inode back.
func TestLinkRemapChroot(t *testing.T) {
	needRoot(t)
	const prog = `import os, sys, time
log = sys.argv[1]
jail = os.path.dirname(log) + "/jail"
os.makedirs(jail + "/sub")
a, b = jail + "/sub/a", jail + "/sub/b"
fd = os.open(a, os.O_RDWR | os.O_CREAT, 0o640)
os.write(fd, b"linked" + bytes(122))
os.link(a, b)
os.unlink(a)
f = open(log, "a", buffering=1)
os.chroot(jail)
os.chdir("/")
i = 0
while True:
    i += 1
    os.pwrite(fd, b"%8d" % i, 100)
    f.write("tick %d\n" % i)
    time.sleep(0.01)
`
	w := startWorkload(t, "/usr/bin/python3", "-c", prog)
	jail := filepath.Join(filepath.Dir(w.log), "jail")
	links := func() []string {
		m, _ := filepath.Glob(filepath.Join(jail, "sub", "link_remap.*"))
		return m
	}
	var bst unix.Stat_t
	if err := unix.Stat(filepath.Join(jail, "sub", "b"), &bst); err != nil {
		t.Fatal(err)
	}
	dir := w.dump(t, "--link-remap")
	w.reapKilled(t)
	if l := links(); len(l) != 1 {
		t.Fatalf("links after the dump: %v, want one link_remap.N in %s/sub", l, jail)
	}
	r := restore(t, w, dir)
	w.waitTicks(3)
	if root, err := os.Readlink(fmt.Sprintf("/proc/%d/root", w.pid)); err != nil || root != jail {
		t.Errorf("restored root %q (%v), want %s", root, err, jail)
	}
	if l := links(); len(l) != 0 {
		t.Errorf("the restore left the links: %v", l)
	}
	fd := fdOn(t, w.pid, "/sub/a (deleted)")
	if fd < 0 {
		t.Fatalf("restored task has no fd on %s/sub/a (deleted)", jail)
	}
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/fd/%d", w.pid, fd), &st); err != nil {
		t.Fatal(err)
	}
	if st.Dev != bst.Dev || st.Ino != bst.Ino || st.Nlink != 1 {
		t.Errorf("restored fd %d is %d:%d (%d links), want sub/b's %d:%d with 1 link", fd, st.Dev, st.Ino, st.Nlink, bst.Dev, bst.Ino)
	}
	n := len(w.ticks())
	w.waitTicks(3)
	b, err := os.ReadFile(filepath.Join(jail, "sub", "b"))
	if err != nil || len(b) != 128 {
		t.Fatalf("sub/b: %v (%d bytes)", err, len(b))
	}
	if byFD, _ := strconv.Atoi(strings.TrimSpace(string(b[100:108]))); byFD <= n {
		t.Errorf("after tick %d, sub/b has tick %d: the restored fd is not that file", n, byFD)
	}
	killAndForget(w.pid)
	<-r.done
	r.done <- nil
}
