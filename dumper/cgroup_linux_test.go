package dumper

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"godwit/internal/ptrace"
)

// A freeze_cgroup naming a directory that only looks like a cgroup (made
// by whoever asked): cgroup.procs holding the process, cgroup.events
// saying not frozen, cgroup.freeze a link to a file only root may write.
// The dump must refuse it and write nothing through the link.
func TestFreezeCgroupRefusesLookalikeDir(t *testing.T) {
	needRoot(t)
	d := t.TempDir()
	victim := filepath.Join(d, "victim") // stands for /etc/shadow
	if err := os.WriteFile(victim, []byte("precious\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fake := filepath.Join(d, "cg")
	if err := os.Mkdir(fake, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(fake, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(fake, "cgroup.events"), []byte("populated 1\nfrozen 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(fake, "cgroup.freeze")); err != nil {
		t.Fatal(err)
	}
	tr := ptrace.New()
	defer tr.Close()
	_, err := freezeViaCgroup(tr, fake, os.Getpid())
	if err == nil || !strings.Contains(err.Error(), "not on cgroupfs") {
		t.Errorf("freezeViaCgroup on a look-alike directory: %v", err)
	}
	if b, err := os.ReadFile(victim); err != nil || string(b) != "precious\n" {
		t.Errorf("file behind the link: %q, %v", b, err)
	}
}
