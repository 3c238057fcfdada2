package restorer

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/testutil"
)

// sessionOf returns pid's process group and session.
func sessionOf(t *testing.T, pid int) (int, int) {
	t.Helper()
	pgid, err := unix.Getpgid(pid)
	if err != nil {
		t.Fatal(err)
	}
	sid, err := unix.Getsid(pid)
	if err != nil {
		t.Fatal(err)
	}
	return pgid, sid
}

// sessionCase starts a counter with attr, dumps it and checks that the
// restored task is back in the dumped group and session.
func sessionCase(t *testing.T, attr *syscall.SysProcAttr) {
	needRoot(t)
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	imgs := filepath.Join(dir, "img")
	cmd := exec.Command(testutil.CounterBin(t, false), log)
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = null, null, null
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	reaped := false
	t.Cleanup(func() {
		if !reaped {
			_ = unix.Kill(pid, unix.SIGKILL)
			_ = cmd.Wait()
		}
	})
	testutil.WaitFor(t, log, "tick 3", 20*time.Second)
	pgid, sid := sessionOf(t, pid)
	dump(t, pid, imgs, nil)
	_ = cmd.Wait()
	reaped = true

	if sid == 0 {
		// godwit's own session leader is outside its pid namespace
		// (as under some CI runners): the session cannot be named, so
		// it cannot be proved the same, and the restore must refuse.
		restoreFails(t, imgs, pid, "outside the dump's pid namespace", "--shell-job")
		return
	}
	r := restore(t, imgs, nil)
	gotPgid, gotSid := sessionOf(t, r.PID())
	if gotPgid != pgid || gotSid != sid {
		t.Fatalf("restored %d in group %d session %d, want group %d session %d", r.PID(), gotPgid, gotSid, pgid, sid)
	}
	finish(t, r, log)
}

// A group leader in godwit's session: setpgid(0, 0).
func TestRestoreOwnGroup(t *testing.T) { sessionCase(t, &syscall.SysProcAttr{Setpgid: true}) }

// A session leader: setsid.
func TestRestoreSessionLeader(t *testing.T) { sessionCase(t, &syscall.SysProcAttr{Setsid: true}) }

// startLeader starts a process leading a group of its own, killed and
// reaped at test end (or by the returned func).
func startLeader(t *testing.T) (int, func()) {
	t.Helper()
	cmd := exec.Command("sleep", "600")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := false
	stop := func() {
		if !done {
			done = true
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}
	t.Cleanup(stop)
	return cmd.Process.Pid, stop
}

// A member of another task's group joins it again while it exists, and
// remakes it once its leader is dead.
func TestRestoreForeignGroup(t *testing.T) {
	needRoot(t)
	leader, stopLeader := startLeader(t)
	_, ownSid := sessionOf(t, os.Getpid())
	if ownSid != 0 {
		sessionCase(t, &syscall.SysProcAttr{Setpgid: true, Pgid: leader})
	}

	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	imgs := filepath.Join(dir, "img")
	cmd := exec.Command(testutil.CounterBin(t, false), log)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pgid: leader}
	w := testutil.Start(t, cmd, log, "tick 3")
	if pgid, _ := sessionOf(t, w.Pid); pgid != leader {
		t.Fatalf("workload in group %d, want %d", pgid, leader)
	}
	dump(t, w.Pid, imgs, nil)
	w.Reaped(t)
	if ownSid == 0 {
		// See sessionCase: the session cannot be named.
		restoreFailsBut(t, imgs, w.Pid, leader, "outside the dump's pid namespace", "--shell-job")
		return
	}
	stopLeader() // the group is gone with its last member

	// As CRIU, a helper task takes the dead leader's pid to make the
	// group again, the task joins it, and the helper goes.
	r := restore(t, imgs, nil)
	if pgid, _ := sessionOf(t, r.PID()); pgid != leader {
		t.Fatalf("restored %d in group %d, want the dead leader's group %d", r.PID(), pgid, leader)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", leader)); err == nil {
		t.Errorf("the group's helper %d is still there", leader)
	}
	finish(t, r, log)
}

// With ShellJob the task joins godwit's session and group, whatever it
// had (as CRIU's --shell-job).
func TestRestoreShellJob(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	imgs := filepath.Join(dir, "img")
	cmd := exec.Command(testutil.CounterBin(t, false), log)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	reaped := false
	t.Cleanup(func() {
		if !reaped {
			_ = unix.Kill(pid, unix.SIGKILL)
			_ = cmd.Wait()
		}
	})
	testutil.WaitFor(t, log, "tick 3", 20*time.Second)
	dump(t, pid, imgs, nil)
	_ = cmd.Wait()
	reaped = true

	if unix.Getpgrp() == 0 {
		// godwit's group leader is outside its pid namespace: the task
		// cannot be put in a group godwit cannot name.
		restoreFailsWith(t, imgs, pid, func(o *Options) { o.ShellJob = true }, "--shell-job", "process group leader")
		return
	}
	r := restore(t, imgs, func(o *Options) { o.ShellJob = true })
	sid, err := unix.Getsid(0)
	if err != nil {
		t.Fatal(err)
	}
	if pgid, gotSid := sessionOf(t, r.PID()); pgid != unix.Getpgrp() || gotSid != sid {
		t.Fatalf("restored %d in group %d session %d, want godwit's group %d session %d", r.PID(), pgid, gotSid, unix.Getpgrp(), sid)
	}
	finish(t, r, log)
}
