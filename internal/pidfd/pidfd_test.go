package pidfd

import (
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
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

// ExitStatus reads a reaped child's wait status through its pidfd.
func TestExitStatus(t *testing.T) {
	var pfd int
	cmd := exec.Command("/bin/sh", "-c", "exit 7")
	cmd.SysProcAttr = &syscall.SysProcAttr{PidFD: &pfd}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pfd)
	_ = cmd.Wait()
	st, ok, err := ExitStatus(pfd)
	if err != nil || !ok || st != 7<<8 {
		t.Fatalf("ExitStatus = %#x, %v, %v; want 0x700", st, ok, err)
	}
}
