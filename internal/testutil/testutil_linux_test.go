package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestMain(m *testing.M) {
	code := m.Run()
	RemoveBuilds()
	os.Exit(code)
}

func TestStartWait(t *testing.T) {
	log := filepath.Join(t.TempDir(), "log")
	p := Start(t, exec.Command("/bin/sh", "-c", "echo ready >"+log+"; read x; exit 3"), log, "ready")
	if p.Pid <= 0 || p.Log != log {
		t.Fatalf("proc %+v", p)
	}
	// stdin is /dev/null, so read sees EOF and the shell exits 3.
	if st := p.Wait(t); st != 3 {
		t.Fatalf("exit status %d, want 3", st)
	}
	p.Reaped(t) // already reaped: must return at once
}

func TestStartKilledAtCleanup(t *testing.T) {
	var p *Proc
	t.Run("inner", func(t *testing.T) {
		p = Start(t, exec.Command("/bin/sleep", "60"), "", "")
	})
	if !p.exited {
		t.Fatalf("pid %d not reaped after its test ended", p.Pid)
	}
}

func TestCounterBin(t *testing.T) {
	for _, static := range []bool{false, true} {
		bin := CounterBin(t, static)
		if _, err := exec.LookPath(bin); err != nil {
			t.Errorf("built %s: %v", bin, err)
		}
	}
}
