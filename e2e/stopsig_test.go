package e2e

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestStopSignals dumps workloads/stopsig.c, whose two children are
// stopped by SIGTSTP and SIGTTIN with their stop reports not yet waited
// for, and restores it: the restored parent's waitpid(WUNTRACED) reports
// each child stopped by its own signal, and SIGCONT resumes them.
func TestStopSignals(t *testing.T) {
	needRoot(t)
	w := startTree(t, cWorkload(t, "stopsig"))
	var ready []string
	waitFor(t, "the ready line", func() bool {
		ready = regexp.MustCompile(`ready T=(\d+) I=(\d+)`).FindStringSubmatch(readFile(w.log))
		return ready != nil
	})
	before := subtree(t, w.pid)
	t.Cleanup(func() {
		for p := range before {
			killAndForget(p)
		}
	})
	for _, s := range ready[1:] {
		p, _ := strconv.Atoi(s)
		if ti := before[p]; ti.State != 'T' {
			t.Fatalf("child %d is %c before the dump, want stopped", p, ti.State)
		}
	}
	dir := w.dump(t)
	w.reapKilled(t)
	for p := range before {
		waitFor(t, fmt.Sprintf("pid %d to go", p), func() bool { return !pidExists(p) })
	}
	r := restore(t, w, dir)
	after := subtree(t, w.pid)
	for p, want := range before {
		if p == w.pid {
			want.Ppid = r.cmd.Process.Pid
		}
		if got := after[p]; got != want {
			t.Errorf("task %d: restored %+v, want %+v", p, got, want)
		}
	}
	code := r.finish(t, w)
	log := readFile(w.log)
	if !strings.Contains(log, "stops ok") || !strings.Contains(log, "continued ok") || code != 0 {
		t.Fatalf("restored root exited %d\n%s", code, w.tail())
	}
	for _, s := range []string{"T continued", "I continued"} {
		if !strings.Contains(log, s) {
			t.Errorf("log lacks %q\n%s", s, w.tail())
		}
	}
}
