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
