package restorer

import (
	"os/exec"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestPgrpOrphaned checks the orphaned-group test against the kernel's
// notion: a child in a group of its own in our session is not orphaned
// (we, its parent, are in another group of that session); one in a
// session of its own is.
func TestPgrpOrphaned(t *testing.T) {
	start := func(attr *syscall.SysProcAttr) int {
		c := exec.Command("sleep", "60")
		c.SysProcAttr = attr
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Process.Kill(); c.Wait() })
		return c.Process.Pid
	}
	grp := start(&syscall.SysProcAttr{Setpgid: true})
	sess := start(&syscall.SysProcAttr{Setsid: true})
	sid, err := unix.Getsid(0)
	if err != nil {
		t.Fatal(err)
	}
	if o, err := pgrpOrphaned(grp, sid); err != nil || o {
		t.Errorf("group %d in our session: orphaned %v, %v; want false", grp, o, err)
	}
	if o, err := pgrpOrphaned(sess, sess); err != nil || !o {
		t.Errorf("group %d in its own session: orphaned %v, %v; want true", sess, o, err)
	}
	if err := canStopWith(sess, unix.SIGTSTP); err == nil {
		t.Errorf("SIGTSTP for a task of an orphaned group: accepted")
	}
	if err := canStopWith(sess, unix.SIGSTOP); err != nil {
		t.Errorf("SIGSTOP: %v", err)
	}
	if err := canStopWith(grp, unix.SIGTTIN); err != nil {
		t.Errorf("SIGTTIN for a task of a group with a parent outside: %v", err)
	}
}
