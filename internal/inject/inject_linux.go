package inject

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"godwit/internal/ptrace"
)

// Session is a run of injected syscalls in one thread of a task.
type Session struct {
	s       *ptrace.Session
	pid     int    // the task, whose memory holds the scratch area
	scratch uint64 // address of the scratch area in the task
	size    uint64 // its size
	// code and tableOff enable batches (SetBatch).
	code, tableOff uint64
	// later are calls queued by Later, run before anything that needs
	// the task's state after them; puts are the scratch ranges written
	// since they were queued (a Put over one runs them first).
	later []Call
	puts  [][2]uint64
	// stash is the low end of the Stash buffers (from the table area
	// down), in use until the queue runs.
	stash uint64
}

// Begin starts injecting into thread tid of task pid, whose scratch area
// of size bytes is at scratch.
func Begin(tr *ptrace.Tracer, pid, tid int, scratch, size uint64) (*Session, error) {
	s, err := tr.BeginInjection(tid)
	if err != nil {
		return nil, err
	}
	return &Session{s: s, pid: pid, scratch: scratch, size: size}, nil
}

// Wrap makes a Session of an injection session already open (e.g. one
// that made the scratch area).
func Wrap(s *ptrace.Session, pid int, scratch, size uint64) *Session {
	return &Session{s: s, pid: pid, scratch: scratch, size: size}
}

// Ptrace is the underlying injection session.
func (s *Session) Ptrace() *ptrace.Session { return s.s }

// Scratch is the scratch area's address in the task.
func (s *Session) Scratch() uint64 { return s.scratch }

// Pid is the task the session injects into.
func (s *Session) Pid() int { return s.pid }

// End runs the queued calls (Later) unless err (the caller's) is set,
// then gives the thread its registers back; err wins over End's own.
func (s *Session) End(err error) error {
	if err == nil {
		err = s.Flush()
	}
	s.later, s.puts, s.stash = nil, nil, 0
	if eerr := s.s.End(); eerr != nil && err == nil {
		err = eerr
	}
	return err
}

