package ptrace

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"unsafe"

	"godwit/internal/procfs"
)

// sigqueueTo queues sig with SI_QUEUE and value to thread tid of tgid
// (tid 0: process-directed), as sigqueue(3) and pthread_sigqueue(3) do.
func sigqueueTo(tgid, tid int, sig unix.Signal, value int32) error {
	var si [128]byte
	ne := binary.NativeEndian
	ne.PutUint32(si[0:], uint32(sig))
	ne.PutUint32(si[8:], uint32(siSIQueueBits))
	ne.PutUint32(si[16:], uint32(os.Getpid())) // si_pid
	ne.PutUint32(si[20:], uint32(os.Getuid())) // si_uid
	ne.PutUint32(si[24:], uint32(value))       // si_value
	nr, a := uintptr(unix.SYS_RT_TGSIGQUEUEINFO), []uintptr{uintptr(tgid), uintptr(tid), uintptr(sig), uintptr(unsafe.Pointer(&si[0]))}
	if tid == 0 {
		nr, a = unix.SYS_RT_SIGQUEUEINFO, []uintptr{uintptr(tgid), uintptr(sig), uintptr(unsafe.Pointer(&si[0])), 0}
	}
	if _, _, e := unix.Syscall6(nr, a[0], a[1], a[2], a[3], 0, 0); e != 0 {
		return e
	}
	return nil
}

// batchSetup freezes c, opens a session in it and maps the runner and a
// table page (the page's second half is the test's own).
func batchSetup(t *testing.T, tr *Tracer, c *child) (s *Session, code, mem uint64) {
	t.Helper()
	waitBlocked(t, c.pid)
	if _, err := tr.FreezeProcess(c.pid, 0); err != nil {
		t.Fatal(err)
	}
	s, err := tr.BeginInjection(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.End() })
	mem, err = s.Syscall(unix.SYS_MMAP, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		t.Fatal(err)
	}
	code, err = s.Syscall(unix.SYS_MMAP, 0, 4096, unix.PROT_READ|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := PokeMem(c.pid, code, BatchCode); err != nil {
		t.Fatal(err)
	}
	return s, code, mem
}

// takeSignal dequeues one pending sig in the session's thread with an
// injected rt_sigtimedwait (no wait) and returns its siginfo.
func takeSignal(t *testing.T, s *Session, pid int, mem uint64, sig unix.Signal) Siginfo {
	t.Helper()
	set, ts, info := mem+2048, mem+2056, mem+2080
	b := make([]byte, 32)
	binary.NativeEndian.PutUint64(b, 1<<(sig-1))
	if err := WriteMem(pid, set, b); err != nil {
		t.Fatal(err)
	}
	got, err := s.Syscall(unix.SYS_RT_SIGTIMEDWAIT, set, info, ts, 8)
	if err != nil || unix.Signal(got) != sig {
		t.Fatalf("rt_sigtimedwait for %v: %d, %v: not pending", sig, int64(got), err)
	}
	var si Siginfo
	if err := ReadMem(pid, info, si[:]); err != nil {
		t.Fatal(err)
	}
	return si
}

