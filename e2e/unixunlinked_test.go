package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestUnixUnlinkedNameDumpRestore: unix sockets bound to paths unlinked
// since (a listener whose directories were removed too, a client bound
// to its own name, a datagram socket) come back with the same names
// while no file is at those paths; the connections made to them before
// (accepted in the task and in a child, a datagram socket connected by
// name) still carry data.
func TestUnixUnlinkedNameDumpRestore(t *testing.T) {
	needRoot(t)
	const prog = `import os, signal, socket, sys, time
log = sys.argv[1]
top = log + ".d"
path = top + "/sub/x.sock"
os.makedirs(top + "/sub")
l = socket.socket(socket.AF_UNIX); l.bind(path); l.listen(4)
c = socket.socket(socket.AF_UNIX); c.bind(log + ".client"); c.connect(path)
a, _ = l.accept()
ds = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); ds.bind(log + ".dg")
d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); d.connect(log + ".dg")
child = os.fork()
if child == 0:
    for s in (l, c, a, ds, d):
        s.close()
    k = socket.socket(socket.AF_UNIX); k.connect(path)
    k.send(b"from-child")
    signal.signal(signal.SIGUSR1, lambda *a: None)
    signal.pause()
    got = k.recv(100)
    os._exit(0 if got == b"reply" and k.getpeername() == path else 9)
ka, _ = l.accept()
c.send(b"to-server"); a.send(b"to-client")
os.unlink(path); os.rmdir(top + "/sub"); os.rmdir(top)
os.unlink(log + ".client"); os.unlink(log + ".dg")
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
names = (l.getsockname(), a.getsockname(), ka.getsockname(), c.getpeername(), c.getsockname(), ds.getsockname(), d.getpeername())
if names != (path, path, path, path, log + ".client", log + ".dg", log + ".dg"):
    bad.append("names: %r" % (names,))
for p in (path, top, log + ".client", log + ".dg"):
    if os.path.lexists(p):
        bad.append("%s exists" % p)
if a.recv(100) != b"to-server" or c.recv(100) != b"to-client":
    bad.append("stream: queued bytes")
c.send(b"again")
if a.recv(100) != b"again":
    bad.append("stream: bytes after restore")
a.send(b"back")
if c.recv(100) != b"back":
    bad.append("stream: bytes back after restore")
if ka.recv(100) != b"from-child":
    bad.append("child's connection: queued bytes")
ka.send(b"reply")
os.kill(child, signal.SIGUSR1)
_, st = os.waitpid(child, 0)
if st != 0:
    bad.append("child: status %#x" % st)
d.send(b"dgram")
if ds.recv(100) != b"dgram":
    bad.append("datagram socket connected by name")
for b in bad:
    f.write("FAIL: %s\n" % b)
f.write("done %s\n" % ("FAILED" if bad else "ok"))
sys.exit(3 if bad else 0)
`
	w := startTree(t, "/usr/bin/python3", "-c", prog)
	waitFor(t, "the names to be unlinked", func() bool {
		_, err := os.Lstat(w.log + ".dg")
		return os.IsNotExist(err) && len(w.ticks()) > 0
	})
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
	for _, p := range []string{w.log + ".d", w.log + ".client", w.log + ".dg"} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("after restore %s: %v, want it absent", p, err)
		}
	}
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("restored program exited %d\n%s\n%s", code, w.tail(), r.out.String())
	}
	if !strings.Contains(readFile(w.log), "done ok\n") {
		t.Fatalf("no ok in the log\n%s", w.tail())
	}
}

// TestUnixUnlinkedNameTaken: a file put, after the dump, at the path a
// socket was bound to and that was unlinked makes the restore fail
// naming the path, and the file is left alone. One task: no orphan of
// the failed restore is left to an init that does not reap (CI).
func TestUnixUnlinkedNameTaken(t *testing.T) {
	needRoot(t)
	const prog = `import os, socket, sys, time
log = sys.argv[1]
ds = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); ds.bind(log + ".dg"); os.unlink(log + ".dg")
f = open(log, "a", buffering=1)
i = 0
while True:
    i += 1
    f.write("tick %d\n" % i)
    time.sleep(0.01)
`
	w := startWorkload(t, "/usr/bin/python3", "-c", prog)
	dir := w.dump(t)
	w.reapKilled(t)
	other := w.log + ".dg"
	if err := os.WriteFile(other, []byte("another file"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out := godwit(t, "restore", "-D", dir, "-d")
	if code == 0 {
		t.Fatalf("restore with a file at %s succeeded", other)
	}
	if !strings.Contains(out, other) || !strings.Contains(out, "a file exists there now") {
		t.Fatalf("restore refused, but not naming %s: %s", other, out)
	}
	if b, err := os.ReadFile(other); err != nil || string(b) != "another file" {
		t.Fatalf("the file at %s was touched: %q %v", other, b, err)
	}
}
