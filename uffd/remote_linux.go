package uffd

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// TakeFD copies file descriptor fd of process pid into this process with
// pidfd_getfd (needs ptrace access to pid). The copy is close-on-exec.
func TakeFD(pid, fd int) (int, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, fmt.Errorf("pidfd_open(%d): %w", pid, err)
	}
	defer unix.Close(pidfd)
	nfd, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		return -1, fmt.Errorf("pidfd_getfd(pid %d, fd %d): %w", pid, fd, err)
	}
	return nfd, nil
}

// OpenRemote takes a userfaultfd that process pid holds as fd (created there
// by syscall injection or by the process itself) and wraps it; the uffd acts
// on pid's mm. Negotiate it with API next unless it was already.
func OpenRemote(pid, fd int) (*Uffd, error) {
	nfd, err := TakeFD(pid, fd)
	if err != nil {
		return nil, err
	}
	u, err := FromFD(nfd)
	if err != nil {
		unix.Close(nfd)
		return nil, err
	}
	return u, nil
}

// SendFD passes fd over the unix socket sock with SCM_RIGHTS (one byte of
// payload, as a stream socket needs some).
func SendFD(sock, fd int) error {
	if err := unix.Sendmsg(sock, []byte{'F'}, unix.UnixRights(fd), nil, 0); err != nil {
		return fmt.Errorf("sendmsg SCM_RIGHTS fd %d on %d: %w", fd, sock, err)
	}
	return nil
}

// RecvFD receives one file descriptor sent with SCM_RIGHTS on sock. Extra
// descriptors in the same message are closed.
func RecvFD(sock int) (int, error) {
	buf := make([]byte, 1)
	oob := make([]byte, unix.CmsgSpace(4*8))
	for {
		_, oobn, _, _, err := unix.Recvmsg(sock, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return -1, fmt.Errorf("recvmsg on %d: %w", sock, err)
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return -1, fmt.Errorf("recvmsg on %d: control message: %w", sock, err)
		}
		fd := -1
		for _, m := range msgs {
			fds, err := unix.ParseUnixRights(&m)
			if err != nil {
				continue
			}
			for _, f := range fds {
				if fd < 0 {
					fd = f
				} else {
					unix.Close(f)
				}
			}
		}
		if fd < 0 {
			return -1, fmt.Errorf("recvmsg on %d: no file descriptor received", sock)
		}
		return fd, nil
	}
}
