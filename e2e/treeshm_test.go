package e2e

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestTreeSharedSplit dumps and restores workloads/treeshare.c in split
// mode: a root and two children sharing one anonymous object, each task
// having unmapped the other tasks' slices, so that most pages of the
// object are mapped by one task only, and not by the root that the
// restore makes the object in. After the restore every task checks its
// own slice and the children answer through the one page all map.
func TestTreeSharedSplit(t *testing.T) {
	needRoot(t)
	w := startTree(t, cWorkload(t, "treeshare"), "split")
	m := regexp.MustCompile(`(?m)^ready (\d+) (\d+) (\d+)$`).FindStringSubmatch(readFile(w.log))
	if m == nil {
		t.Fatalf("no ready line\n%s", w.tail())
	}
	var pids []int
	for _, s := range m[1:] {
		n, _ := strconv.Atoi(s)
		pids = append(pids, n)
	}
	t.Cleanup(func() {
		for _, p := range pids[1:] {
			killAndForget(p)
		}
	})
	if pids[0] != w.pid {
		t.Fatalf("ready line names root %d, started %d", pids[0], w.pid)
	}
	dir := w.dump(t)
	w.reapKilled(t)
	for _, p := range pids {
		waitFor(t, fmt.Sprintf("pid %d to go", p), func() bool { return !pidExists(p) })
	}
	mark := len(mustRead(t, w.log))
	r := restore(t, w, dir)
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("restored root exited %d\n%s", code, w.tail())
	}
	after := "\n" + string(mustRead(t, w.log)[mark:])
	for k := range pids {
		if !strings.Contains(after, fmt.Sprintf("\nok %d ", k)) {
			t.Errorf("task %d did not find its pages after the restore:\n%s", k, after)
		}
	}
	if strings.Contains(after, "bad") || !strings.Contains(after, "shared ok") {
		t.Fatalf("after the restore:\n%s", after)
	}
}
