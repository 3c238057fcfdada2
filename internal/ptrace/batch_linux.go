package ptrace

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
)

// Batched injection.
//
// Each injected syscall costs two ptrace stops (entry and exit), each a
// round trip through the scheduler. A batch instead runs a list of
// syscalls with one stop: a small runner (BatchCode) that the caller has
// put in executable memory of the tracee walks a table of calls in the
// tracee's memory, stores each result beside its call, stops at the first
// error, and ends with a call that makes the thread trap.
//
// The trap is a signal the thread sends itself (rt_tgsigqueueinfo with a
// siginfo of ours) while every signal is blocked, then unblocks (one
// rt_sigprocmask): the only signal unblocked, and only from then on. A
// traced thread reports every signal to its tracer before anything else
// happens to it (even an ignored one), and the tracer discards it, so the
// run leaves no trace: unlike int3 or a single-step, whose forced SIGTRAP
// would reset a blocked or ignored SIGTRAP to SIG_DFL, and unlike SIGSTOP,
// which would start a group stop. The signal is a real-time one, never
// merged with another of its number (each is queued): a non-real-time trap
// would swallow the program's own signal of that number (a pending one
// takes no second), and the program would never see it.
//
// The program's own signals of the trap's number are kept exactly. The
// kernel dequeues a thread's private queue before its process's shared
// one, and ours is in the private queue when the number is unblocked: a
// process-directed signal of the program's is never dequeued (it stays in
// the shared queue), and those the thread dequeues are thread-directed
// ones, queued before ours or after it. The tracer takes them all in queue
// order (those after ours while the private queue still holds the number),
// with their siginfo, and right after the run queues them again, in order,
// by rt_tgsigqueueinfo injected in the thread itself (which the kernel
// allows whatever the si_code: sender, si_code and si_value are kept).

// batchEntry is the size of one table entry: nr, six arguments, result.
const batchEntry = 64

// batchSiginfo is the size of the trap's siginfo after the table.
const batchSiginfo = 128

// BatchCode is the runner, position-independent x86-64 code. Registers
// in: rbx = the first entry, r12 = the number of calls, r13 = the trap
// entries (two of nr and four arguments: the send, then the unblock).
// Out: rbx = the entry it stopped at.
//
//	loop:	test r12, r12; je trap
//		mov rax,[rbx]; mov rdi,[rbx+8]; mov rsi,[rbx+16]; mov rdx,[rbx+24]
//		mov r10,[rbx+32]; mov r8,[rbx+40]; mov r9,[rbx+48]
//		syscall; mov [rbx+56],rax
//		cmp rax,-4095; jae trap
//		add rbx,64; dec r12; jmp loop
//	trap:	mov rax,[r13]; mov rdi,[r13+8]; mov rsi,[r13+16]; mov rdx,[r13+24]
//		mov r10,[r13+32]; syscall
//		mov rax,[r13+64]; mov rdi,[r13+72]; mov rsi,[r13+80]; mov rdx,[r13+88]
//		mov r10,[r13+96]; syscall
//		int3		; only if the trap calls themselves failed
var BatchCode = []byte{
	0x4d, 0x85, 0xe4, 0x74, 0x32,
	0x48, 0x8b, 0x03, 0x48, 0x8b, 0x7b, 0x08, 0x48, 0x8b, 0x73, 0x10, 0x48, 0x8b, 0x53, 0x18,
	0x4c, 0x8b, 0x53, 0x20, 0x4c, 0x8b, 0x43, 0x28, 0x4c, 0x8b, 0x4b, 0x30,
	0x0f, 0x05, 0x48, 0x89, 0x43, 0x38,
	0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, 0x73, 0x09,
	0x48, 0x83, 0xc3, 0x40, 0x49, 0xff, 0xcc, 0xeb, 0xc9,
	0x49, 0x8b, 0x45, 0x00, 0x49, 0x8b, 0x7d, 0x08, 0x49, 0x8b, 0x75, 0x10, 0x49, 0x8b, 0x55, 0x18,
	0x4d, 0x8b, 0x55, 0x20, 0x0f, 0x05,
	0x49, 0x8b, 0x45, 0x40, 0x49, 0x8b, 0x7d, 0x48, 0x49, 0x8b, 0x75, 0x50, 0x49, 0x8b, 0x55, 0x58,
	0x4d, 0x8b, 0x55, 0x60, 0x0f, 0x05,
	0xcc,
}

