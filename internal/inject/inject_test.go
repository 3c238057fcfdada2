package inject

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Buffers that do not fit the scratch area are refused before any
// memory of the task is touched.
func TestScratchBounds(t *testing.T) {
	s := &Session{pid: -1, scratch: 0x1000, size: 64}
	if _, err := s.Put(60, make([]byte, 8)); err == nil || !strings.Contains(err.Error(), "scratch overflow") {
		t.Errorf("Put past the end: %v", err)
	}
	if err := s.Read(^uint64(0)-2, make([]byte, 8)); err == nil || !strings.Contains(err.Error(), "scratch overflow") {
		t.Errorf("Read wrapping around: %v", err)
	}
	if _, err := s.PutString(0, strings.Repeat("x", 64)); err == nil {
		t.Error("a string one byte too long for its NUL fit")
	}
}

// With batching on, buffers stop at the batch tables: a Put or Read
// reaching them is refused (the runner would overwrite it, and a call
// would read table words as its data); without, the whole area is free.
func TestScratchTables(t *testing.T) {
	s := &Session{pid: -1, scratch: 0x10000, size: 64 << 10, code: 0x100000, tableOff: 32 << 10}
	if got := s.Room(); got != 32<<10 {
		t.Errorf("Room = %d, want %d", got, 32<<10)
	}
	for _, c := range []struct{ off, n uint64 }{{0, 32<<10 + 1}, {32<<10 - 4, 8}, {32 << 10, 4}, {40 << 10, 4}} {
		if _, err := s.Put(c.off, make([]byte, c.n)); err == nil || !strings.Contains(err.Error(), "scratch overflow into the batch tables") {
			t.Errorf("Put %d bytes at %d: %v", c.n, c.off, err)
		}
		if err := s.Read(c.off, make([]byte, c.n)); err == nil || !strings.Contains(err.Error(), "scratch overflow into the batch tables") {
			t.Errorf("Read %d bytes at %d: %v", c.n, c.off, err)
		}
	}
	if err := s.check(0, 32<<10); err != nil {
		t.Errorf("everything below the tables: %v", err)
	}
	// A stash too big for the room left falls back to offset 0, and is
	// refused there too.
	if _, err := s.Stash(make([]byte, 33<<10)); err == nil || !strings.Contains(err.Error(), "batch tables") {
		t.Errorf("Stash over the tables: %v", err)
	}
	s.code = 0
	if got := s.Room(); got != 64<<10 {
		t.Errorf("Room without batching = %d", got)
	}
	if err := s.check(32<<10, 32<<10); err != nil {
		t.Errorf("without batching: %v", err)
	}
	// The dumper's layout: the runner in the scratch right after the
	// tables, which must end at it.
	d := &Session{pid: -1, scratch: 0x10000, size: 16 << 10, code: 0x10000 + 12<<10, tableOff: 4 << 10}
	if got := d.tableEnd(); got != 12<<10 {
		t.Errorf("tableEnd with the runner in the scratch = %d, want %d", got, 12<<10)
	}
	if got := s.tableEnd(); got != s.size {
		t.Errorf("tableEnd with the runner outside = %d", got)
	}
}

// A queued call's failure is ErrQueued and wraps no errno.
func TestQueuedError(t *testing.T) {
	var err error = queuedError{"close bad: bad file descriptor"}
	if !errors.Is(err, ErrQueued) {
		t.Error("not ErrQueued")
	}
	if _, ok := Errno(err); ok {
		t.Error("carries an errno")
	}
	if errors.Is(fmt.Errorf("close: %w", unix.EBADF), ErrQueued) {
		t.Error("a plain call's error is ErrQueued")
	}
}

func TestErrno(t *testing.T) {
	err := fmt.Errorf("open /x: %w", fmt.Errorf("injected call: %w", unix.ENOENT))
	if en, ok := Errno(err); !ok || en != unix.ENOENT {
		t.Errorf("Errno = %v, %v", en, ok)
	}
	if _, ok := Errno(fmt.Errorf("no errno")); ok {
		t.Error("Errno found one in an error without")
	}
}
