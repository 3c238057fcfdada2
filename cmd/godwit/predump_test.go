package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// pre-dump and dedup fail with one line on bad input.
func TestPreDumpDedupBadInput(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"dedup", "-D", filepath.Join(dir, "missing")}, "dedup: "},
		{[]string{"pre-dump", "-t", "999999", "-D", dir}, "pid 999999"},
	} {
		code, _, stderr := runGodwit(c.args...)
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		if code == 0 || !strings.Contains(stderr, c.want) || len(lines) != 1 {
			t.Errorf("godwit %v: exit %d, stderr %q; want one line with %q", c.args, code, stderr, c.want)
		}
	}
	// A directory without parents has nothing to deduplicate.
	if err := os.WriteFile(filepath.Join(dir, "inventory.img"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := runGodwit("dedup", "-D", dir); code != 0 {
		t.Errorf("dedup of a dump without parents: exit %d, %q", code, stderr)
	}
}