// batchTrapEnd is the runner's rip right after the trap's last call (the
// unblock, on whose return the trap is delivered).
const batchTrapEnd = 0x63

// batchMask is the size of the signal mask the trap's unblock sets.
const batchMask = 8

// BatchTableSize is the tracee memory a batch of n calls needs for its
// table (writable, 8-byte aligned): the calls, the trap's two entries,
// its siginfo and its mask.
func BatchTableSize(n int) uint64 {
	return uint64(n+2)*batchEntry + batchSiginfo + batchMask
}

// Call is one syscall of a batch.
type Call struct {
	Nr   uintptr
	Args [6]uint64
}

// batchMagic marks the trap's siginfo (si_pid, si_uid and si_value).
const batchMagic = 0x676f64776974 // "godwit"

// siSIQueue is SI_QUEUE (include/uapi/asm-generic/siginfo.h): a code any
// sender may use.
const siSIQueue = -1

// siSIQueueBits is SI_QUEUE as the int field stores it.
const siSIQueueBits = 0xffffffff

// Real-time signals the trap may use (asm-generic/signal.h's SIGRTMAX,
// from the top down to above the three glibc and musl keep for their
// threads): queued, so never merged with the program's.
const (
	trapSigMax = 64
	trapSigMin = 35
)

// chooseTrap picks the trap signal for a thread whose status is st: the
// highest real-time signal not pending (else a queue of the program's
// would stand before ours in every batch) and neither handled nor blocked
// by the program, so one it is unlikely to be sent at all (a collision is
// exact, see the top, but costs an injected call per signal). Failing
// that, the highest blocked and not handled one: those a program waits for
// (sigwaitinfo, signalfd) mostly come process-directed (sigqueue, timers,
// mq_notify), which never meet the trap in the thread's private queue,
// while those it handles are the ones threads direct at one another
// (pthread_kill, pthread_sigqueue). Then the highest not pending.
func chooseTrap(st *procfs.Status) unix.Signal {
	var blocked, caught unix.Signal
	for sig := unix.Signal(trapSigMax); sig >= trapSigMin; sig-- {
		bit := uint64(1) << (sig - 1)
		switch {
		case (st.SigPnd|st.ShdPnd)&bit != 0:
		case st.SigCgt&bit == 0 && st.SigBlk&bit == 0:
			return sig
		case st.SigCgt&bit == 0:
			if blocked == 0 {
				blocked = sig
			}
		case caught == 0:
			caught = sig
		}
	}
	if blocked != 0 {
		return blocked
	}
	return caught
}

// Batch runs calls in order in the session's thread with one stop, the
// runner at code (BatchCode, executable in the tracee) and the table at
// table (BatchTableSize(len(calls)) writable bytes in the tracee). It
// returns the results of the calls that ran: all of them, or up to and
// including the first that failed (its result the raw -errno). err is
// for a failure of the mechanism only.
func (s *Session) Batch(code, table uint64, calls []Call) ([]uint64, error) {
	if len(calls) == 0 {
		return nil, nil
	}
	var out []uint64
	err := s.t.Do(func() error {
		var err error
		out, err = s.batch(code, table, calls)
		return err
	})
	return out, err
}

