package dumper

import (
	"fmt"
	"os"
	"testing"

	"golang.org/x/sys/unix"
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
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		for _, e := range ents {
			var fd int
			if _, err := fmt.Sscan(e.Name(), &fd); err == nil && fd > 2 {
				unix.CloseOnExec(fd)
			}
		}
	}
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}
