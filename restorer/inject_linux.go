package restorer

import (
	"fmt"

	"golang.org/x/sys/unix"

	"godwit/internal/ptrace"
)

// session is a run of injected syscalls into one thread of the task, with
// the scratch page for their in/out buffers.
type session struct {
	r   *Restorer
	s   *ptrace.Session
	tid int
}

func (r *Restorer) begin(tid int) (*session, error) {
	s, err := r.tr.BeginInjection(tid)
	if err != nil {
		return nil, err
	}
	return &session{r: r, s: s, tid: tid}, nil
}

// end restores the thread's registers; err (the session's) wins.
func (s *session) end(err error) error {
	if eerr := s.s.End(); eerr != nil && err == nil {
		err = eerr
	}
	return err
}

// call runs one syscall; what names it in errors.
func (s *session) call(what string, nr uintptr, args ...uint64) (uint64, error) {
	ret, err := s.s.Syscall(nr, args...)
	if err != nil {
		if en, ok := errnoOf(err); ok {
			return ret, fmt.Errorf("%s: %w", what, en)
		}
		return ret, fmt.Errorf("%s: %w", what, err)
	}
	return ret, nil
}

// errnoOf digs the errno out of an injected call's error.
func errnoOf(err error) (unix.Errno, bool) {
	for e := err; e != nil; {
		if en, ok := e.(unix.Errno); ok {
			return en, true
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			return 0, false
		}
		e = u.Unwrap()
	}
	return 0, false
}

// put writes b into the scratch area at off and returns its address.
func (s *session) put(off uint64, b []byte) (uint64, error) {
	if off+uint64(len(b)) > scratchSize {
		return 0, fmt.Errorf("scratch overflow: %d bytes at %d", len(b), off)
	}
	a := s.r.win.scratch + off
	if err := ptrace.WriteMem(s.r.img.pid, a, b); err != nil {
		return 0, err
	}
	return a, nil
}

// putString writes a NUL-terminated string at off.
func (s *session) putString(off uint64, str string) (uint64, error) {
	return s.put(off, append([]byte(str), 0))
}

// openat opens path in the task (AT_FDCWD) and returns the new fd.
func (s *session) openat(what, path string, flags int) (uint64, error) {
	a, err := s.putString(0, path)
	if err != nil {
		return 0, err
	}
	return s.call(fmt.Sprintf("%s: open %s", what, path), unix.SYS_OPENAT,
		atFdcwd, a, uint64(flags), 0)
}

// atFdcwd is AT_FDCWD (-100) as a syscall argument.
const atFdcwd = ^uint64(99)
