package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// migrate send takes dump's file options to its final dump: a program
// holding a deleted file larger than the default --ghost-limit (1 MiB)
// does not move without --ghost-limit (the source runs on), and moves with
// it, the file's contents still behind its descriptor. --external tty[]
// is refused before anything starts: its restore needs --inherit-fd.
func TestMigrateFileOptions(t *testing.T) {
	m := newMigLab(t)
	m.startAgent()
	ghost := filepath.Join(t.TempDir(), "ghost")
	data := make([]byte, 2<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	if err := os.WriteFile(ghost, data, 0o600); err != nil {
		t.Fatal(err)
	}
	w := startOn(t, m.a, "sh", "-c", `exec 7<"$0"; rm "$0"; exec "$@"`, ghost, workloads["counter"], "-m", "4")
	code, res, stderr := m.send(w, "--max-rounds", "0")
	if code == 0 || !strings.Contains(stderr, "over --ghost-limit") {
		t.Fatalf("a 2 MiB deleted file without --ghost-limit: exit %d, %+v: %s", code, res, stderr)
	}
	intact(t, w)
	code, _, stderr = m.send(w, "--max-rounds", "0", "--external", "tty[8800:12]")
	if code == 0 || !strings.Contains(stderr, "needs --inherit-fd") {
		t.Fatalf("--external tty[]: exit %d: %s", code, stderr)
	}
	intact(t, w)
	code, _, stderr = m.send(w, "--max-rounds", "0", "--ghost-limit", "4M", "--link-remap", "--evasive-devices", "--force-irmap")
	if code != 0 {
		t.Fatalf("migrate send --ghost-limit 4M: exit %d: %s", code, stderr)
	}
	rp := m.moved(w)
	fd := "/proc/" + strconv.Itoa(rp) + "/fd/7"
	if l, err := os.Readlink(fd); err != nil || !strings.HasSuffix(l, "(deleted)") {
		t.Errorf("fd 7 of the moved program: %q, %v: want the deleted file", l, err)
	}
	got, err := os.ReadFile(fd)
	if err != nil || string(got) != string(data) {
		t.Errorf("the deleted file's contents after the move: %d bytes, %v", len(got), err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(fd, &st); err != nil || st.Nlink != 0 {
		t.Errorf("fd 7 of the moved program: %v, %d links: want none", err, st.Nlink)
	}
	finishMoved(t, w, rp)
}
