package ptrace

import (
	"bytes"
	"errors"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
)

// exercise runs the common checks on a frozen process: registers of every
// thread, gettid/getpid injected into each and the registers unchanged
// afterwards, a scratch page mapped, used by an injected call, and unmapped.
func exercise(t *testing.T, tr *Tracer, pid int, tids []int) map[int]Regs {
	t.Helper()
	regs := make(map[int]Regs)
	for _, tid := range tids {
		r, err := tr.GetRegs(tid)
		if err != nil {
			t.Fatal(err)
		}
		regs[tid] = r
		got, err := tr.InjectSyscall(tid, unix.SYS_GETTID)
		if err != nil {
			t.Fatal(err)
		}
		if int(got) != tid {
			t.Errorf("injected gettid in %d returned %d", tid, got)
		}
		got, err = tr.InjectSyscall(tid, unix.SYS_GETPID)
		if err != nil {
			t.Fatal(err)
		}
		if int(got) != pid {
			t.Errorf("injected getpid in %d returned %d, want %d", tid, got, pid)
		}
		after, err := tr.GetRegs(tid)
		if err != nil {
			t.Fatal(err)
		}
		if after != r {
			t.Errorf("thread %d: registers changed by injection:\nbefore %+v\nafter  %+v", tid, r, after)
		}
	}
	// Scratch page: map, write, let the task fill part of it, read, unmap.
	const size = 4096
	addr, err := tr.MapScratch(pid, size)
	if err != nil {
		t.Fatal(err)
	}
	pat := bytes.Repeat([]byte("godwit!"), 100)
	if err := WriteMem(pid, addr+1024, pat); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(pat))
	if err := ReadMem(pid, addr+1024, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, pat) {
		t.Errorf("scratch read back differs")
	}
	if _, err := tr.InjectSyscall(pid, unix.SYS_CLOCK_GETTIME, unix.CLOCK_MONOTONIC, addr); err != nil {
		t.Fatal(err)
	}
	var ts [16]byte
	if err := ReadMem(pid, addr, ts[:]); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(ts[:], make([]byte, 16)) {
		t.Errorf("injected clock_gettime wrote nothing into the scratch page")
	}
	if err := tr.UnmapScratch(pid, addr, size); err != nil {
		t.Fatal(err)
	}
	maps, err := procfs.ReadMaps(pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range maps {
		if m.Start <= addr && addr < m.End {
			t.Errorf("scratch %#x still mapped: %+v", addr, m)
		}
	}
	return regs
}

