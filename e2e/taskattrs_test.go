package e2e

import (
	"strings"
	"testing"
)

// TestRestoreTaskAttrs dumps workloads/taskattrs.c, whose two threads
// each set their own CPU affinity, timer slack, TSC and machine-check
// policies and I/O priority, and which set coredump_filter and
// memory-deny-write-execute, and restores it through the binary: the
// restored program finds every value as it set it (MDWE and the TSC by
// their effect too).
func TestRestoreTaskAttrs(t *testing.T) {
	needRoot(t)
	w := startWorkload(t, cWorkload(t, "taskattrs"))
	dir := w.dump(t)
	w.reapKilled(t)
	r := restore(t, w, dir)
	code := r.finish(t, w)
	log := readFile(w.log)
	if code != 0 || !strings.Contains(log, "done bad=0") {
		t.Fatalf("restored program exited %d\n%s", code, w.tail())
	}
}