// EndWith runs the queued calls, then the call nr as the session's last
// (ptrace.Session.EndWithSyscall: a call that does not sleep
// interruptibly, two stops for it and the session's end), and ends the
// session; what names the call in errors.
func (s *Session) EndWith(what string, nr uintptr, args ...uint64) error {
	if err := s.Flush(); err != nil {
		return s.End(err)
	}
	s.later, s.puts, s.stash = nil, nil, 0
	if _, err := s.s.EndWithSyscall(nr, args...); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// Later queues a call whose result only matters if it fails. Queued
// calls run, in order, with the next Call or Batch of the session (in
// the same stop when the runner is set), or at Read, Flush or End; a
// failure is reported there, naming the call (without its errno, which
// callers must not take for their own call's).
func (s *Session) Later(what string, nr uintptr, args ...uint64) {
	s.later = append(s.later, C(what, nr, args...))
}

// Stash writes b into the scratch area for a queued call (Later) and
// returns its address: below the batch tables, apart from what Put
// places from the bottom, and kept until the queue runs.
func (s *Session) Stash(b []byte) (uint64, error) {
	top := s.stash
	if top == 0 {
		top = min(s.tableOff, s.size)
		if s.code == 0 {
			top = s.size
		}
	}
	n := (uint64(len(b)) + 7) &^ 7
	if n > top {
		if err := s.Flush(); err != nil {
			return 0, err
		}
		return s.Put(0, b)
	}
	off := top - n
	a, err := s.Put(off, b)
	if err != nil {
		return 0, err
	}
	s.stash = off
	if s.stash == 0 {
		s.stash = 1 // all used: the next one flushes (n > 1 - …)
	}
	return a, nil
}

// Flush runs the queued calls.
func (s *Session) Flush() error {
	_, err := s.Batch(nil)
	return err
}

// Call runs one syscall (after the queued ones); what names it in
// errors, which wrap the errno when the call returned one.
func (s *Session) Call(what string, nr uintptr, args ...uint64) (uint64, error) {
	if len(s.later) > 0 {
		out, err := s.Batch([]Call{C(what, nr, args...)})
		if err != nil {
			return 0, err
		}
		return out[0], nil
	}
	ret, err := s.s.Syscall(nr, args...)
	if err != nil {
		if en, ok := Errno(err); ok {
			return ret, fmt.Errorf("%s: %w", what, en)
		}
		return ret, fmt.Errorf("%s: %w", what, err)
	}
	return ret, nil
}

// Errno digs the errno out of an injected call's error.
func Errno(err error) (unix.Errno, bool) {
	var en unix.Errno
	if errors.As(err, &en) {
		return en, true
	}
	return 0, false
}

// batching reports whether batch tables take part of the scratch area.
func (s *Session) batching() bool { return s.code != 0 && s.tableOff < s.size }

// Room is how many bytes of the scratch area, from its start, the calls'
// buffers may use: up to the batch tables when batching is on (the
// runner rewrites the tables at every batch and single call).
func (s *Session) Room() uint64 {
	if s.batching() {
		return s.tableOff
	}
	return s.size
}

// tableEnd is the end of the batch tables' area: the scratch's end, or
// the runner's code when it sits in the scratch above the tables.
func (s *Session) tableEnd() uint64 {
	if c := s.code; c >= s.scratch+s.tableOff && c < s.scratch+s.size {
		return c - s.scratch
	}
	return s.size
}

func (s *Session) check(off uint64, n int) error {
	end := off + uint64(n)
	if end < off || end > s.size {
		return fmt.Errorf("scratch overflow: %d bytes at %d", n, off)
	}
	if s.batching() && end > s.tableOff {
		return fmt.Errorf("scratch overflow into the batch tables: %d bytes at %d (tables at %d)", n, off, s.tableOff)
	}
	return nil
}

// Read reads len(b) bytes of the scratch area at off (after running the
// queued calls, which may write there).
func (s *Session) Read(off uint64, b []byte) error {
	if err := s.check(off, len(b)); err != nil {
		return err
	}
	if err := s.Flush(); err != nil {
		return err
	}
	return ptrace.ReadMem(s.pid, s.scratch+off, b)
}

// Put writes b into the scratch area at off and returns its address.
func (s *Session) Put(off uint64, b []byte) (uint64, error) {
	if err := s.check(off, len(b)); err != nil {
		return 0, err
	}
	if len(s.later) > 0 {
		// A queued call may read what an earlier Put left here: run
		// the queue before overwriting it.
		for _, p := range s.puts {
			if off < p[1] && p[0] < off+uint64(len(b)) {
				if err := s.Flush(); err != nil {
					return 0, err
				}
				break
			}
		}
	}
	s.puts = append(s.puts, [2]uint64{off, off + uint64(len(b))})
	a := s.scratch + off
	if err := ptrace.WriteMem(s.pid, a, b); err != nil {
		return 0, err
	}
	return a, nil
}

// PutString writes a NUL-terminated string at off.
func (s *Session) PutString(off uint64, str string) (uint64, error) {
	return s.Put(off, append([]byte(str), 0))
}

// atFdcwd is AT_FDCWD (-100) as a syscall argument.
const atFdcwd = ^uint64(99)

// Openat opens path in the task (AT_FDCWD: its own root and cwd) and
// returns the new fd; what names the purpose in errors. The path is
// stashed (Stash), not put at the bottom, where queued calls' buffers
// would have to run first: the queue runs with the open, in one stop.
func (s *Session) Openat(what, path string, flags int) (uint64, error) {
	a, err := s.Stash(append([]byte(path), 0))
	if err != nil {
		return 0, err
	}
	return s.Call(fmt.Sprintf("%s: open %s", what, path), unix.SYS_OPENAT, atFdcwd, a, uint64(flags), 0)
}

// Call is one syscall of a batch; What names it in errors.
type Call struct {
	What string
	Nr   uintptr
	Args [6]uint64
}

// C makes a Call.
func C(what string, nr uintptr, args ...uint64) Call {
	c := Call{What: what, Nr: nr}
	copy(c.Args[:], args)
	return c
}

// SetBatch lets Batch run its calls with one stop per batch: the runner
// (ptrace.BatchCode) is at code in the task, executable, and the tables
// go in the scratch area from off to its end, which the calls' own
// buffers must leave alone; single calls (Call) take the runner too.
// Without it Batch injects the calls one by one.
func (s *Session) SetBatch(code, off uint64) {
	s.code, s.tableOff = code, off
	if s.batching() && ptrace.BatchTableSize(1) <= s.tableEnd()-off {
		// Single calls take the runner too.
		s.s.SetRunner(code, s.scratch+off)
	}
}

// Batch runs calls in order, as many Calls would, and returns their
// results; it stops at the first that fails, whose error names it and
// wraps its errno (the results of those before it are returned).
func (s *Session) Batch(calls []Call) ([]uint64, error) {
	q := len(s.later)
	if q == 0 {
		return s.batch(calls)
	}
	all := append(s.later, calls...)
	// The buffers put for the queue are free once it runs: a Put over
	// them later needs no flush.
	s.later, s.stash, s.puts = nil, 0, nil
	out, err := s.batch(all)
	if err != nil && len(out) < q {
		// A queued call failed: named, its errno not wrapped (the
		// caller's own call did not run).
		return nil, queuedError{err.Error()}
	}
	return out[q:], err
}

// ErrQueued is what the error of a queued call (Later) that failed at a
// Call, Batch, Read, Flush or End is (errors.Is): not the failure of the
// calls given there, none of which ran.
var ErrQueued = errors.New("queued call failed")

// queuedError names the queued call that failed; it does not wrap its
// errno, which a caller must not take for its own call's.
type queuedError struct{ msg string }

func (e queuedError) Error() string        { return "queued call " + e.msg }
func (e queuedError) Is(target error) bool { return target == ErrQueued }

func (s *Session) batch(calls []Call) ([]uint64, error) {
	out := make([]uint64, 0, len(calls))
	if s.code == 0 || s.tableOff >= s.size {
		for _, c := range calls {
			ret, err := s.Call(c.What, c.Nr, c.Args[:]...)
			if err != nil {
				return out, err
			}
			out = append(out, ret)
		}
		return out, nil
	}
	room := s.tableEnd() - s.tableOff
	per := 0
	for ptrace.BatchTableSize(per+1) <= room {
		per++
	}
	if per == 0 {
		return nil, fmt.Errorf("batch: no room for a table in %d bytes", room)
	}
	pc := make([]ptrace.Call, len(calls))
	for i, c := range calls {
		pc[i] = ptrace.Call{Nr: c.Nr, Args: c.Args}
	}
	for len(pc) > 0 {
		chunk := pc[:min(per, len(pc))]
		got, err := s.s.Batch(s.code, s.scratch+s.tableOff, chunk)
		if err != nil {
			return out, fmt.Errorf("%s: %w", calls[len(out)].What, err)
		}
		out = append(out, got...)
		if last := got[len(got)-1]; len(got) < len(chunk) || int64(last) < 0 && int64(last) >= -4095 {
			if r := int64(last); r < 0 && r >= -4095 {
				return out[:len(out)-1], fmt.Errorf("%s: %w", calls[len(out)-1].What, unix.Errno(-r))
			}
			return out, fmt.Errorf("%s: batch stopped after %d of %d calls", calls[len(out)-1].What, len(got), len(chunk))
		}
		pc = pc[len(chunk):]
	}
	return out, nil
}

// PutLarge writes b for a call's input: at off in the scratch area when
// it fits below the batch tables (Room), else in a private anonymous
// mapping of its own made in the task, for payloads larger than the
// scratch (a 65536-entry group list). free, never nil, unmaps that
// mapping; call it once the calls that read b have run.
func (s *Session) PutLarge(what string, off uint64, b []byte) (addr uint64, free func() error, err error) {
	nop := func() error { return nil }
	if end := off + uint64(len(b)); end >= off && end <= s.Room() {
		a, err := s.Put(off, b)
		return a, nop, err
	}
	n := (uint64(len(b)) + pageSize - 1) &^ (pageSize - 1)
	if n == 0 {
		return 0, nop, fmt.Errorf("%s: empty buffer", what)
	}
	a, err := s.Call(fmt.Sprintf("%s: map %d bytes for its buffer", what, n), unix.SYS_MMAP, 0, n,
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		return 0, nop, err
	}
	free = func() error {
		_, err := s.Call(fmt.Sprintf("%s: unmap its buffer at %#x", what, a), unix.SYS_MUNMAP, a, n)
		return err
	}
	if err := ptrace.WriteMem(s.pid, a, b); err != nil {
		return 0, nop, errors.Join(fmt.Errorf("%s: write its buffer: %w", what, err), free())
	}
	return a, free, nil
}

// pageSize is the size of the mappings PutLarge makes.
const pageSize = 4096