// TestBatchTrapKeepsSiginfo: signals of the trap's own number queued to the
// thread while batches run in it (here by another process, at a random
// moment), with SI_QUEUE and a value, stay the program's with their
// siginfo and in their order, however they fall against the runner's
// trap; process-directed ones too. Each round, two are sent; then the
// test dequeues them in the thread itself and reads their siginfo.
func TestBatchTrapKeepsSiginfo(t *testing.T) {
	needRoot(t)
	tr := New()
	c := startChild(t, tr, buildC(t, "sigval"))
	s, code, mem := batchSetup(t, tr, c)
	getpid := []Call{{Nr: unix.SYS_GETPID}}
	if _, err := s.Batch(code, mem, getpid); err != nil {
		t.Fatal(err)
	}
	sig := s.trapSig
	const rounds = 2000
	for i := range rounds {
		// The trap the batches use is sig, whatever the last round
		// left pending.
		tr.Do(func() error { s.trapSig = sig; return nil })
		tid := c.pid
		if i%4 == 3 {
			tid = 0 // process-directed
		}
		var sent atomic.Bool
		go func() {
			for end := time.Now().Add(time.Duration(rand.IntN(100)) * time.Microsecond); time.Now().Before(end); {
			}
			if err := sigqueueTo(c.pid, tid, sig, int32(2*i)); err != nil {
				t.Error(err)
			}
			if err := sigqueueTo(c.pid, tid, sig, int32(2*i+1)); err != nil {
				t.Error(err)
			}
			sent.Store(true)
		}()
		for n := 0; n < 2; {
			if sent.Load() {
				n++
			}
			if got, err := s.Batch(code, mem, getpid); err != nil || int(got[0]) != c.pid {
				t.Fatalf("round %d: batch: %v, %v", i, got, err)
			}
		}
		if tid != 0 && s.trapSig == sig {
			t.Fatalf("round %d: %v queued to the thread during the batches was not queued again (still the trap)", i, sig)
		}
		for k := range 2 {
			si := takeSignal(t, s, c.pid, mem, sig)
			ne := binary.NativeEndian
			if si.Signo() != int32(sig) || si.Code() != siSIQueue || ne.Uint32(si[16:]) != uint32(os.Getpid()) ||
				ne.Uint32(si[20:]) != uint32(os.Getuid()) || int32(ne.Uint32(si[24:])) != int32(2*i+k) {
				t.Fatalf("round %d: signal %d of 2 (directed to %d): signo %d code %d pid %d uid %d value %d, want %d %d %d %d %d",
					i, k+1, tid, si.Signo(), si.Code(), ne.Uint32(si[16:]), ne.Uint32(si[20:]), int32(ne.Uint32(si[24:])),
					sig, siSIQueue, os.Getpid(), os.Getuid(), 2*i+k)
			}
		}
	}
	if st, err := procfs.ReadStatus(c.pid); err != nil || (st.SigPnd|st.ShdPnd)&(1<<(sig-1)) != 0 {
		t.Fatalf("%v still pending after every one sent was taken: %+v, %v", sig, st, err)
	}
}

// The program itself gets its signal of the trap's number, queued while
// a batch ran, with its siginfo once thawed (sigval prints what it caught).
func TestBatchTrapSignalReachesProgram(t *testing.T) {
	needRoot(t)
	tr := New()
	c := startChild(t, tr, buildC(t, "sigval"))
	s, code, mem := batchSetup(t, tr, c)
	getpid := []Call{{Nr: unix.SYS_GETPID}}
	if _, err := s.Batch(code, mem, getpid); err != nil {
		t.Fatal(err)
	}
	sig := s.trapSig
	var sent atomic.Bool
	go func() {
		if err := sigqueueTo(c.pid, c.pid, sig, 4242); err != nil {
			t.Error(err)
		}
		sent.Store(true)
	}()
	for n := 0; n < 2; {
		if sent.Load() {
			n++
		}
		if _, err := s.Batch(code, mem, getpid); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.End(); err != nil {
		t.Fatal(err)
	}
	if err := tr.ThawProcess(c.pid, false); err != nil {
		t.Fatal(err)
	}
	line := make(chan string, 1)
	go func() {
		l, _ := c.out.ReadString('\n')
		line <- strings.TrimSpace(l)
	}()
	want := fmt.Sprintf("%d %d %d %d", sig, siSIQueue, 4242, os.Getpid())
	select {
	case l := <-line:
		if l != want {
			t.Fatalf("the program caught %q, want %q (sig code value pid)", l, want)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the %v never reached the program", sig)
	}
}

// chooseTrap takes the highest real-time signal neither pending, handled
// nor blocked, else the highest blocked one not pending nor handled, else
// the highest not pending.
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
		// Blocked (sigwaitinfo, signalfd) is not free either...
		{procfs.Status{SigBlk: bit(64), SigCgt: bit(63)}, 62},
		// ...but better than caught when nothing is free of both.
		{procfs.Status{SigBlk: bit(40), SigCgt: all(35, 64) &^ bit(40)}, 40},
		{procfs.Status{SigBlk: all(35, 64), SigCgt: bit(64), ShdPnd: bit(63)}, 62},
		{procfs.Status{SigBlk: bit(64), SigCgt: all(35, 63)}, 64},
	} {
		if got := chooseTrap(&c.st); got != c.want {
			t.Errorf("chooseTrap(pending %#x/%#x, caught %#x, blocked %#x) = %d, want %d", c.st.SigPnd, c.st.ShdPnd, c.st.SigCgt, c.st.SigBlk, got, c.want)
		}
	}
}
