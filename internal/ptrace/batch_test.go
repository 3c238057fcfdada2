package ptrace

import (
	"encoding/binary"
	"os/exec"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
)

// TestBatch runs batches in a frozen reader: results in order, a stop at
// the first error, and nothing of the program's changed: a blocked
// pending signal of the first trap kind stays pending (the trap uses
// another), an ignored SIGTRAP stays ignored, and the reader still reads.
func TestBatch(t *testing.T) {
	needRoot(t)
	tr := New()
	c := startChild(t, tr, buildC(t, "read"))
	waitBlocked(t, c.pid)
	if _, err := tr.FreezeProcess(c.pid, 0); err != nil {
		t.Fatal(err)
	}
	winch := uint64(1) << (unix.SIGWINCH - 1)
	if err := tr.SetSigmask(c.pid, winch); err != nil {
		t.Fatal(err)
	}
	if err := unix.Kill(c.pid, unix.SIGWINCH); err != nil {
		t.Fatal(err)
	}
	s, err := tr.BeginInjection(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	defer s.End()
	const size = 8192
	mem, err := s.Syscall(unix.SYS_MMAP, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		t.Fatal(err)
	}
	code, err := s.Syscall(unix.SYS_MMAP, 0, 4096, unix.PROT_READ|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := PokeMem(c.pid, code, BatchCode); err != nil {
		t.Fatal(err)
	}
	table := mem + 4096
	// SIGTRAP ignored, its action read back; getpid between.
	var ign [32]byte
	binary.NativeEndian.PutUint64(ign[0:], 1) // SIG_IGN
	if err := WriteMem(c.pid, mem, ign[:]); err != nil {
		t.Fatal(err)
	}
	got, err := s.Batch(code, table, []Call{
		{Nr: unix.SYS_RT_SIGACTION, Args: [6]uint64{uint64(unix.SIGTRAP), mem, 0, 8}},
		{Nr: unix.SYS_GETPID},
	})
	if err != nil || len(got) != 2 || got[0] != 0 || int(got[1]) != c.pid {
		t.Fatalf("batch: %v, %v", got, err)
	}
	got, err = s.Batch(code, table, []Call{
		{Nr: unix.SYS_GETPID},
		{Nr: unix.SYS_CLOSE, Args: [6]uint64{^uint64(0)}},
		{Nr: unix.SYS_GETPID},
	})
	if err != nil || len(got) != 2 || int(got[0]) != c.pid || int64(got[1]) != -int64(unix.EBADF) {
		t.Fatalf("batch stopping at EBADF: %v, %v", got, err)
	}
	got, err = s.Batch(code, table, []Call{{Nr: unix.SYS_RT_SIGACTION, Args: [6]uint64{uint64(unix.SIGTRAP), 0, mem + 64, 8}}})
	if err != nil || len(got) != 1 || got[0] != 0 {
		t.Fatalf("read SIGTRAP action: %v, %v", got, err)
	}
	var act [8]byte
	if err := ReadMem(c.pid, mem+64, act[:]); err != nil {
		t.Fatal(err)
	}
	if h := binary.NativeEndian.Uint64(act[:]); h != 1 {
		t.Errorf("SIGTRAP handler %#x after batches, want SIG_IGN", h)
	}
	if s.trapSig == unix.SIGWINCH || s.trapSig == 0 {
		t.Errorf("trap signal %v", s.trapSig)
	}
	if _, err := s.Syscall(unix.SYS_MUNMAP, mem, size); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Syscall(unix.SYS_MUNMAP, code, 4096); err != nil {
		t.Fatal(err)
	}
	if err := s.End(); err != nil {
		t.Fatal(err)
	}
	st, err := procfs.ReadStatus(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	if (st.SigPnd|st.ShdPnd)&winch == 0 || st.SigBlk != winch {
		t.Errorf("pending %#x/%#x, blocked %#x: want SIGWINCH pending and blocked", st.SigPnd, st.ShdPnd, st.SigBlk)
	}
	if (st.SigPnd|st.ShdPnd)&^winch != 0 {
		t.Errorf("pending %#x/%#x: a trap signal was left behind", st.SigPnd, st.ShdPnd)
	}
	if err := tr.Cont(c.pid, 0); err != nil {
		t.Fatal(err)
	}
	waitBlocked(t, c.pid)
	if _, err := c.stdin.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	c.stdin.Close()
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("reader after batches: %v", err)
	}
}

// BenchmarkBatch: 62 getpid calls as one batch, next to as many injected
// one by one (the figure the batch replaces).
func BenchmarkBatch(b *testing.B) {
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
	defer s.End()
	mem, err := s.Syscall(unix.SYS_MMAP, 0, 8192, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		b.Fatal(err)
	}
	code, err := s.Syscall(unix.SYS_MMAP, 0, 4096, unix.PROT_READ|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		b.Fatal(err)
	}
	if err := PokeMem(c.pid, code, BatchCode); err != nil {
		b.Fatal(err)
	}
	calls := make([]Call, 62)
	for i := range calls {
		calls[i].Nr = unix.SYS_GETPID
	}
	b.Run("batch62", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if got, err := s.Batch(code, mem, calls); err != nil || len(got) != len(calls) {
				b.Fatal(got, err)
			}
		}
	})
	b.Run("single62", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			for range calls {
				if _, err := s.Syscall(unix.SYS_GETPID); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}

// TestBatchAfterQueue: a signal the session itself queues (as the
// restorer does with pending signals) is not taken for the next batch's
// trap: it stays pending.
func TestBatchAfterQueue(t *testing.T) {
	needRoot(t)
	tr := New()
	c := startChild(t, tr, buildC(t, "read"))
	waitBlocked(t, c.pid)
	if _, err := tr.FreezeProcess(c.pid, 0); err != nil {
		t.Fatal(err)
	}
	s, err := tr.BeginInjection(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	defer s.End()
	mem, err := s.Syscall(unix.SYS_MMAP, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		t.Fatal(err)
	}
	code, err := s.Syscall(unix.SYS_MMAP, 0, 4096, unix.PROT_READ|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := PokeMem(c.pid, code, BatchCode); err != nil {
		t.Fatal(err)
	}
	getpid := []Call{{Nr: unix.SYS_GETPID}}
	if _, err := s.Batch(code, mem, getpid); err != nil {
		t.Fatal(err)
	}
	first := s.trapSig
	if _, err := s.Syscall(unix.SYS_TGKILL, uint64(c.pid), uint64(c.pid), uint64(first)); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Batch(code, mem, getpid); err != nil || int(got[0]) != c.pid {
		t.Fatalf("batch after queueing %v: %v, %v", first, got, err)
	}
	if s.trapSig == first {
		t.Errorf("trap signal %v again, though it is pending", first)
	}
	if err := s.End(); err != nil {
		t.Fatal(err)
	}
	st, err := procfs.ReadStatus(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(1) << (first - 1); st.SigPnd != want || st.ShdPnd != 0 {
		t.Errorf("pending %#x/%#x, want only the queued %v (%#x)", st.SigPnd, st.ShdPnd, first, want)
	}
}

// TestRunnerSingleCalls: with a runner set, single calls take it (one run
// each) but for those that would unmap it, which run at a syscall
// instruction; a batch that would unmap its runner is refused.
func TestRunnerSingleCalls(t *testing.T) {
	needRoot(t)
	tr := New()
	c := startChild(t, tr, buildC(t, "read"))
	waitBlocked(t, c.pid)
	if _, err := tr.FreezeProcess(c.pid, 0); err != nil {
		t.Fatal(err)
	}
	s, err := tr.BeginInjection(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	defer s.End()
	mem, err := s.Syscall(unix.SYS_MMAP, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		t.Fatal(err)
	}
	code, err := s.Syscall(unix.SYS_MMAP, 0, 4096, unix.PROT_READ|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := PokeMem(c.pid, code, BatchCode); err != nil {
		t.Fatal(err)
	}
	s.SetRunner(code, mem)
	_, stops0, _ := tr.InjectionStats()
	if got, err := s.Syscall(unix.SYS_GETPID); err != nil || int(got) != c.pid {
		t.Fatalf("getpid through the runner: %d, %v", got, err)
	}
	if _, err := s.Syscall(unix.SYS_CLOSE, ^uint64(0)); err == nil {
		t.Error("close(-1) through the runner succeeded")
	}
	if _, stops, _ := tr.InjectionStats(); stops != stops0+2 {
		t.Errorf("%d stops for two calls", stops-stops0)
	}
	if _, err := s.Batch(code, mem, []Call{{Nr: unix.SYS_MUNMAP, Args: [6]uint64{code, 4096}}}); err == nil {
		t.Error("a batch unmapped its own runner")
	}
	if _, err := s.Syscall(unix.SYS_MUNMAP, code, 4096); err != nil {
		t.Fatalf("unmap the runner: %v", err)
	}
	maps, err := procfs.ReadMaps(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range maps {
		if m.Start <= code && code < m.End {
			t.Errorf("runner page still mapped: %+v", m)
		}
	}
}

func TestTouchesRunner(t *testing.T) {
	const code, table = 0x10000, 0x20000
	for _, tc := range []struct {
		c    Call
		want bool
	}{
		{Call{Nr: unix.SYS_MUNMAP, Args: [6]uint64{0x10000, 4096}}, true},
		{Call{Nr: unix.SYS_MUNMAP, Args: [6]uint64{0x11000, 4096}}, false},
		{Call{Nr: unix.SYS_MPROTECT, Args: [6]uint64{0x1f000, 0x2000}}, true},
		{Call{Nr: unix.SYS_MMAP, Args: [6]uint64{0x20000, 4096, 0, unix.MAP_FIXED}}, true},
		{Call{Nr: unix.SYS_MMAP, Args: [6]uint64{0x20000, 4096, 0, unix.MAP_FIXED_NOREPLACE}}, false},
		{Call{Nr: unix.SYS_MREMAP, Args: [6]uint64{0x40000, 4096, 4096, unix.MREMAP_FIXED | unix.MREMAP_MAYMOVE, 0x10000}}, true},
		{Call{Nr: unix.SYS_GETPID}, false},
	} {
		if got := touchesRunner(&tc.c, code, table, BatchTableSize(1)); got != tc.want {
			t.Errorf("%+v: %v, want %v", tc.c, got, tc.want)
		}
	}
}

// TestBatchPidNS: a batch in a program that is pid 1 of a pid namespace of
// its own: the batch's trap (rt_tgsigqueueinfo in the thread) names the
// thread by its own ids, not godwit's.
func TestBatchPidNS(t *testing.T) {
	needRoot(t)
	tr := New()
	cmd := exec.Command(buildC(t, "read"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWPID}
	c := startCmd(t, tr, cmd)
	waitBlocked(t, c.pid)
	if _, err := tr.FreezeProcess(c.pid, 0); err != nil {
		t.Fatal(err)
	}
	s, err := tr.BeginInjection(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	defer s.End()
	mem, err := s.Syscall(unix.SYS_MMAP, 0, 8192, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		t.Fatal(err)
	}
	code, err := s.Syscall(unix.SYS_MMAP, 0, 4096, unix.PROT_READ|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := PokeMem(c.pid, code, BatchCode); err != nil {
		t.Fatal(err)
	}
	got, err := s.Batch(code, mem+4096, []Call{{Nr: unix.SYS_GETPID}, {Nr: unix.SYS_GETTID}})
	if err != nil || len(got) != 2 || got[0] != 1 || got[1] != 1 {
		t.Fatalf("batch: %v, %v (want getpid and gettid 1)", got, err)
	}
	if err := s.End(); err != nil {
		t.Fatal(err)
	}
	st, err := procfs.ReadStatus(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	if st.SigPnd|st.ShdPnd != 0 {
		t.Errorf("pending %#x/%#x: a trap signal was left behind", st.SigPnd, st.ShdPnd)
	}
	if err := tr.ThawProcess(c.pid, false); err != nil {
		t.Fatal(err)
	}
	assertFree(t, c.pid)
}
