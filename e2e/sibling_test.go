package e2e

import (
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// TestRestoreSiblingPdeath restores, with -d --restore-sibling, a program
// with a parent-death signal (counter -p: SIGKILL) from a shell that
// stays: the root is the shell's child, and its signal is restored, so
// killing the shell kills it.
func TestRestoreSiblingPdeath(t *testing.T) {
	needRoot(t)
	w := startC(t, false, "-p")
	dir := w.dump(t)
	w.reapKilled(t)
	sh := exec.Command("/bin/sh", "-c", `"$@"; exec sleep 600`, "sh", godwitBin, "restore", "-D", dir, "-d", "--restore-sibling", "-v4", "-o", "restore.log")
	sh.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- sh.Wait() }()
	t.Cleanup(func() {
		killAndForget(sh.Process.Pid)
		killAndForget(w.pid)
		select {
		case <-waited:
		case <-time.After(5 * time.Second):
		}
	})
	waitFor(t, "the restored program to run", func() bool {
		st, ok := statOf(w.pid)
		return ok && alive(w.pid) && tracerOf(w.pid) == 0 && st.Ppid == sh.Process.Pid
	})
	w.waitTicks(2)
	if err := syscall.Kill(sh.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for alive(w.pid) {
		if time.Now().After(deadline) {
			t.Fatalf("restored pid %d outlived its parent %d: parent-death signal lost\n%s", w.pid, sh.Process.Pid, readFile(dir+"/restore.log"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
