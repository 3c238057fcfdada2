package lazypages

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"godwit/dumper"
	"godwit/internal/testutil"
)

// TestLazyFaultPagesAboveMax: a FaultPages above maxFaultPages is clamped
// (it panicked under d.mu and hung the daemon).
func TestLazyFaultPagesAboveMax(t *testing.T) {
	needRoot(t)
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "img")
	os.Mkdir(dir, 0o700)
	log, goFile := filepath.Join(tmp, "log"), filepath.Join(tmp, "go")
	cmd := exec.Command(lazyBin(t), log, goFile, "16", "bench")
	p := testutil.Start(t, cmd, log, "ready")
	if _, err := dumper.Dump(dumper.Options{Pid: p.Pid, ImagesDir: dir}, nil); err != nil {
		t.Fatalf("dump: %v", err)
	}
	p.Reaped(t)
	res := startDaemon(t, Options{ImagesDir: dir, FaultPages: 300, PushPages: 16, pushPause: 5 * time.Millisecond})
	r, err := lazyRestore(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(goFile, nil, 0o600)
	checkLog(t, log, waitExit(t, r))
	d := <-res
	if d.err != nil {
		t.Fatal(d.err)
	}
}
