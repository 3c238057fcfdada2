package e2e

import (
	"strconv"
	"strings"
	"testing"
)

// A pty end whose output was stopped (tcflow TCOOFF, as ^S does) is
// refused at dump by name: a restore would bring it back running. The
// program runs on, the end still stopped (a non-blocking write gets
// EAGAIN), and it writes again once resumed (TCOON).
func TestPtyStoppedRefused(t *testing.T) {
	needRoot(t)
	for _, end := range []string{"slave", "master"} {
		t.Run(end, func(t *testing.T) {
			prog := `import os, signal, sys, termios, time
m, s = os.openpty()
a = termios.tcgetattr(s); a[3] &= ~termios.ECHO; termios.tcsetattr(s, termios.TCSANOW, a)
w = ` + map[string]string{"slave": "s", "master": "m"}[end] + `
termios.tcflow(w, termios.TCOOFF)
os.set_blocking(w, False)
done = []
signal.signal(signal.SIGUSR1, lambda *x: done.append(1))
f = open(sys.argv[1], "a", buffering=1)
i = 0
while not done:
    i += 1
    f.write("tick %d\n" % i)
    time.sleep(0.01)
bad = []
try:
    os.write(w, b"x")
    bad.append("a write went through: output not stopped")
except BlockingIOError:
    pass
termios.tcflow(w, termios.TCOON)
if os.write(w, b"y") != 1:
    bad.append("no write after TCOON")
for x in bad:
    f.write("FAIL: %s\n" % x)
f.write("done %s\n" % ("FAILED" if bad else "ok"))
sys.exit(3 if bad else 0)
`
			w := startWorkload(t, "/usr/bin/python3", "-c", prog)
			code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir())
			oneLineError(t, code, out, "its "+end+" cannot be written to now (output stopped by tcflow TCOOFF")
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
