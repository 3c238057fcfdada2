package restorer

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
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

// TestOrphaningMember: the kernel skips only children of the global init
// (not of a pid namespace's init) and exited members, and a member whose
// parent cannot be seen is refused rather than guessed.
func TestOrphaningMember(t *testing.T) {
	const grp, sid = 50, 40
	other := &procfs.Stat{Pgrp: 41, Session: sid}  // another group, same session
	same := &procfs.Stat{Pgrp: grp, Session: sid}  // the group itself
	outside := &procfs.Stat{Pgrp: 41, Session: 30} // another session
	child := func(ppid int) *procfs.Stat { return &procfs.Stat{State: 'S', Ppid: ppid, Pgrp: grp, Session: sid} }
	for _, c := range []struct {
		name   string
		pid    int
		st, pp *procfs.Stat
		initNS bool
		want   bool
	}{
		{"parent in another group of the session", 60, child(7), other, true, false},
		{"parent in the group", 60, child(7), same, true, true},
		{"parent in another session", 60, child(7), outside, true, true},
		{"child of the global init", 60, child(1), other, true, true},
		{"child of a namespace's init", 60, child(1), other, false, false},
		{"zombie", 60, &procfs.Stat{State: 'Z', Ppid: 7, Pgrp: grp, Session: sid}, other, false, true},
		{"the global init", 1, child(0), nil, true, true},
	} {
		got, err := orphaningMember(c.pid, c.st, c.pp, grp, sid, c.initNS)
		if err != nil || got != c.want {
			t.Errorf("%s: %v, %v; want %v", c.name, got, err, c.want)
		}
	}
	for _, initNS := range []bool{true, false} {
		if _, err := orphaningMember(60, child(0), nil, grp, sid, initNS); err == nil || !strings.Contains(err.Error(), "not visible") {
			t.Errorf("invisible parent (initial ns %v): %v", initNS, err)
		}
	}
	if _, err := orphaningMember(1, child(0), nil, grp, sid, false); err == nil {
		t.Error("a namespace's init, parent outside: accepted")
	}
	// godwit runs in procfs's namespace here: it is the initial one
	// exactly when godwit's own is.
	initNS, err := procInitialPidNS()
	if err != nil {
		t.Fatal(err)
	}
	l, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		t.Fatal(err)
	}
	if want := l == "pid:[4026531836]"; initNS != want {
		t.Errorf("procfs in the initial pid namespace: %v; own namespace %s", initNS, l)
	}
}