func TestSpinning(t *testing.T) {
	needRoot(t)
	tr := New()
	c := startChild(t, tr, buildC(t, "spin"))
	ctr := c.addr(t)
	// Queue one thread-private and one process-wide (blocked) signal.
	if err := unix.Tgkill(c.pid, c.pid, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	if err := unix.Kill(c.pid, unix.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	tids, err := tr.FreezeProcess(c.pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(tids) != 1 || tids[0] != c.pid {
		t.Fatalf("tids %v", tids)
	}
	st, err := procfs.ReadStatus(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	if st.TracerPid != tr.ThreadID() || st.State != 't' {
		t.Errorf("frozen: TracerPid %d (tracer %d), State %c", st.TracerPid, tr.ThreadID(), st.State)
	}
	v1 := readU64(t, c.pid, ctr)
	time.Sleep(20 * time.Millisecond)
	if v2 := readU64(t, c.pid, ctr); v2 != v1 {
		t.Errorf("counter moved while frozen: %d → %d", v1, v2)
	}
	regs := exercise(t, tr, c.pid, tids)
	if r := regs[c.pid]; Restart(&r) != NoRestart {
		t.Errorf("spinning task looks interrupted in a syscall: %+v", r)
	}

	mask, err := tr.GetSigmask(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	want := uint64(1<<(unix.SIGUSR1-1) | 1<<(unix.SIGUSR2-1))
	if mask&want != want {
		t.Errorf("sigmask %#x lacks SIGUSR1|SIGUSR2", mask)
	}
	priv, err := tr.PeekSiginfo(c.pid, false)
	if err != nil {
		t.Fatal(err)
	}
	shared, err := tr.PeekSiginfo(c.pid, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(priv) != 1 || priv[0].Signo() != int32(unix.SIGUSR1) {
		t.Errorf("private queue: %d entries, first signo %v", len(priv), priv)
	}
	if len(shared) != 1 || shared[0].Signo() != int32(unix.SIGUSR2) || shared[0].Code() != 0 /* SI_USER */ {
		t.Errorf("shared queue: %d entries", len(shared))
	}
	rs, err := tr.GetRseqConfig(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	if rs.AbiPointer == 0 || rs.Signature == 0 {
		t.Errorf("glibc registers rseq, got %+v", rs)
	}
	si, err := tr.GetSyscallInfo(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	if si.Op != unix.PTRACE_SYSCALL_INFO_NONE {
		t.Errorf("syscall info at interrupt stop: op %d", si.Op)
	}
	fpu, err := tr.GetFPU(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	if len(fpu) < 576 { // legacy area + xsave header
		t.Fatalf("xstate %d bytes", len(fpu))
	}
	if err := tr.SetFPU(c.pid, fpu); err != nil {
		t.Fatal(err)
	}
	fpu2, err := tr.GetFPU(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(fpu[:512], fpu2[:512]) {
		t.Errorf("FXSAVE area changed by a SetFPU of itself")
	}
	// Tracer methods nest inside Do (they run inline on the tracer thread).
	err = tr.Do(func() error {
		r, err := tr.GetRegs(c.pid)
		if err == nil && r != regs[c.pid] {
			t.Errorf("nested GetRegs disagrees")
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	ts, err := tr.ThreadState(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	if ts.Regs != regs[c.pid] || len(ts.XState) != len(fpu) || ts.Sigmask != mask || len(ts.Pending) != 1 ||
		ts.Rseq != rs || ts.Stop.Event != unix.PTRACE_EVENT_STOP || ts.Stop.GroupStop() {
		t.Errorf("ThreadState disagrees with the single calls: %+v", ts.Stop)
	}
	if err := tr.ThawProcess(c.pid, false); err != nil {
		t.Fatal(err)
	}
	assertFree(t, c.pid)
	// Still queued after the thaw, and the counter moves on.
	st, _ = procfs.ReadStatus(c.pid)
	if st.ShdPnd&(1<<(unix.SIGUSR2-1)) == 0 || st.SigPnd&(1<<(unix.SIGUSR1-1)) == 0 {
		t.Errorf("pending signals lost: ShdPnd %#x SigPnd %#x", st.ShdPnd, st.SigPnd)
	}
	v3 := readU64(t, c.pid, ctr)
	deadline := time.Now().Add(5 * time.Second)
	for readU64(t, c.pid, ctr) == v3 {
		if time.Now().After(deadline) {
			t.Fatal("counter stopped after thaw")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestBlockedInNanosleep(t *testing.T) {
	needRoot(t)
	tr := New()
	c := startChild(t, tr, buildC(t, "sleep"))
	waitBlocked(t, c.pid)
	tids, err := tr.FreezeProcess(c.pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	regs := exercise(t, tr, c.pid, tids)
	r := regs[c.pid]
	if Restart(&r) != RestartBlock || r.Orig_rax != unix.SYS_CLOCK_NANOSLEEP {
		t.Errorf("sleeping task: orig_rax %d rax %d, want clock_nanosleep and -ERESTART_RESTARTBLOCK", r.Orig_rax, int64(r.Rax))
	}
	if err := tr.ThawProcess(c.pid, false); err != nil {
		t.Fatal(err)
	}
	assertFree(t, c.pid)
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("sleeper after freeze/inject/thaw: %v (2: nanosleep failed, 3: slept too short)", err)
	}
}

func TestBlockedInRead(t *testing.T) {
	needRoot(t)
	tr := New()
	c := startChild(t, tr, buildC(t, "read"))
	waitBlocked(t, c.pid)
	tids, err := tr.FreezeProcess(c.pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	regs := exercise(t, tr, c.pid, tids)
	r := regs[c.pid]
	if Restart(&r) != RestartSame || -int64(r.Rax) != ERESTARTSYS || r.Orig_rax != unix.SYS_READ {
		t.Errorf("reading task: orig_rax %d rax %d, want read and -ERESTARTSYS", r.Orig_rax, int64(r.Rax))
	}
	if err := tr.ThawProcess(c.pid, false); err != nil {
		t.Fatal(err)
	}
	assertFree(t, c.pid)
	time.Sleep(10 * time.Millisecond) // let it re-enter read (not required)
	if _, err := c.stdin.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	c.stdin.Close()
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("reader after freeze/inject/thaw: %v", err)
	}
}

func counters(t *testing.T, pid int, addr uint64) [16]uint64 {
	var out [16]uint64
	for i := range out {
		out[i] = readU64(t, pid, addr+uint64(8*i))
	}
	return out
}

func TestThreads(t *testing.T) {
	needRoot(t)
	tr := New()
	c := startChild(t, tr, buildC(t, "threads", "-pthread"))
	addr := c.addr(t)
	waitBlocked(t, c.pid) // the main thread in pthread_join
	tids, err := tr.FreezeProcess(c.pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(tids) != 17 || tids[0] != c.pid {
		t.Fatalf("froze %d threads %v, want 17 with the leader first", len(tids), tids)
	}
	for _, tid := range tids {
		st, err := procfs.ReadTaskStatus(c.pid, tid)
		if err != nil {
			t.Fatal(err)
		}
		if st.State != 't' || st.TracerPid != tr.ThreadID() {
			t.Errorf("thread %d: state %c tracer %d", tid, st.State, st.TracerPid)
		}
	}
	before := counters(t, c.pid, addr)
	regs := exercise(t, tr, c.pid, tids)
	if r := regs[c.pid]; r.Orig_rax != unix.SYS_FUTEX || Restart(&r) == NoRestart {
		t.Errorf("main thread in pthread_join: orig_rax %d rax %d", r.Orig_rax, int64(r.Rax))
	}
	// Every thread has its own TLS block: fs_base is set and distinct.
	fs := make(map[uint64]int)
	for tid, r := range regs {
		if r.Fs_base == 0 {
			t.Errorf("thread %d: fs_base 0", tid)
		}
		fs[r.Fs_base] = tid
	}
	if len(fs) != len(tids) {
		t.Errorf("%d distinct fs_base values for %d threads", len(fs), len(tids))
	}
	if after := counters(t, c.pid, addr); after != before {
		t.Errorf("counters moved while frozen")
	}
	if err := tr.ThawProcess(c.pid, false); err != nil {
		t.Fatal(err)
	}
	assertFree(t, c.pid)
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i < 16; {
		if readU64(t, c.pid, addr+uint64(8*i)) > before[i] {
			i++
			continue
		}
		if time.Now().After(deadline) {
			t.Fatalf("thread %d's counter stopped after thaw", i)
		}
		time.Sleep(time.Millisecond)
	}
	if st, _ := procfs.ReadStat(c.pid); st == nil || st.NumThreads != 17 {
		t.Errorf("threads lost after thaw")
	}
}

// A freeze that fails half-way (one thread is already traced by another
// tracer) must leave every thread running and untraced by us.
func TestPartialFreezeReleases(t *testing.T) {
	needRoot(t)
	tr := New()
	c := startChild(t, tr, buildC(t, "threads", "-pthread"))
	addr := c.addr(t)
	tids, err := procfs.Tasks(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	victim := tids[len(tids)/2]
	other := New()
	defer other.Close()
	if err := other.Seize(victim, 0); err != nil {
		t.Fatal(err)
	}
	_, err = tr.FreezeProcess(c.pid, 0)
	if !errors.Is(err, unix.EPERM) {
		t.Fatalf("freeze with a thread traced elsewhere: %v, want EPERM", err)
	}
	if n := len(tr.Traced()); n != 0 {
		t.Errorf("tracer still holds %d tasks", n)
	}
	for _, tid := range tids {
		st, err := procfs.ReadTaskStatus(c.pid, tid)
		if err != nil {
			t.Fatal(err)
		}
		wantTracer := 0
		if tid == victim {
			wantTracer = other.ThreadID()
		}
		if st.TracerPid != wantTracer || st.State == 't' {
			t.Errorf("thread %d after failed freeze: TracerPid %d State %c", tid, st.TracerPid, st.State)
		}
	}
	other.Close()
	assertFree(t, c.pid)
	before := counters(t, c.pid, addr)
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i < 16; {
		if readU64(t, c.pid, addr+uint64(8*i)) > before[i] {
			i++
			continue
		}
		if time.Now().After(deadline) {
			t.Fatalf("thread %d stuck after failed freeze", i)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestFreezeErrors(t *testing.T) {
	needRoot(t)
	tr := New()
	defer tr.Close()
	if _, err := tr.FreezeProcess(unix.Getpid(), 0); err == nil {
		t.Error("froze ourselves")
	}
	// A PID that does not exist: above pid_max.
	if _, err := tr.FreezeProcess(1<<22+1, 0); !errors.Is(err, unix.ESRCH) {
		t.Errorf("freeze of a missing pid: %v", err)
	}
	if _, err := tr.GetRegs(1); err == nil {
		t.Error("GetRegs of an untraced task succeeded")
	}
}

func TestKillProcess(t *testing.T) {
	needRoot(t)
	tr := New()
	c := startChild(t, tr, buildC(t, "threads", "-pthread"))
	if _, err := tr.FreezeProcess(c.pid, 0); err != nil {
		t.Fatal(err)
	}
	if err := tr.KillProcess(c.pid); err != nil {
		t.Fatal(err)
	}
	if n := len(tr.Traced()); n != 0 {
		t.Errorf("%d tasks still traced after kill", n)
	}
	// We are its parent and tracer: the leader has been reaped.
	if _, err := procfs.ReadStat(c.pid); err == nil {
		t.Errorf("pid %d still exists after KillProcess", c.pid)
	}
}

// After an injection the thread must still restart its interrupted syscall
// when simply continued (not detached): a detach happens to raise
// TIF_SIGPENDING and so runs the kernel's restart logic anyway, a
// PTRACE_CONT from a syscall-exit stop would not, and read would return
// -ERESTARTSYS to the program.
func TestInjectThenCont(t *testing.T) {
	needRoot(t)
	tr := New()
	c := startChild(t, tr, buildC(t, "read"))
	waitBlocked(t, c.pid)
	if _, err := tr.FreezeProcess(c.pid, 0); err != nil {
		t.Fatal(err)
	}
	if got, err := tr.InjectSyscall(c.pid, unix.SYS_GETPID); err != nil || int(got) != c.pid {
		t.Fatalf("getpid: %d, %v", got, err)
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
		t.Fatalf("reader continued after injection: %v", err)
	}
}

// Thawing with an injection session still open restores the thread first.
func TestThawEndsSession(t *testing.T) {
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
	if _, err := s.Syscall(unix.SYS_GETPID); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.BeginInjection(c.pid); err == nil {
		t.Error("second session on one thread accepted")
	}
	if err := tr.ThawProcess(c.pid, false); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Syscall(unix.SYS_GETPID); err == nil {
		t.Error("syscall on an ended session accepted")
	}
	assertFree(t, c.pid)
	c.stdin.Write([]byte("hello"))
	c.stdin.Close()
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("reader after thaw with an open session: %v", err)
	}
}

// The kernel decides on a restart from the registers it finds at resume:
// a thread stopped in read() with rax turned into -EINTR returns EINTR to
// the program (what a restorer does with ERESTART_RESTARTBLOCK, whose
// restart block cannot be carried over).
func TestSetRegsEINTR(t *testing.T) {
	needRoot(t)
	tr := New()
	c := startChild(t, tr, buildC(t, "read"))
	waitBlocked(t, c.pid)
	if _, err := tr.FreezeProcess(c.pid, 0); err != nil {
		t.Fatal(err)
	}
	r, err := tr.GetRegs(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	if Restart(&r) != RestartSame {
		t.Fatalf("not in a restartable read: rax %d", int64(r.Rax))
	}
	eintr := -int64(unix.EINTR)
	r.Rax = uint64(eintr)
	if err := tr.SetRegs(c.pid, r); err != nil {
		t.Fatal(err)
	}
	if got, err := tr.GetRegs(c.pid); err != nil || got != r {
		t.Fatalf("GetRegs after SetRegs: %+v %v", got, err)
	}
	if err := tr.ThawProcess(c.pid, false); err != nil {
		t.Fatal(err)
	}
	err = c.cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 10+int(unix.EINTR) {
		t.Fatalf("reader: %v, want exit %d (read failed with EINTR)", err, 10+int(unix.EINTR))
	}
}

// A thread in sigsuspend runs with a temporary mask and restores its own on
// return. PTRACE_GETSIGMASK reports the one it will return to, and
// injection (whose PTRACE_SETSIGMASK drops the pending restore) must leave
// the syscall to restart with it.
func TestSigsuspendMask(t *testing.T) {
	needRoot(t)
	tr := New()
	c := startChild(t, tr, buildC(t, "sigsuspend"))
	waitBlocked(t, c.pid)
	if _, err := tr.FreezeProcess(c.pid, 0); err != nil {
		t.Fatal(err)
	}
	st, err := procfs.ReadStatus(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	m, err := tr.GetSigmask(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	hup := uint64(1 << (unix.SIGHUP - 1))
	if m != hup {
		t.Errorf("GETSIGMASK %#x, want the saved mask %#x", m, hup)
	}
	if st.SigBlk == hup || st.SigBlk&(1<<(unix.SIGUSR2-1)) != 0 {
		t.Errorf("status SigBlk %#x: expected the temporary mask", st.SigBlk)
	}
	if _, err := tr.InjectSyscall(c.pid, unix.SYS_GETPID); err != nil {
		t.Fatal(err)
	}
	if err := tr.ThawProcess(c.pid, false); err != nil {
		t.Fatal(err)
	}
	waitBlocked(t, c.pid)
	if st, _ := procfs.ReadStatus(c.pid); st == nil || st.SigBlk&(1<<(unix.SIGUSR2-1)) != 0 {
		t.Errorf("after thaw, sigsuspend's temporary mask is not back")
	}
	if err := unix.Kill(c.pid, unix.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("sigsuspend child: %v (2: no handler, 3: wrong mask after)", err)
	}
}

// TestEndWithSyscall ends a session with a munmap in two stops: the page
// is gone, the thread has its registers back (a read to restart), and it
// resumes into that read as after End.
func TestEndWithSyscall(t *testing.T) {
	needRoot(t)
	tr := New()
	c := startChild(t, tr, buildC(t, "read"))
	waitBlocked(t, c.pid)
	if _, err := tr.FreezeProcess(c.pid, 0); err != nil {
		t.Fatal(err)
	}
	before, err := tr.GetRegs(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	s, err := tr.BeginInjection(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	page, err := s.Syscall(unix.SYS_MMAP, 0, 4096, unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		s.End()
		t.Fatal(err)
	}
	_, stops0, _ := tr.InjectionStats()
	if got, err := s.EndWithSyscall(unix.SYS_MUNMAP, page, 4096); err != nil || got != 0 {
		t.Fatalf("munmap at the end: %d, %v", got, err)
	}
	if _, stops, _ := tr.InjectionStats(); stops-stops0 != 2 {
		t.Errorf("%d stops for the last call and the end, want 2", stops-stops0)
	}
	maps, err := procfs.ReadMaps(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range maps {
		if m.Start <= page && page < m.End {
			t.Errorf("page %#x still mapped: %+v", page, m)
		}
	}
	after, err := tr.GetRegs(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	if after != before {
		t.Errorf("registers after the session:\n%+v\nwant\n%+v", after, before)
	}
	if _, err := s.Syscall(unix.SYS_GETPID); err == nil {
		t.Error("a call after the session ended ran")
	}
	if err := tr.ThawProcess(c.pid, false); err != nil {
		t.Fatal(err)
	}
	assertFree(t, c.pid)
	if _, err := c.stdin.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	c.stdin.Close()
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("reader after the session: %v", err)
	}
}
