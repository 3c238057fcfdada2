package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMain lets the test binary stand in for godwit: with GODWIT_AS_MAIN
// set it runs the CLI, so tests exercise the real entry point in child
// processes (swrk, service, --daemon) without a separate build.
func TestMain(m *testing.M) {
	if os.Getenv("GODWIT_AS_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// godwitBin returns the path of a godwit stand-in and sets the environment
// that makes it one, for child processes of this test.
func godwitBin(t *testing.T) string {
	t.Helper()
	t.Setenv("GODWIT_AS_MAIN", "1")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the kernel probes seize processes with ptrace and open userfaultfds")
	}
}

// A failed command with --log-file ends its log with the error, where
// runc and test runners read it, and still prints it on stderr.
func TestErrorInLogFile(t *testing.T) {
	dir := t.TempDir()
	var out, errb strings.Builder
	code := run([]string{"restore", "-D", dir, "-o", "restore.log"}, &out, &errb)
	if code == 0 {
		t.Fatal("restore of an empty directory succeeded")
	}
	b, err := os.ReadFile(filepath.Join(dir, "restore.log"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	last := lines[len(lines)-1]
	if !strings.HasPrefix(last, "Error: ") || !strings.Contains(errb.String(), strings.TrimPrefix(last, "Error: ")) {
		t.Fatalf("last log line %q; stderr %q", last, errb.String())
	}
}

// restore -j is built (the task joins godwit's session and group): it is
// not refused as an option of the future.
func TestRestoreShellJobAccepted(t *testing.T) {
	var out, errb strings.Builder
	if code := run([]string{"restore", "-j", "-D", t.TempDir()}, &out, &errb); code == 0 || strings.Contains(errb.String(), "not supported yet") {
		t.Fatalf("restore -j of an empty directory: exit %d, %q", code, errb.String())
	}
}
