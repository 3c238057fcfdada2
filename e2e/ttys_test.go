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

// newPty opens a pty pair for a test, as a terminal emulator would: the
// master and an unlocked slave, both closed at the end.
func newPty(t *testing.T) (m, s *os.File, path string) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	path = fmt.Sprintf("/dev/pts/%d", n)
	if s, err = os.OpenFile(path, os.O_RDWR|unix.O_NOCTTY, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return m, s, path
}

// readUntil reads m until want shows or 20 s pass, and returns what came.
func readUntil(m *os.File, want string) (string, bool) {
	got := make(chan string, 1)
	go func() {
		b := make([]byte, 256)
		var acc []byte
		for !strings.Contains(string(acc), want) {
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
		return s, strings.Contains(s, want)
	case <-time.After(20 * time.Second):
		m.SetReadDeadline(time.Now()) // ends the reader
		return "", false
	}
}

// A tty left out of the dump with --external tty[rdev:dev] (the program's
// standard streams, the slave of a pty the test holds; the program has no
// controlling terminal) must be given to the restore with --inherit-fd
// fd[N]:tty[rdev:dev]: without it the restore is refused naming the
// option; with the slave of a new pty as godwit's fd 3, the restored
// program's fds 0-2 are that slave and it writes to the new terminal.
func TestExternalTTYInheritFD(t *testing.T) {
	needRoot(t)
	_, sl, pts := newPty(t)
	var st unix.Stat_t
	if err := unix.Fstat(int(sl.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	res := fmt.Sprintf("tty[%x:%x]", st.Rdev, st.Dev)
	const prog = `import os, sys, time
f = open(sys.argv[1], "a", buffering=1)
i = 0
while True:
    i += 1
    f.write("tick %d\n" % i)
    if os.path.exists(sys.argv[1] + ".say"):
        os.write(1, b"said-on-the-new-terminal\n")
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
	img := w.dump(t, "--external", res)
	w.reapKilled(t)

	code, out = godwit(t, "restore", "-D", img)
	oneLineError(t, code, out, "--inherit-fd fd[N]:"+res)
	if pidExists(w.pid) {
		t.Fatalf("a refused restore left pid %d", w.pid)
	}

	m2, sl2, pts2 := newPty(t)
	restoreWith(t, w, img, func(c *exec.Cmd) {
		c.ExtraFiles = []*os.File{sl2}
		c.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}, "--inherit-fd", "fd[3]:"+res)
	w.waitTicks(3)
	for fd := 0; fd < 3; fd++ {
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", w.pid, fd)); err != nil || l != pts2 {
			t.Fatalf("restored fd %d is %q (%v), want the new terminal %s", fd, l, err, pts2)
		}
	}
	if err := os.WriteFile(w.log+".say", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if s, ok := readUntil(m2, "said-on-the-new-terminal"); !ok {
		t.Fatalf("the new terminal got %q\n%s", s, w.tail())
	}
}

// /dev/console and a virtual console held by a program round-trip: the
// same paths and open flags, /dev/console reaching the same device, and
// the termios the dump saw, which the restore sets again (the test
// changes the VT's between dump and restore). The program checks each.
func TestConsoleTTYs(t *testing.T) {
	needRoot(t)
	const vt = "/dev/tty2"
	for _, p := range []string{"/dev/console", vt} {
		fd, err := unix.Open(p, unix.O_RDWR|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
		if err != nil {
			t.Fatalf("this test needs %s (a console the machine has): %v", p, err)
		}
		unix.Close(fd)
	}
	fd, err := unix.Open(vt, unix.O_RDWR|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	orig, err := unix.IoctlGetTermios(fd, unix.TCGETS2)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.IoctlSetTermios(fd, unix.TCSETS2, orig)
	const prog = `import os, sys, time, fcntl, termios, struct
log = open(sys.argv[1], "a", buffering=1)
c = os.open("/dev/console", os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
v = os.open("` + vt + `", os.O_RDWR | os.O_NOCTTY)
def state():
    dev = struct.unpack("I", fcntl.ioctl(c, 0x80045432, b"\0" * 4))[0]  # TIOCGDEV
    return (dev, termios.tcgetattr(c), termios.tcgetattr(v), fcntl.fcntl(c, fcntl.F_GETFL), fcntl.fcntl(v, fcntl.F_GETFL),
            os.readlink("/proc/self/fd/%d" % c), os.readlink("/proc/self/fd/%d" % v))
want = state()
i = 0
while not os.path.exists(sys.argv[1] + ".check"):
    i += 1
    log.write("tick %d\n" % i)
    time.sleep(0.01)
got = state()
if got == want:
    log.write("ok\n")
    sys.exit(0)
log.write("FAIL: %r, want %r\n" % (got, want))
sys.exit(3)
`
	w := startWorkload(t, "/usr/bin/python3", "-c", prog)
	dir := w.dump(t)
	w.reapKilled(t)
	changed := *orig
	changed.Lflag ^= unix.ECHO
	if err := unix.IoctlSetTermios(fd, unix.TCSETS2, &changed); err != nil {
		t.Fatal(err)
	}
	r := restore(t, w, dir)
	if err := os.WriteFile(w.log+".check", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-r.done:
		r.done <- err
		if err != nil {
			t.Fatalf("restored program: %v\n%s", err, w.tail())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("restored pid %d did not finish\n%s", w.pid, w.tail())
	}
	if !strings.Contains(readFile(w.log), "ok\n") {
		t.Fatalf("no ok in the log\n%s", w.tail())
	}
}

// A tun fd in a netns the test makes: the program attaches a tun device
// (non-persistent, or persistent) and reads the packets routed to it;
// the test gives the link an address and brings it up. After the dump
// killed the program (a non-persistent device goes with it), the restore
// attaches the device again, made again where it was gone, with its
// address, up; packets sent to the link's network reach the restored
// program.
func TestTunDumpRestore(t *testing.T) {
	needRoot(t)
	for _, persist := range []bool{false, true} {
		t.Run(fmt.Sprintf("persist=%v", persist), func(t *testing.T) { testTun(t, persist) })
	}
}

func testTun(t *testing.T, persist bool) {
	n := makeNetns(t)
	const dev, local, peer = "gwtun0", "10.99.0.1/24", "10.99.0.2"
	const prog = `import os, sys, time, fcntl, struct, select
log = open(sys.argv[-1], "a", buffering=1)
fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH22x", sys.argv[1].encode(), 0x0001 | 0x1000))  # TUNSETIFF: IFF_TUN|IFF_NO_PI
if sys.argv[2] == "1":
    fcntl.ioctl(fd, 0x400454cb, 1)  # TUNSETPERSIST
i = 0
while True:
    i += 1
    log.write("tick %d\n" % i)
    r, _, _ = select.select([fd], [], [], 0.01)
    while r:
        try:
            p = os.read(fd, 2048)
        except BlockingIOError:
            break
        if len(p) >= 20 and p[0] >> 4 == 4:
            log.write("packet to %d.%d.%d.%d\n" % tuple(p[16:20]))
`
	p := "0"
	if persist {
		p = "1"
	}
	w := startWorkload(t, "nsenter", "--net=/run/netns/"+n.name, "--", "/usr/bin/python3", "-c", prog, dev, p)
	t.Cleanup(func() { n.command("ip", "link", "del", dev).Run() })
	for _, c := range [][]string{{"ip", "addr", "add", local, "dev", dev}, {"ip", "link", "set", dev, "up"}} {
		if out, err := n.command(c...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", c, err, out)
		}
	}
	send := func() {
		t.Helper()
		c := n.command("python3", "-c", `import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b"x", ("`+peer+`", 9999))`)
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("send to %s: %v: %s", peer, err, out)
		}
	}
	packets := func() int { return strings.Count(readFile(w.log), "packet to "+peer+"\n") }
	send()
	waitFor(t, "the packet to reach the program", func() bool { return packets() >= 1 })
	linkState := func() string {
		out, err := n.command("ip", "-o", "addr", "show", "dev", dev).CombinedOutput()
		if err != nil {
			return "no link: " + string(out)
		}
		return string(out)
	}
	before := linkState()
	dir := w.dump(t)
	w.reapKilled(t)
	_, err := n.command("ip", "link", "show", dev).CombinedOutput()
	if gone := err != nil; gone == persist {
		t.Fatalf("after the dump the device is gone: %v, want %v", gone, !persist)
	}
	seen := packets()
	r := restoreInNetns(t, n, w.pid, dir, func() bool { return len(w.ticks()) > 0 })
	defer killAndForget(w.pid)
	_ = r
	w.waitTicks(3)
	if got := linkState(); !strings.Contains(got, local) || strings.Count(got, "inet ") != strings.Count(before, "inet ") {
		t.Fatalf("link after restore:\n%s\nbefore:\n%s", got, before)
	}
	out, _ := n.command("ip", "-d", "link", "show", dev).CombinedOutput()
	if !strings.Contains(string(out), "tun type tun") || !strings.Contains(string(out), ",UP") {
		t.Fatalf("link after restore:\n%s", out)
	}
	if persist != strings.Contains(string(out), "persist on") {
		t.Fatalf("persist %v, link after restore:\n%s", persist, out)
	}
	send()
	waitFor(t, "a packet to reach the restored program", func() bool { return packets() > seen })
}

// Tap settings godwit does not carry: a drop-all socket filter
// (TUNATTACHFILTER) and, on a non-persistent device the restore would make
// again, the carrier set off (TUNSETCARRIER). The dump refuses each by
// name and leaves the program running.
func TestTunUnsavedSettingsRefused(t *testing.T) {
	needRoot(t)
	for _, c := range []struct{ name, setup, want string }{
		{"filter", `insn = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0), 8)  # ret 0: drop all
fcntl.ioctl(fd, 0x401054d5, struct.pack("H6xQ", 1, ctypes.addressof(insn)))  # TUNATTACHFILTER`, "TUNATTACHFILTER"},
		{"carrier", `fcntl.ioctl(fd, 0x400454e2, struct.pack("i", 0))  # TUNSETCARRIER off`, "TUNSETCARRIER"},
	} {
		t.Run(c.name, func(t *testing.T) {
			n := makeNetns(t)
			const dev = "gwtap9"
			prog := `import os, sys, time, fcntl, struct, ctypes
log = open(sys.argv[-1], "a", buffering=1)
fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH22x", sys.argv[1].encode(), 0x0002 | 0x1000))  # TUNSETIFF: IFF_TAP|IFF_NO_PI
` + c.setup + `
i = 0
while True:
    i += 1
    log.write("tick %d\n" % i)
    time.sleep(0.01)
`
			w := startWorkload(t, "nsenter", "--net=/run/netns/"+n.name, "--", "/usr/bin/python3", "-c", prog, dev)
			t.Cleanup(func() { n.command("ip", "link", "del", dev).Run() })
			w.waitTicks(3)
			code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir())
			if code == 0 {
				t.Fatalf("dump succeeded, want a refusal naming %s", c.want)
			}
			if !strings.Contains(out, c.want) || !strings.Contains(out, dev) {
				t.Fatalf("refusal %q does not name %s and %s", out, c.want, dev)
			}
			seen := len(w.ticks())
			waitFor(t, "the program to run on after the refused dump", func() bool { return len(w.ticks()) > seen+3 })
		})
	}
}