func (s *Session) batch(code, table uint64, calls []Call) ([]uint64, error) {
	if s.ended {
		return nil, errors.New("injection session already ended")
	}
	tk := s.tk
	if s.t.tasks[tk.tid] != tk {
		return nil, fmt.Errorf("inject into %d: %w", tk.tid, ErrGone)
	}
	tgid := s.t.tgidOf(tk)
	// The trap call runs in the thread: its own ids.
	ownTgid, ownTid, err := s.t.ownIDs(tk)
	if err != nil {
		return nil, fmt.Errorf("batch into %d: %w", tk.tid, err)
	}
	if s.trapSig == 0 {
		st, err := procfs.ReadStatus(tk.tid)
		if err != nil {
			return nil, fmt.Errorf("batch into %d: %w", tk.tid, err)
		}
		if s.trapSig = chooseTrap(st); s.trapSig == 0 {
			return nil, fmt.Errorf("batch into %d: every real-time signal from %d to %d is pending", tk.tid, trapSigMin, trapSigMax)
		}
	}
	n := len(calls)
	for i := range calls {
		if touchesRunner(&calls[i], code, table, BatchTableSize(n)) {
			return nil, fmt.Errorf("batch into %d: call %d (syscall %d) would change the runner's own memory", tk.tid, i, calls[i].Nr)
		}
	}
	buf := make([]byte, BatchTableSize(n))
	ne := binary.NativeEndian
	for i, c := range calls {
		e := buf[i*batchEntry:]
		ne.PutUint64(e, uint64(c.Nr))
		for j, a := range c.Args {
			ne.PutUint64(e[8+8*j:], a)
		}
	}
	trap := table + uint64(n)*batchEntry
	info := trap + 2*batchEntry
	mask := info + batchSiginfo
	e := buf[n*batchEntry:]
	ne.PutUint64(e[0:], unix.SYS_RT_TGSIGQUEUEINFO)
	ne.PutUint64(e[8:], uint64(ownTgid))
	ne.PutUint64(e[16:], uint64(ownTid))
	ne.PutUint64(e[24:], uint64(s.trapSig))
	ne.PutUint64(e[32:], info)
	e = buf[(n+1)*batchEntry:]
	ne.PutUint64(e[0:], unix.SYS_RT_SIGPROCMASK)
	ne.PutUint64(e[8:], unix.SIG_SETMASK)
	ne.PutUint64(e[16:], mask)
	ne.PutUint64(e[24:], 0)
	ne.PutUint64(e[32:], batchMask)
	si := buf[(n+2)*batchEntry:]
	ne.PutUint32(si[0:], uint32(s.trapSig))
	ne.PutUint32(si[8:], uint32(siSIQueueBits))
	ne.PutUint64(si[16:], batchMagic) // si_pid, si_uid
	ne.PutUint64(si[24:], batchMagic) // si_value
	ne.PutUint64(buf[(n+2)*batchEntry+batchSiginfo:], ^uint64(0)&^(1<<(s.trapSig-1)))
	if err := WriteMem(tgid, table, buf); err != nil {
		return nil, fmt.Errorf("batch into %d: write table: %w", tk.tid, err)
	}
	r := s.saved
	r.Rip = code
	r.Rbx, r.R12, r.R13 = table, uint64(n), trap
	r.Orig_rax = ^uint64(0)
	if err := setRegs(tk.tid, &r); err != nil {
		return nil, err
	}
	// Every signal stays blocked until the trap's own unblock (the
	// session's mask, set again: a trap that ended early left it open).
	if err := setSigmask(tk.tid, ^uint64(0)); err != nil {
		return nil, err
	}
	s.ran = true
	s.t.calls += n
	s.t.stops++
	for _, c := range calls {
		s.t.byNr[c.Nr]++
		if sendsSignal(c.Nr) {
			defer func() { s.trapSig = 0 }()
		}
	}
	err = s.waitBatchTrap(code)
	if merr := setSigmask(tk.tid, ^uint64(0)); merr != nil && err == nil {
		err = merr
	}
	if err != nil {
		// The program's signals taken before the failure go back
		// all the same, if the thread is still there to take them.
		if len(s.taken) > 0 && s.t.tasks[tk.tid] == tk && tk.stopped {
			err = errors.Join(err, s.requeue(trap))
		}
		return nil, fmt.Errorf("batch into %d: %w", tk.tid, err)
	}
	if err := getRegs(tk.tid, &r); err != nil {
		return nil, err
	}
	if r.Rbx < table || r.Rbx > trap || (r.Rbx-table)%batchEntry != 0 {
		return nil, fmt.Errorf("batch into %d: runner stopped at entry %#x outside its table", tk.tid, r.Rbx)
	}
	ran := int((r.Rbx - table) / batchEntry)
	if ran < n {
		ran++ // the one that failed
	}
	if err := ReadMem(tgid, table, buf[:ran*batchEntry]); err != nil {
		return nil, fmt.Errorf("batch into %d: read results: %w", tk.tid, err)
	}
	out := make([]uint64, ran)
	for i := range out {
		out[i] = ne.Uint64(buf[i*batchEntry+56:])
	}
	if err := s.requeue(trap); err != nil {
		return nil, fmt.Errorf("batch into %d: %w", tk.tid, err)
	}
	return out, nil
}

// requeueTries bounds how often requeue puts the program's signals back
// in order while more of the number keep arriving.
const requeueTries = 16

