package dumper

import (
	"os"
	"path/filepath"
	"testing"

	"godwit/internal/testutil"
)

// TestMain marks every inherited fd above stderr close-on-exec, so that
// workloads started by the tests hold only the fds they open themselves
// (an fd leaked into `go test` by its caller would otherwise make every
// dump fail on an unsupported fd kind).
func TestMain(m *testing.M) {
	if arg := os.Getenv(benchChildEnv); arg != "" {
		benchChild(arg)
		os.Exit(0)
	}
	if arg := os.Getenv(lazyServeEnv); arg != "" {
		os.Exit(lazyServeChild(arg))
	}
	testutil.CloseInheritedFDs()
	code := m.Run()
	testutil.RemoveBuilds()
	if rewriterBin != "" {
		os.RemoveAll(filepath.Dir(rewriterBin))
	}
	os.Exit(code)
}
