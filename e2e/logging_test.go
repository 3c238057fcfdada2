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
		{[]string{"dump", "-t", "1", "--tcp-close"}, "--tcp-close is not supported yet"},
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

// Every message at the chosen level goes to the file; with --log-pid, as
// in CRIU, a restored task's lines go to FILE.PID and the run's own stay
// in FILE (a dump, which CRIU runs in one process, keeps one file).
func TestLogPid(t *testing.T) {
	needRoot(t)
	w := startC(t, false, "-t", "2")
	dir := w.dump(t, "--log-pid")
	w.reapKilled(t)
	pid := strconv.Itoa(w.pid)
	if got := readFile(filepath.Join(dir, "dump.log")); !strings.Contains(got, "dump "+pid+": froze") || !strings.Contains(got, "pages written") {
		t.Errorf("dump.log lacks the info lines:\n%s", got)
	}
	r := restore(t, w, dir, "--log-pid")
	// godwit stays the restored program's parent: read its logs once it
	// has exited, with everything written.
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("restored program exit %d: %s", code, w.tail())
	}
	if got := readFile(filepath.Join(dir, "restore.log."+pid)); !strings.Contains(got, "restore "+pid+": ") || !strings.Contains(got, "VMAs laid out") {
		t.Errorf("restore.log.%s lacks the task's lines:\n%s", pid, got)
	}
	if got := readFile(filepath.Join(dir, "restore.log")); strings.Contains(got, "VMAs laid out") || !strings.Contains(got, "pages in") {
		t.Errorf("restore.log holds the task's lines, or lacks the run's:\n%s", got)
	}
}