// requeue queues again the program's signals of the trap's number that the
// last batch took (s.taken), each with its own siginfo, by
// rt_tgsigqueueinfo in the thread itself at the session's syscall
// instruction, with scratch (the batch's trap entries and siginfo: 256
// writable bytes) for its arguments. They must come first in the thread's
// queue of the number: any sent to the thread since the batch (between its
// last look at the queue and now) are taken out with rt_sigtimedwait and
// queued again after them, until a look after the requeue finds the queue
// in order. The number is pending then: the next batch chooses another.
func (s *Session) requeue(scratch uint64) error {
	if len(s.taken) == 0 {
		return nil
	}
	tk := s.tk
	tgid := s.t.tgidOf(tk)
	ownTgid, ownTid, err := s.t.ownIDs(tk)
	if err != nil {
		return fmt.Errorf("requeue signal %d: %w", s.trapSig, err)
	}
	sig := s.trapSig
	s.trapSig = 0
	want := s.taken
	s.taken = nil
	set, ts, info := scratch, scratch+8, scratch+batchEntry*2
	zero := make([]byte, 24)
	binary.NativeEndian.PutUint64(zero, 1<<(sig-1)) // set, then a zero timespec
	for try := 0; ; try++ {
		for _, si := range want {
			if err := WriteMem(tgid, info, si[:]); err != nil {
				return fmt.Errorf("requeue signal %d: %w", sig, err)
			}
			ret, err := s.syscallAt(unix.SYS_RT_TGSIGQUEUEINFO, []uint64{uint64(ownTgid), uint64(ownTid), uint64(sig), info})
			if err == nil && int64(ret) < 0 {
				err = unix.Errno(-int64(ret))
			}
			if err != nil {
				return fmt.Errorf("requeue signal %d: %w", sig, err)
			}
		}
		all, err := peekSiginfo(tk.tid, false)
		if err != nil {
			return fmt.Errorf("requeue signal %d: %w", sig, err)
		}
		var queue []Siginfo
		for _, si := range all {
			if si.Signo() == int32(sig) {
				queue = append(queue, si)
			}
		}
		if inOrder(queue, want) {
			return nil
		}
		if try == requeueTries {
			return fmt.Errorf("requeue signal %d: it keeps arriving, the thread's queue of it is never in order", sig)
		}
		// Take the whole queue of the number out (rt_sigtimedwait
		// takes the private queue first, and arrivals go to its tail),
		// and order it: ours, then the others as they came.
		if err := WriteMem(tgid, set, zero); err != nil {
			return fmt.Errorf("requeue signal %d: %w", sig, err)
		}
		var later []Siginfo
		for range queue {
			ret, err := s.syscallAt(unix.SYS_RT_SIGTIMEDWAIT, []uint64{set, info, ts, 8})
			if err == nil && int64(ret) != int64(sig) {
				err = fmt.Errorf("rt_sigtimedwait returned %d", int64(ret))
			}
			if err != nil {
				return fmt.Errorf("requeue signal %d: %w", sig, err)
			}
			var si Siginfo
			if err := ReadMem(tgid, info, si[:]); err != nil {
				return fmt.Errorf("requeue signal %d: %w", sig, err)
			}
			later = append(later, si)
		}
		want = append(want, without(later, want)...)
	}
}

// inOrder reports whether queue starts with want (equal siginfos are
// interchangeable: nothing tells them apart).
func inOrder(queue, want []Siginfo) bool {
	if len(queue) < len(want) {
		return false
	}
	for i := range want {
		if queue[i] != want[i] {
			return false
		}
	}
	return true
}

// without returns queue less one occurrence of each of want, in order.
func without(queue, want []Siginfo) []Siginfo {
	left := map[Siginfo]int{}
	for _, w := range want {
		left[w]++
	}
	var out []Siginfo
	for _, q := range queue {
		if left[q] > 0 {
			left[q]--
			continue
		}
		out = append(out, q)
	}
	return out
}

