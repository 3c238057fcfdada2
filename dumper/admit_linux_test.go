package dumper

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"godwit/internal/images"
)

// Options.Admit sees the frozen tree's pids; its refusal fails the dump
// before anything is written, and the program runs on untraced.
func TestDumpAdmit(t *testing.T) {
	needRoot(t)
	p := startCounter(t, true, "-m", "4")
	dir := t.TempDir()
	o := dumpOpts(p.Pid, dir)
	var seen []int
	o.Admit = func(pids []int) error {
		seen = pids
		return errors.New("not this one")
	}
	_, err := Dump(o, nil)
	if err == nil || !strings.Contains(err.Error(), "not this one") {
		t.Fatalf("dump refused by Admit: %v", err)
	}
	if !slices.Equal(seen, []int{p.Pid}) {
		t.Errorf("Admit saw %v, want [%d]", seen, p.Pid)
	}
	assertRunningUntraced(t, p.Pid)
	if _, err := os.Stat(filepath.Join(dir, images.InventoryImg)); err == nil {
		t.Error("inventory written by a refused dump")
	}
}
