package service

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// getsockoptBytes is getsockopt(2) into buf; it returns the length the
// kernel reported (for SO_PEERGROUPS, the size needed on ERANGE).
// x/sys/unix has no byte-slice getsockopt that reports that length.
func getsockoptBytes(fd, level, opt int, buf []byte) (int, error) {
	n := uint32(len(buf))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
	if e != 0 {
		return int(n), e
	}
	return int(n), nil
}
