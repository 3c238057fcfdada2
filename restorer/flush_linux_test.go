package restorer

import (
	"errors"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"godwit/internal/inject"
	"godwit/internal/ptrace"
)

// TestBatchFlushQueued: a failure of the session's own queued calls
// (Later) is returned by flush as is, never handed to the check of the
// batch's first call, which could swallow it.
func TestBatchFlushQueued(t *testing.T) {
	needRoot(t)
	cmd := exec.Command("sleep", "1000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		_ = unix.Kill(pid, unix.SIGKILL)
		_ = cmd.Wait()
	})
	tr := ptrace.New()
	t.Cleanup(func() { tr.Close() })
	if _, err := tr.Attach(pid, unix.PTRACE_O_EXITKILL); err != nil {
		t.Fatal(err)
	}
	scratch, err := tr.MapScratch(pid, 4096)
	if err != nil {
		t.Fatal(err)
	}
	s, err := inject.Begin(tr, pid, pid, scratch, 4096)
	if err != nil {
		t.Fatal(err)
	}
	s.Later("close bad", unix.SYS_CLOSE, 9999)
	checked := false
	b := batch{s: s}
	b.add(inject.C("close also bad", unix.SYS_CLOSE, 9998), func(ret uint64, err error) error {
		checked = true
		return nil // an EBADF of its own would be fine
	})
	b.add(inject.C("umask 077", unix.SYS_UMASK, 0o77), nil)
	err = b.flush()
	if err == nil || !errors.Is(err, inject.ErrQueued) || !strings.Contains(err.Error(), "close bad") {
		t.Fatalf("flush after a failed queued call: %v", err)
	}
	if checked {
		t.Fatal("the queued call's failure went to the first call's check")
	}
	// The batch's own calls did not run.
	if old, err := s.Call("umask 0", unix.SYS_UMASK, 0); err != nil || old == 0o77 {
		t.Fatalf("umask %#o, %v: the batch ran after the queue failed", old, err)
	}
	if err := s.End(nil); err != nil {
		t.Fatal(err)
	}
	if err := tr.UnmapScratch(pid, scratch, 4096); err != nil {
		t.Fatal(err)
	}
}
