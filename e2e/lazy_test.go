package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestLazyRestoreCLI: godwit lazy-pages serves a restore --lazy-pages of
// the counter, which then passes its own checks; the daemon exits 0 once
// every page is in.
func TestLazyRestoreCLI(t *testing.T) {
	needRoot(t)
	w := startC(t, false, "-m", "32", "-t", "2")
	dir := w.dump(t)
	w.reapKilled(t)
	lp := exec.Command(godwitBin, "lazy-pages", "-D", dir, "-v4", "-o", "lazy-pages.log", "--display-stats")
	var out bytes.Buffer
	lp.Stdout, lp.Stderr = &out, &out
	if err := lp.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- lp.Wait() }()
	t.Cleanup(func() {
		lp.Process.Kill()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
	})
	sock := filepath.Join(dir, "lazy-pages.socket")
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lazy-pages not listening: %s", out.String())
		}
	}
	r := restore(t, w, dir, "--lazy-pages")
	select {
	case err := <-done:
		done <- err
		if err != nil {
			t.Fatalf("lazy-pages: %v: %s\n%s", err, out.String(), readFile(filepath.Join(dir, "lazy-pages.log")))
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("lazy-pages did not finish: %s", out.String())
	}
	if !bytes.Contains(out.Bytes(), []byte("Lazy tasks: 1")) {
		t.Fatalf("lazy-pages --display-stats: %q", out.String())
	}
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("restored counter exited %d\n%s", code, w.tail())
	}
}
