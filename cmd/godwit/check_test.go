package main

import (
	"strings"
	"testing"
)

// check prints its verdict on stdout and the missing features on stderr,
// so that scripts can read the verdict alone. soft_dirty is off on these
// kernels (and lazy restore not built), so --all never looks good.
func TestCheckStreams(t *testing.T) {
	needRoot(t)
	code, stdout, stderr := runGodwit("check", "--all")
	if code != 1 || !strings.HasPrefix(stdout, "Looks good but") || strings.Contains(stdout, "mem_dirty_track") {
		t.Errorf("check --all: exit %d, stdout %q", code, stdout)
	}
	if !strings.Contains(stderr, "Warn  (kerndat): soft_dirty:") || strings.Contains(stderr, "Warn  (kerndat): mem_dirty_track:") {
		t.Errorf("check --all: stderr %q: want the soft_dirty warning and none for mem_dirty_track (pre-dump is built)", stderr)
	}
	if code, stdout, _ := runGodwit("check"); code != 0 || stdout != "Looks good.\n" {
		t.Errorf("check: exit %d, stdout %q", code, stdout)
	}
}

// --feature answers for godwit, not for the kernel alone: a feature whose
// command is not built is not supported, exit 1 as CRIU's check does.
func TestCheckFeatureNotBuilt(t *testing.T) {
	needRoot(t)
	if code, stdout, _ := runGodwit("check", "--feature", "mem_dirty_track"); code != 0 || !strings.Contains(stdout, "mem_dirty_track is supported") {
		t.Errorf("check --feature mem_dirty_track: exit %d, %q (pre-dump is built)", code, stdout)
	}
	for _, n := range []string{"pidfd_store"} {
		code, stdout, stderr := runGodwit("check", "--feature", n)
		if code != 1 || stdout != n+" is not supported\n" || !strings.HasPrefix(stderr, "Warn  (kerndat): "+n+": ") {
			t.Errorf("check --feature %s: exit %d, stdout %q, stderr %q", n, code, stdout, stderr)
		}
	}
	for _, n := range []string{"tcp_repair", "lazy_pages"} {
		if code, stdout, _ := runGodwit("check", "--feature", n); code != 0 || stdout != n+" is supported\n" {
			t.Errorf("check --feature %s: exit %d, stdout %q", n, code, stdout)
		}
	}
}
