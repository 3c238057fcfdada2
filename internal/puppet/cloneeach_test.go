package puppet

import (
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/abi/linux"
)

// TestCloneEach makes three children in one session, the second sharing
// the puppet's fd table: each has its pid, is the puppet's child, traced
// and stopped with an empty signal mask, and shares exactly what it was
// asked to; a taken pid fails, naming no child, and the children made
// before it are returned.
func TestCloneEach(t *testing.T) {
	needRoot(t)
	tr, p := startPuppet(t)
	var (
		specs []CloneSpec
		kids  []*Puppet
		err   error
	)
	// Picked pids can be taken by someone else's fork before the clone
	// (or picked twice): pick again rather than skip.
	for try := 0; ; try++ {
		specs = nil
		for i := 0; i < 3; i++ {
			specs = append(specs, CloneSpec{Pid: freePid(t)})
		}
		specs[1].Flags = unix.CLONE_FILES
		kids, err = p.CloneEach(specs)
		for _, c := range kids {
			if c != nil {
				t.Cleanup(func() { c.Kill() })
			}
		}
		if !errors.Is(err, ErrPidInUse) || try == 3 {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range kids {
		if c == nil || c.Pid != specs[i].Pid {
			t.Fatalf("child %d: %+v, want pid %d", i, c, specs[i].Pid)
		}
		assertTracedStopped(t, tr, c.Pid, p.Pid)
		if m, err := tr.GetSigmask(c.Pid); err != nil || m != 0 {
			t.Errorf("sigmask of %d: %#x, %v", c.Pid, m, err)
		}
		same := kcmpFiles(t, p.Pid, c.Pid)
		if same != (specs[i].Flags&unix.CLONE_FILES != 0) {
			t.Errorf("child %d shares the fd table: %v, want %v", c.Pid, same, !same)
		}
	}
	if m, err := tr.GetSigmask(p.Pid); err != nil || m != 0 {
		t.Errorf("sigmask of the puppet: %#x, %v", m, err)
	}
	// A pid in use: the first is made, the second fails.
	free := freePid(t)
	made, err := p.CloneEach([]CloneSpec{{Pid: free}, {Pid: kids[0].Pid}})
	if made[0] != nil {
		t.Cleanup(func() { made[0].Kill() })
	}
	if !errors.Is(err, ErrPidInUse) || made[0] == nil || made[0].Pid != free || made[1] != nil {
		t.Fatalf("clone with a taken pid second: %v, %+v", err, made)
	}
	deadline := time.Now().Add(10 * time.Second)
	for n := len(tr.Traced()); n != 5; n = len(tr.Traced()) {
		if time.Now().After(deadline) {
			t.Fatalf("tracer holds %d tasks, want 5 (the puppet and 4 children)", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// kcmpFiles reports whether a and b share one fd table.
func kcmpFiles(t *testing.T, a, b int) bool {
	r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(a), uintptr(b), linux.KcmpFiles, 0, 0, 0)
	if e != 0 {
		t.Fatalf("kcmp %d %d: %v", a, b, e)
	}
	return r == 0
}
