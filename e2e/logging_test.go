package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// lastLine is the last non-empty line of file p.
func lastLine(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return lines[len(lines)-1]
}

// A failed run's error is the last line of --log-file (where runc and
// test runners read it), as well as on stderr.
func TestLogFileNamesFailure(t *testing.T) {
	needRoot(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"dump", "-t", "999999999"}, "999999999"},
		{[]string{"dump", "-t", "1", "--tcp-established"}, "--tcp-established is not supported yet"},
		{[]string{"restore"}, "inventory.img"},
	} {
		dir := t.TempDir()
		code, out := godwit(t, append(c.args, "-D", dir, "-o", "run.log")...)
		if code == 0 {
			t.Fatalf("%v: exit 0", c.args)
		}
		last := lastLine(t, filepath.Join(dir, "run.log"))
		if !strings.HasPrefix(last, "Error: ") || !strings.Contains(last, c.want) {
			t.Errorf("%v: last log line %q, want an error naming %q", c.args, last, c.want)
		}
		if !strings.Contains(out, c.want) {
			t.Errorf("%v: stderr %q does not name %q", c.args, out, c.want)
		}
	}
}

// Every message at the chosen level goes to the file; --log-pid puts each
// task's lines in FILE.PID, as CRIU does, the run's own in FILE.
func TestLogPid(t *testing.T) {
	needRoot(t)
	w := startC(t, false, "-t", "2")
	dir := w.dump(t, "--log-pid")
	w.reapKilled(t)
	pid := strconv.Itoa(w.pid)
	task := readFile(filepath.Join(dir, "dump.log."+pid))
	if !strings.Contains(task, "dump "+pid+": froze 3 threads") || !strings.Contains(task, "pages written") {
		t.Errorf("dump.log.%s lacks the task's info lines:\n%s", pid, task)
	}
	if strings.Contains(readFile(filepath.Join(dir, "dump.log")), "froze") {
		t.Errorf("dump.log holds the task's lines despite --log-pid")
	}
	r := restore(t, w, dir, "--log-pid")
	if got := readFile(filepath.Join(dir, "restore.log."+pid)); !strings.Contains(got, "restore "+pid+": ") {
		t.Errorf("restore.log.%s lacks the task's lines:\n%s", pid, got)
	}
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("restored program exit %d: %s", code, w.tail())
	}
}
