package pidfd

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// PIDFD_GET_INFO and struct pidfd_info, from include/uapi/linux/pidfd.h
// (Linux 6.13+; PIDFD_INFO_EXIT 6.15+). The ioctl is extensible: its
// size field says which version of the struct the caller passes, here
// PIDFD_INFO_SIZE_VER0.
const (
	infoExit     = 1 << 3 // PIDFD_INFO_EXIT
	infoSizeVer0 = 64     // PIDFD_INFO_SIZE_VER0
	// getInfo is _IOWR(PIDFS_IOCTL_MAGIC 0xFF, 11, struct pidfd_info VER0).
	getInfo = 3<<30 | infoSizeVer0<<16 | 0xFF<<8 | 11
)

type info struct {
	Mask     uint64
	Cgroupid uint64
	Pid      uint32
	Tgid     uint32
	Ppid     uint32
	Ruid     uint32
	Rgid     uint32
	Euid     uint32
	Egid     uint32
	Suid     uint32
	Sgid     uint32
	Fsuid    uint32
	Fsgid    uint32
	ExitCode int32
}

// ExitStatus is the wait status of the process pidfd fd refers to, once
// it has exited (also after it was reaped); ok is false while it runs or
// when the kernel keeps no exit information for it.
func ExitStatus(fd int) (status int32, ok bool, err error) {
	var in info
	in.Mask = infoExit
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), getInfo, uintptr(unsafe.Pointer(&in))); e != 0 {
		if e == unix.ESRCH { // running, or reaped without information
			return 0, false, nil
		}
		return 0, false, fmt.Errorf("PIDFD_GET_INFO: %w", e)
	}
	if in.Mask&infoExit == 0 {
		return 0, false, nil
	}
	return in.ExitCode, true, nil
}
