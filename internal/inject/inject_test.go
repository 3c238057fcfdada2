package inject

import (
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

func TestErrno(t *testing.T) {
	err := fmt.Errorf("open /x: %w", fmt.Errorf("injected call: %w", unix.ENOENT))
	if en, ok := Errno(err); !ok || en != unix.ENOENT {
		t.Errorf("Errno = %v, %v", en, ok)
	}
	if _, ok := Errno(fmt.Errorf("no errno")); ok {
		t.Error("Errno found one in an error without")
	}
}
