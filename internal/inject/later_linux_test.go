package inject

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"godwit/internal/ptrace"
)

// TestLater: queued calls run in order before the next Call, a failing
// one is named there without its errno, and a Put over a range a queued
// call may read runs the queue first.
func TestLater(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (ptrace of a child is fine, but keep with the package's other tracer tests)")
	}
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
	s, err := Begin(tr, pid, pid, scratch, 4096)
	if err != nil {
		t.Fatal(err)
	}
	s.Later("umask 022", unix.SYS_UMASK, 0o22)
	s.Later("umask 077", unix.SYS_UMASK, 0o77)
	if old, err := s.Call("umask 0", unix.SYS_UMASK, 0); err != nil || old != 0o77 {
		t.Fatalf("umask after two queued: old %#o, %v; want 077", old, err)
	}
	s.Later("close bad", unix.SYS_CLOSE, 9999)
	_, err = s.Call("getpid", unix.SYS_GETPID)
	if err == nil || !strings.Contains(err.Error(), "close bad") {
		t.Fatalf("failing queued call: %v", err)
	}
	if en, ok := Errno(err); ok {
		t.Fatalf("a queued call's errno %v passed for the caller's own", en)
	}
	if !errors.Is(err, ErrQueued) {
		t.Fatalf("a queued call's failure is not ErrQueued: %v", err)
	}
	a, err := s.PutString(0, "/")
	if err != nil {
		t.Fatal(err)
	}
	s.Later("chdir /", unix.SYS_CHDIR, a)
	if _, err := s.PutString(0, "/nonexistent-godwit"); err != nil {
		t.Fatal(err)
	}
	if err := s.End(nil); err != nil {
		t.Fatalf("end: %v (the chdir ran on the overwritten path?)", err)
	}
	if cwd, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/cwd"); err != nil || cwd != "/" {
		t.Fatalf("cwd %q, %v; want /", cwd, err)
	}
	if err := tr.UnmapScratch(pid, scratch, 4096); err != nil {
		t.Fatal(err)
	}
}

// TestPutLarge: a buffer larger than the scratch goes to a mapping of its
// own in the task, holds the bytes, and is gone after free; one that fits
// stays in the scratch.
func TestPutLarge(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (keep with the package's other tracer tests)")
	}
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
	s, err := Begin(tr, pid, pid, scratch, 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := s.End(nil); err != nil {
			t.Error(err)
		}
		if err := tr.UnmapScratch(pid, scratch, 4096); err != nil {
			t.Error(err)
		}
	}()
	small := []byte("fits")
	a, free, err := s.PutLarge("small", 16, small)
	if err != nil || a != scratch+16 {
		t.Fatalf("small buffer at %#x, %v; want scratch+16 %#x", a, err, scratch+16)
	}
	if err := free(); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 3*4096+5)
	for i := range big {
		big[i] = byte(i*7 + 1)
	}
	a, free, err = s.PutLarge("big", 16, big)
	if err != nil {
		t.Fatal(err)
	}
	if a >= scratch && a < scratch+4096 {
		t.Fatalf("big buffer at %#x, inside the scratch", a)
	}
	got := make([]byte, len(big))
	if err := ptrace.ReadMem(pid, a, got); err != nil || string(got) != string(big) {
		t.Fatalf("big buffer read back: %v, equal %v", err, string(got) == string(big))
	}
	mapped := func() bool {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/maps")
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			lo, hi, ok := strings.Cut(strings.Fields(l + " x")[0], "-")
			if !ok {
				continue
			}
			l, err1 := strconv.ParseUint(lo, 16, 64)
			h, err2 := strconv.ParseUint(hi, 16, 64)
			if err1 == nil && err2 == nil && l <= a && a < h {
				return true
			}
		}
		return false
	}
	if !mapped() {
		t.Fatalf("no mapping at %#x", a)
	}
	if err := free(); err != nil {
		t.Fatal(err)
	}
	if mapped() {
		t.Fatalf("mapping at %#x still there after free", a)
	}
}
