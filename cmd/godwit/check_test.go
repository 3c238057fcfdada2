package main

import (
	"strings"
	"testing"
)

// check prints its verdict on stdout and the missing features on stderr,
// so that scripts can read the verdict alone.
func TestCheckStreams(t *testing.T) {
	needRoot(t)
	code, stdout, stderr := runGodwit("check", "--all")
	if code != 1 || !strings.HasPrefix(stdout, "Looks good but") || strings.Contains(stdout, "soft_dirty") {
		t.Errorf("check --all: exit %d, stdout %q", code, stdout)
	}
	if !strings.Contains(stderr, "Warn  (kerndat): soft_dirty:") {
		t.Errorf("check --all: stderr %q lacks the soft_dirty warning", stderr)
	}
	if code, stdout, _ := runGodwit("check"); code != 0 || stdout != "Looks good.\n" {
		t.Errorf("check: exit %d, stdout %q", code, stdout)
	}
}
