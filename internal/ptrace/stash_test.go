package ptrace

import (
	"encoding/binary"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestDetachRequeuesStashedSiginfo: signals stashed while injecting (a
// forced SIGTRAP, dequeued by its signal-delivery-stop) reach the program
// after the detach with their own siginfo, even codes
// only the kernel or kill(2) make (si_code >= 0), which no other
// process may queue: here SI_USER from a made-up sender, and a positive
// (kernel) code. tgkill would give SI_TKILL and godwit's pid.
func TestDetachRequeuesStashedSiginfo(t *testing.T) {
	needRoot(t)
	testRequeue(t, 0)
}

// TestDetachRequeuesStashedSiginfoPidNS: the same for a program in a pid
// namespace of its own (pid 1 there), where the ids of the injected
// rt_tgsigqueueinfo are its own, not godwit's.
func TestDetachRequeuesStashedSiginfoPidNS(t *testing.T) {
	needRoot(t)
	testRequeue(t, unix.CLONE_NEWPID)
}

func testRequeue(t *testing.T, cloneflags uintptr) {
	tr := New()
	cmd := exec.Command(buildC(t, "sigval"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: cloneflags}
	c := startCmd(t, tr, cmd)
	waitBlocked(t, c.pid)
	if _, err := tr.FreezeProcess(c.pid, 0); err != nil {
		t.Fatal(err)
	}
	// A session first, as where stashes happen.
	s, err := tr.BeginInjection(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Syscall(unix.SYS_GETPID); err != nil {
		t.Fatal(err)
	}
	if err := s.End(); err != nil {
		t.Fatal(err)
	}
	mk := func(sig unix.Signal, code int32, pid uint32, value int32) stashed {
		var si Siginfo
		ne := binary.NativeEndian
		ne.PutUint32(si[0:], uint32(sig))
		ne.PutUint32(si[8:], uint32(code))
		ne.PutUint32(si[16:], pid)
		ne.PutUint32(si[24:], uint32(value))
		return stashed{sig: sig, si: si, ok: true}
	}
	err = tr.Do(func() error {
		tk := tr.tasks[c.pid]
		if tk == nil {
			return fmt.Errorf("%d not traced", c.pid)
		}
		tk.stash = append(tk.stash, mk(40, 0, 12345, 77), mk(41, 2, 54321, 88))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.ThawProcess(c.pid, false); err != nil {
		t.Fatal(err)
	}
	// Both pending at once: the handler of the one delivered first is
	// interrupted by the other's, so the lines come in either order.
	want := map[string]bool{"40 0 77 12345": true, "41 2 88 54321": true}
	for range 2 {
		line := make(chan string, 1)
		go func() {
			l, _ := c.out.ReadString('\n')
			line <- strings.TrimSpace(l)
		}()
		select {
		case l := <-line:
			if !want[l] {
				t.Fatalf("the program caught %q, want one of %v (sig code value pid)", l, want)
			}
			delete(want, l)
		case <-time.After(30 * time.Second):
			t.Fatalf("%v never reached the program", want)
		}
	}
}
