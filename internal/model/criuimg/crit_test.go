package criuimg

import (
	"os"
	"os/exec"
	"testing"
)

// critPath finds Debian's crit, the oracle for CRIU's image format. As
// root it must exist (scripts/setup installs it); only a non-root run,
// which cannot have run the setup, may go without.
func critPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("crit")
	if err != nil {
		if os.Geteuid() == 0 {
			t.Fatalf("crit not found (scripts/setup installs Debian's criu package): %v", err)
		}
		t.Skipf("not root and crit not installed (scripts/setup, as root, installs it): %v", err)
	}
	return p
}
