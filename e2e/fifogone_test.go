package e2e

import (
	"strconv"
	"strings"
	"testing"
)

// A FIFO whose name was removed is refused as a FIFO (it was named a
// "deleted file"), and the program runs on with its queued bytes.
func TestFIFORemovedRefused(t *testing.T) {
	needRoot(t)
	const prog = `import os, signal, sys, time
p = sys.argv[1] + ".fifo"; os.mkfifo(p)
r = os.open(p, os.O_RDONLY | os.O_NONBLOCK); w = os.open(p, os.O_WRONLY); os.write(w, b"fifo-q")
os.unlink(p)
done = []
signal.signal(signal.SIGUSR1, lambda *x: done.append(1))
f = open(sys.argv[1], "a", buffering=1)
i = 0
while not done:
    i += 1
    f.write("tick %d\n" % i)
    time.sleep(0.01)
ok = os.read(r, 100) == b"fifo-q"
f.write("done %s\n" % ("ok" if ok else "FAILED"))
sys.exit(0 if ok else 3)
`
	w := startWorkload(t, "/usr/bin/python3", "-c", prog)
	code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir())
	oneLineError(t, code, out, "a FIFO whose name was removed: not supported yet")
	if !strings.Contains(out, "fd 3: fifo ") {
		t.Errorf("the error does not name the fd and its kind: %s", out)
	}
	w.waitTicks(3)
	w.finishOriginal(t, "after a refused dump")
	if !strings.Contains(readFile(w.log), "done ok\n") {
		t.Fatalf("no ok in the log\n%s", w.tail())
	}
}
