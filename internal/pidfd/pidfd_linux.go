// Package pidfd holds a process by pidfd so that later steps acting on it
// by number (ptrace, /proc reads) can verify that the number still names
// the same process and was not recycled.
package pidfd

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
)

// Proc is a process held by a pidfd, with its start time (field 22 of
// /proc/PID/stat, in clock ticks since boot) read when it was opened.
type Proc struct {
	Pid   int
	fd    int
	start uint64
}

// Open takes a pidfd of pid and reads its start time. The start time is
// read after the pidfd exists: if the process exits before that read, the
// next Verify fails, so a start time read from a successor never passes.
func Open(pid int) (*Proc, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, fmt.Errorf("no process with pid %d", pid)
		}
		return nil, fmt.Errorf("pidfd_open(%d): %w", pid, err)
	}
	p := &Proc{Pid: pid, fd: fd}
	st, err := procfs.ReadStat(pid)
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("pid %d: %w", pid, err)
	}
	p.start = st.Starttime
	return p, nil
}

// FD is the pidfd, valid until Close.
func (p *Proc) FD() int { return p.fd }

// Close releases the pidfd.
func (p *Proc) Close() {
	if p.fd >= 0 {
		unix.Close(p.fd)
		p.fd = -1
	}
}

// alive fails once the process has exited: a pidfd polls readable when
// its process exits (zombie or reaped).
func (p *Proc) alive() error {
	fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll pidfd of %d: %w", p.Pid, err)
		}
		if n > 0 && fds[0].Revents&(unix.POLLIN|unix.POLLHUP) != 0 {
			return fmt.Errorf("process %d exited", p.Pid)
		}
		return nil
	}
}

// Verify checks that the process the pidfd holds is alive, so that its PID
// has not been recycled, and that /proc/PID still shows its start time.
// After a ptrace seize by number, a nil result means the seized task is
// the held process: a living process keeps its PID.
func (p *Proc) Verify() error {
	if err := p.alive(); err != nil {
		return fmt.Errorf("%w: pid %d may now name another process, refusing it", err, p.Pid)
	}
	st, err := procfs.ReadStat(p.Pid)
	if err != nil {
		return fmt.Errorf("pid %d: %w", p.Pid, err)
	}
	if st.Starttime != p.start {
		return fmt.Errorf("pid %d now names another process (start time %d, was %d), refusing it", p.Pid, st.Starttime, p.start)
	}
	return nil
}
