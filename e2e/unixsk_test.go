package e2e

import (
	"strconv"
	"strings"
	"testing"
)

// A unix stream socket with an out-of-band byte (MSG_OOB) queued is
// refused at dump by name (the peek would read it in-band: abc X def
// would come back as abcXdef), with SO_OOBINLINE on the receiver or not;
// the program runs on and still reads the byte out of band, the rest
// in-band, and its SO_OOBINLINE as it was.
func TestUnixOOBRefused(t *testing.T) {
	needRoot(t)
	for _, inline := range []int{0, 1} {
		t.Run("oobinline="+strconv.Itoa(inline), func(t *testing.T) {
			prog := `import os, signal, socket, sys, time
inline = ` + strconv.Itoa(inline) + `
a, b = socket.socketpair()
b.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, inline)
a.send(b"abc"); a.send(b"X", socket.MSG_OOB); a.send(b"def")
done = []
signal.signal(signal.SIGUSR1, lambda *x: done.append(1))
f = open(sys.argv[1], "a", buffering=1)
i = 0
while not done:
    i += 1
    f.write("tick %d\n" % i)
    time.sleep(0.01)
bad = []
if b.getsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE) != inline:
    bad.append("SO_OOBINLINE changed")
b.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 0)
b.setblocking(False)
if b.recv(1, socket.MSG_OOB) != b"X":
    bad.append("no OOB byte")
got = b""
while True:
    try:
        got += b.recv(100)
    except BlockingIOError:
        break
if got != b"abcdef":
    bad.append("in-band %r" % got)
for x in bad:
    f.write("FAIL: %s\n" % x)
f.write("done %s\n" % ("FAILED" if bad else "ok"))
sys.exit(3 if bad else 0)
`
			w := startWorkload(t, "/usr/bin/python3", "-c", prog)
			code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir())
			oneLineError(t, code, out, "out-of-band byte (MSG_OOB) is queued")
			if !strings.Contains(out, "fd ") {
				t.Errorf("the error does not name the fd: %s", out)
			}
			w.waitTicks(3)
			w.finishOriginal(t, "after a refused dump")
			if !strings.Contains(readFile(w.log), "done ok\n") {
				t.Fatalf("no ok in the log\n%s", w.tail())
			}
		})
	}
}

// The socket options of unix sockets come back (SO_LINGER, SO_KEEPALIVE,
// SO_OOBINLINE, SO_REUSEADDR beside the older ones), on both ends of a
// stream pair and a datagram pair; the options no image field carries
// are refused at dump by name when set, and the program runs on.
func TestUnixSocketOpts(t *testing.T) {
	needRoot(t)
	const prog = `import os, signal, socket, struct, sys, time
S = socket.SOL_SOCKET
a, b = socket.socketpair()
a.setsockopt(S, socket.SO_LINGER, struct.pack("ii", 1, 7))
a.setsockopt(S, socket.SO_KEEPALIVE, 1)
b.setsockopt(S, socket.SO_OOBINLINE, 1)
b.setsockopt(S, socket.SO_REUSEADDR, 1)
c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
c.setsockopt(S, socket.SO_KEEPALIVE, 1)
d.setsockopt(S, socket.SO_LINGER, struct.pack("ii", 1, 0))
def opts():
    return [(s.getsockopt(S, socket.SO_LINGER, 8), s.getsockopt(S, socket.SO_KEEPALIVE), s.getsockopt(S, socket.SO_OOBINLINE),
             s.getsockopt(S, socket.SO_REUSEADDR), s.getsockopt(S, 83)) for s in (a, b, c, d)]
before = opts()
done = []
signal.signal(signal.SIGUSR1, lambda *x: done.append(1))
f = open(sys.argv[1], "a", buffering=1)
i = 0
while not done:
    i += 1
    f.write("tick %d\n" % i)
    time.sleep(0.01)
after = opts()
if after != before:
    f.write("FAIL: options %r, want %r\n" % (after, before))
f.write("done %s\n" % ("FAILED" if after != before else "ok"))
sys.exit(3 if after != before else 0)
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

func TestUnixSocketOptsRefused(t *testing.T) {
	needRoot(t)
	const ticker = `
f = open(sys.argv[1], "a", buffering=1)
i = 0
while True:
    i += 1
    f.write("tick %d\n" % i)
    time.sleep(0.01)
`
	for _, c := range []struct{ name, setup, want string }{
		{"passrights", `a, b = socket.socketpair(); a.setsockopt(socket.SOL_SOCKET, 83, 0)`, "SO_PASSRIGHTS is 0 (a new socket's: 1)"},
		{"timestamp", `a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET); b.setsockopt(socket.SOL_SOCKET, 29, 1)`, "SO_TIMESTAMP is 1"},
		{"timestampns", `a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM); b.setsockopt(socket.SOL_SOCKET, 35, 1)`, "SO_TIMESTAMPNS is 1"},
		{"passpidfd", `a, b = socket.socketpair(); b.setsockopt(socket.SOL_SOCKET, 76, 1)`, "SO_PASSPIDFD is 1"},
		{"linger-off", `import struct; a, b = socket.socketpair(); b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 5)); b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 0, 0))`, "SO_LINGER is off with a time of 5 s"},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := startWorkload(t, "/usr/bin/python3", "-c", "import os, socket, sys, time\n"+c.setup+ticker)
			code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir())
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