// waitBatchTrap runs the thread until the runner's trap, stepping over
// what comes first as waitSyscallStop does.
func (s *Session) waitBatchTrap(code uint64) error {
	tk := s.tk
	ours := false
	if err := s.t.resume(tk, unix.PTRACE_CONT, 0); err != nil {
		return err
	}
	for i := 0; i < maxStops; i++ {
		st, err := s.t.wait(tk)
		if err != nil {
			return err
		}
		switch {
		case st.Event == unix.PTRACE_EVENT_FORK || st.Event == unix.PTRACE_EVENT_VFORK || st.Event == unix.PTRACE_EVENT_CLONE:
			child, err := s.t.onEvent(tk, st)
			if err != nil {
				return err
			}
			s.children = append(s.children, child)
		case st.Event != 0 || st.isSyscall():
			// A group-stop, or another event: go on.
		case st.Sig == unix.SIGTRAP:
			var r Regs
			if err := getRegs(tk.tid, &r); err == nil && r.Rip == code+batchTrapEnd+1 {
				return fmt.Errorf("the runner's trap call failed (%d)", int64(r.Rax))
			}
			s.t.stash(tk, st.Sig)
		case st.Sig == s.trapSig:
			var r Regs
			if err := getRegs(tk.tid, &r); err != nil {
				return err
			}
			var si Siginfo
			if _, err := ptrace(unix.PTRACE_GETSIGINFO, tk.tid, 0, uintptr(unsafe.Pointer(&si[0]))); err != nil {
				return fmt.Errorf("siginfo: %w", err)
			}
			if !isBatchTrap(&si) {
				// The program's own, from the private queue
				// (see the top): queued again after the run.
				s.taken = append(s.taken, si)
			} else if r.Rip == code+batchTrapEnd {
				ours = true
			}
			if ours {
				// Those queued after ours, while the private
				// queue holds the number: the shared queue's
				// are not ours to take. (Mostly the queue is
				// empty: one ptrace call.)
				q, err := peekSiginfo(tk.tid, false)
				if err != nil {
					return fmt.Errorf("batch trap: %w", err)
				}
				more := false
				for i := range q {
					more = more || q[i].Signo() == int32(s.trapSig)
				}
				if !more {
					return nil
				}
			}
		default:
			s.t.stash(tk, st.Sig)
		}
		if err := s.t.resume(tk, unix.PTRACE_CONT, 0); err != nil {
			return err
		}
	}
	return fmt.Errorf("no batch trap after %d stops", maxStops)
}

// SetRunner makes every later single call of the session (Syscall) run
// through the runner at code with its table at table (BatchTableSize(1)
// writable bytes): one stop per call instead of two. Calls that make
// tasks (fork, vfork, clone, clone3) still run at a syscall instruction:
// the child starts where its parent returns.
func (s *Session) SetRunner(code, table uint64) {
	_ = s.t.Do(func() error { s.runCode, s.runTable = code, table; return nil })
}

// UseSyscallAddr makes the session's later calls that cannot take the
// runner (tasks made, the runner's own memory changed) run at addr, a
// syscall instruction of the tracee: for a session that outlives the
// one it began with (unmapped).
func (s *Session) UseSyscallAddr(addr uint64) {
	_ = s.t.Do(func() error { s.addr = addr; return nil })
}

// touchesRunner reports a call that would unmap, move, reprotect or
// replace the runner's code or the table (which the runner goes on
// reading after the call).
func touchesRunner(c *Call, code, table uint64, tableLen uint64) bool {
	over := func(a, n uint64) bool {
		hit := func(lo, hi uint64) bool { return a < hi && lo < a+n }
		return hit(code, code+uint64(len(BatchCode))) || hit(table, table+tableLen)
	}
	a := c.Args
	switch c.Nr {
	case unix.SYS_MUNMAP, unix.SYS_MPROTECT, unix.SYS_MADVISE, unix.SYS_PKEY_MPROTECT:
		return over(a[0], a[1])
	case unix.SYS_MMAP:
		return a[3]&unix.MAP_FIXED != 0 && a[3]&unix.MAP_FIXED_NOREPLACE == 0 && over(a[0], a[1])
	case unix.SYS_MREMAP:
		return over(a[0], a[1]) || a[3]&unix.MREMAP_FIXED != 0 && over(a[4], a[2])
	}
	return false
}

// forks reports the syscalls that make a task.
func forks(nr uintptr) bool {
	switch nr {
	case unix.SYS_FORK, unix.SYS_VFORK, unix.SYS_CLONE, unix.SYS_CLONE3:
		return true
	}
	return false
}

// sendsSignal reports the syscalls that may queue a signal to the thread
// (its own calls), after which the trap signal is chosen again: it must
// not be pending when a batch starts.
func sendsSignal(nr uintptr) bool {
	switch nr {
	case unix.SYS_KILL, unix.SYS_TKILL, unix.SYS_TGKILL, unix.SYS_RT_SIGQUEUEINFO, unix.SYS_RT_TGSIGQUEUEINFO,
		unix.SYS_PIDFD_SEND_SIGNAL:
		return true
	}
	return false
}

func isBatchTrap(si *Siginfo) bool {
	ne := binary.NativeEndian
	return si.Code() == siSIQueue && ne.Uint64(si[16:]) == batchMagic && ne.Uint64(si[24:]) == batchMagic
}
