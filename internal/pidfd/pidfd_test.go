package pidfd

import (
	"os/exec"
	"strings"
	"testing"
)

func TestVerifyFollowsTheProcess(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	p, err := Open(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Verify(); err != nil {
		t.Fatalf("live process: %v", err)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait() // reaped: the PID is free for reuse
	err = p.Verify()
	if err == nil || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("Verify after exit = %v, want an exited error", err)
	}
}

func TestOpenMissing(t *testing.T) {
	if _, err := Open(1 << 30); err == nil {
		t.Fatal("Open of a pid that cannot exist succeeded")
	}
}
