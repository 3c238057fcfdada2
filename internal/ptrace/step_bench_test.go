package ptrace

import (
	"fmt"
	"testing"

	"golang.org/x/sys/unix"
)

// stepSyscall is the single-step alternative to Session.syscall, kept only
// to measure it against the PTRACE_SYSCALL method: one stop per call instead
// of two, but the kernel reports the step with a forced SIGTRAP (which
// resets an ignored or blocked SIGTRAP to SIG_DFL in the tracee).
func (s *Session) stepSyscall(nr uintptr, args ...uint64) (uint64, error) {
	var ret uint64
	err := s.t.Do(func() error {
		tk := s.tk
		var a [6]uint64
		copy(a[:], args)
		r := s.saved
		r.Rip, r.Rax, r.Orig_rax = s.addr, uint64(nr), ^uint64(0)
		r.Rdi, r.Rsi, r.Rdx, r.R10, r.R8, r.R9 = a[0], a[1], a[2], a[3], a[4], a[5]
		if err := setRegs(tk.tid, &r); err != nil {
			return err
		}
		s.ran = true
		if err := s.t.resume(tk, unix.PTRACE_SINGLESTEP, 0); err != nil {
			return err
		}
		st, err := s.t.wait(tk)
		if err != nil {
			return err
		}
		if st.Sig != unix.SIGTRAP || st.Event != 0 {
			return fmt.Errorf("single step: %v", st)
		}
		if err := getRegs(tk.tid, &r); err != nil {
			return err
		}
		ret = r.Rax
		return nil
	})
	return ret, err
}

func BenchmarkInjectSingleStep(b *testing.B) {
	needRoot(b)
	tr := New()
	c := startChild(b, tr, buildC(b, "read"))
	if _, err := tr.FreezeProcess(c.pid, 0); err != nil {
		b.Fatal(err)
	}
	s, err := tr.BeginInjection(c.pid)
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < b.N; i++ {
		got, err := s.stepSyscall(unix.SYS_GETPID)
		if err != nil || int(got) != c.pid {
			b.Fatalf("getpid %d %v", got, err)
		}
	}
	if err := s.End(); err != nil {
		b.Fatal(err)
	}
	if err := tr.ThawProcess(c.pid, false); err != nil {
		b.Fatal(err)
	}
}
