package ptrace

import (
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
)

// TestBatchTrapKeepsProgramSignal: a signal of the trap's own number sent
// to the thread while batches run in it (here by another process, at a
// random moment; a program's own tgkill lands the same way) reaches the
// tracer, to be given back to the program at detach, however it falls
// against the runner's own trap: it is never merged into the trap and
// lost. Many signals, one at a time, so that some land between the trap's
// send and its stop; then the program gets them after the session.
func TestBatchTrapKeepsProgramSignal(t *testing.T) {
	needRoot(t)
	tr := New()
	c := startChild(t, tr, buildC(t, "sigecho"))
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
	sig := s.trapSig
	stashed := func() (n int) {
		tr.Do(func() error {
			for _, x := range s.tk.stash {
				if x == sig {
					n++
				}
			}
			return nil
		})
		return n
	}
	const sends = 8000
	for i := range sends {
		var sent atomic.Bool
		go func() {
			// A random moment within the next batches.
			for end := time.Now().Add(time.Duration(rand.IntN(100)) * time.Microsecond); time.Now().Before(end); {
			}
			unix.Tgkill(c.pid, c.pid, sig)
			sent.Store(true)
		}()
		// Once sent, the next batch unblocks the signal: it is reported
		// then at the latest.
		for n := 0; n < 2; {
			if sent.Load() {
				n++
			}
			if got, err := s.Batch(code, mem, getpid); err != nil || int(got[0]) != c.pid {
				t.Fatalf("signal %d: batch: %v, %v", i, got, err)
			}
		}
		if n := stashed(); n != 1 {
			t.Fatalf("signal %d: %v sent to the thread during the batches: %d kept for the program, want 1", i, sig, n)
		}
		if i < sends-1 {
			tr.Do(func() error { s.tk.stash = s.tk.stash[:0]; return nil })
		}
	}
	if err := s.End(); err != nil {
		t.Fatal(err)
	}
	if err := tr.ThawProcess(c.pid, false); err != nil {
		t.Fatal(err)
	}
	got := make(chan byte, 1)
	go func() {
		if b, err := c.out.ReadByte(); err == nil {
			got <- b
		}
	}()
	select {
	case b := <-got:
		if unix.Signal(b) != sig {
			t.Fatalf("the program caught signal %d, want %d (%v)", b, sig, sig)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the last %v never reached the program", sig)
	}
}

// chooseTrap takes the highest real-time signal that is neither pending
// nor handled, else the highest not pending.
func TestChooseTrap(t *testing.T) {
	bit := func(sigs ...int) (m uint64) {
		for _, s := range sigs {
			m |= 1 << (s - 1)
		}
		return m
	}
	all := func(from, to int) (m uint64) {
		for s := from; s <= to; s++ {
			m |= bit(s)
		}
		return m
	}
	for _, c := range []struct {
		st   procfs.Status
		want unix.Signal
	}{
		{procfs.Status{}, 64},
		{procfs.Status{SigPnd: bit(64), ShdPnd: bit(63)}, 62},
		{procfs.Status{SigCgt: bit(64, 63)}, 62},
		{procfs.Status{SigCgt: all(35, 64), ShdPnd: bit(64)}, 63},
		{procfs.Status{SigPnd: all(35, 64)}, 0},
		{procfs.Status{SigCgt: all(1, 64), SigPnd: all(36, 64)}, 35},
	} {
		if got := chooseTrap(&c.st); got != c.want {
			t.Errorf("chooseTrap(pending %#x/%#x, caught %#x) = %d, want %d", c.st.SigPnd, c.st.ShdPnd, c.st.SigCgt, got, c.want)
		}
	}
}
