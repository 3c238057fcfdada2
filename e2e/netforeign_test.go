package e2e

import (
	"bufio"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// nsHop is python3 making a TCP connection in one network namespace
// while it runs in another (its fd 3 is the test's namespace, closed
// once used): it joins argv[1] (setns), listens on
// 127.0.0.1:argv[3] there, then joins argv[2] (its namespace from then
// on), logs "ready" to argv[4], accepts one connection (made in
// argv[1]'s namespace, as its listener) and closes the listener. It then
// writes a byte a tenth of a second and reads what comes; a reset or EOF
// is logged and ends it with 1.
const nsHop = `import ctypes, os, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
def join(path):
    fd = os.open(path, os.O_RDONLY)
    if libc.setns(fd, 0x40000000) != 0:
        raise OSError(ctypes.get_errno(), "setns " + path)
    os.close(fd)
join(sys.argv[1])
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", int(sys.argv[3]))); l.listen(1)
join(sys.argv[2])
os.close(3) # the test's namespace, passed as fd 3
open(sys.argv[4], "w").write("ready\n")
c, _ = l.accept(); l.close(); c.settimeout(0.1)
while True:
    try:
        c.send(b"x")
        if c.recv(100) == b"":
            open(sys.argv[4], "a").write("eof\n"); sys.exit(1)
    except socket.timeout:
        pass
    except OSError as e:
        open(sys.argv[4], "a").write("error %s\n" % e); sys.exit(1)
    time.sleep(0.1)
`

// A task holding a TCP connection of another network namespace than its
// own (it made it after setns, or was passed it) cannot be dumped: the
// network lock is made in the tree's namespace, and the restore would
// make the socket in its own. The dump fails naming the socket, and the
// task and its peer run on, the connection untouched (no reset). Both
// ways: the tree in godwit's namespace with a socket of another, and the
// tree in a namespace of its own with a socket of godwit's.
func TestNetForeignNetnsSocketRefused(t *testing.T) {
	needRoot(t)
	for i, tc := range []struct {
		name       string
		sockInHost bool
	}{{"socket-in-other-netns", false}, {"socket-in-godwits-netns", true}} {
		t.Run(tc.name, func(t *testing.T) {
			x := makeNetns(t)
			// godwit's namespace: this thread's (/proc/PID/ns/net is
			// the main thread's, which another test may have moved),
			// given to python as its fd 3.
			runtime.LockOSThread()
			hostNS, err := os.Open("/proc/thread-self/ns/net")
			runtime.UnlockOSThread()
			if err != nil {
				t.Fatal(err)
			}
			defer hostNS.Close()
			other, host := "/run/netns/"+x.name, "/proc/self/fd/3"
			sockNS, taskNS := other, host
			if tc.sockInHost {
				sockNS, taskNS = host, other
			}
			port := 7800 + i
			log := filepath.Join(t.TempDir(), "log")
			w := exec.Command("python3", "-c", nsHop, sockNS, taskNS, strconv.Itoa(port), log)
			w.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			w.ExtraFiles = []*os.File{hostNS}
			if err := w.Start(); err != nil {
				t.Fatal(err)
			}
			pid := w.Process.Pid
			waited := make(chan error, 1)
			go func() { waited <- w.Wait() }()
			t.Cleanup(func() {
				killAndForget(pid)
				select {
				case <-waited:
				case <-time.After(5 * time.Second):
				}
			})
			waitFor(t, "the listener", func() bool { return strings.HasPrefix(readAll(log), "ready\n") })
			addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
			var c net.Conn
			if tc.sockInHost {
				if c, err = net.Dial("tcp", addr); err != nil {
					t.Fatal(err)
				}
			} else {
				c = dialIn(t, other, addr)
			}
			defer c.Close()
			rd := bufio.NewReader(c)
			readSome := func(what string) {
				t.Helper()
				c.SetReadDeadline(time.Now().Add(20 * time.Second))
				buf := make([]byte, 3)
				if _, err := io.ReadFull(rd, buf); err != nil {
					t.Fatalf("%s: read from the task: %v (log %q)", what, err, readAll(log))
				}
			}
			readSome("before the dump")
			dir := t.TempDir()
			code, out := godwit(t, "dump", "-t", strconv.Itoa(pid), "-D", dir, "-v4", "-o", "dump.log", "--tcp-established")
			if code == 0 {
				t.Fatalf("dump of a task holding a socket of another network namespace succeeded: %s", out)
			}
			t.Logf("dump: %s", strings.TrimSpace(out))
			ino := socketIno(t, pid)
			if !strings.Contains(out, "socket "+ino) || !strings.Contains(out, "its task "+strconv.Itoa(pid)) || !strings.Contains(out, "not supported") {
				t.Fatalf("dump failed, but not naming socket %s and its task's namespace: %s", ino, out)
			}
			if tracerOf(pid) != 0 {
				t.Fatalf("pid %d still traced after the failed dump", pid)
			}
			// The connection runs on both ways, with no reset.
			for range 3 {
				readSome("after the failed dump")
				if _, err := c.Write([]byte("y")); err != nil {
					t.Fatalf("write to the task after the failed dump: %v", err)
				}
			}
			if s := readAll(log); s != "ready\n" || !alive(pid) {
				t.Fatalf("task after the failed dump: alive %v, log %q", alive(pid), s)
			}
		})
	}
}

// socketIno is the inode of the one TCP socket task pid holds (fd 3 and
// up: python's own are 0-2).
func socketIno(t *testing.T, pid int) string {
	t.Helper()
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	ino := ""
	for _, e := range ents {
		l, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/fd/" + e.Name())
		if err != nil {
			continue
		}
		if v, ok := strings.CutPrefix(l, "socket:["); ok {
			if ino != "" {
				t.Fatalf("pid %d holds more than one socket", pid)
			}
			ino = strings.TrimSuffix(v, "]")
		}
	}
	if ino == "" {
		t.Fatalf("pid %d holds no socket", pid)
	}
	return ino
}
