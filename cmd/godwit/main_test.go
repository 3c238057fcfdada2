package main

import (
	"os"
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
