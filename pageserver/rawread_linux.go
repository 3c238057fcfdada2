package pageserver

import (
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// rawReadConn reads a lazy session's requests on plain TCP with poll(2)
// and read(2) on the session's own thread rather than through Go's
// netpoller: a lazy-pages fault's GET wakes the thread that answers it
// directly, where the netpoller would wake a poller thread first and
// hand the session's goroutine over to a second one. Writes, and their
// deadlines, stay the TCP connection's. Close does not wake a blocked
// Read (the read holds the descriptor): shut the connection down first
// (shutdownCloser).
type rawReadConn struct {
	*net.TCPConn
	rc       syscall.RawConn
	deadline time.Time
}

func newRawReadConn(c *net.TCPConn) (*rawReadConn, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	return &rawReadConn{TCPConn: c, rc: rc}, nil
}

// SetReadDeadline bounds the next Reads (the session sets it before
// each).
func (r *rawReadConn) SetReadDeadline(t time.Time) error {
	r.deadline = t
	return nil
}

func (r *rawReadConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	var n int
	var rerr error
	cerr := r.rc.Control(func(fd uintptr) {
		sfd := int(fd)
		for {
			k, err := unix.Read(sfd, b)
			switch {
			case err == nil && k == 0:
				rerr = io.EOF
				return
			case err == nil:
				n = k
				return
			case err == unix.EINTR:
				continue
			case err != unix.EAGAIN:
				rerr = &net.OpError{Op: "read", Net: "tcp", Addr: r.RemoteAddr(), Err: os.NewSyscallError("read", err)}
				return
			}
			timeout := -1
			if !r.deadline.IsZero() {
				left := time.Until(r.deadline)
				if left <= 0 {
					rerr = os.ErrDeadlineExceeded
					return
				}
				timeout = int((left + time.Millisecond - 1) / time.Millisecond)
			}
			pfds := []unix.PollFd{{Fd: int32(sfd), Events: unix.POLLIN}}
			if _, err := unix.Poll(pfds, timeout); err != nil && err != unix.EINTR {
				rerr = os.NewSyscallError("poll", err)
				return
			}
		}
	})
	if cerr != nil {
		return 0, cerr
	}
	return n, rerr
}

// shutdownCloser closes a TCP connection after shutting it down both
// ways: a rawReadConn's Read blocked on it returns (EOF), where Close
// alone would wait for that Read to end (it holds the descriptor) and,
// once begun, would keep a later shutdown from reaching the socket.
type shutdownCloser struct{ net.Conn }

func (c shutdownCloser) Close() error {
	if tc, ok := c.Conn.(*net.TCPConn); ok {
		if rc, err := tc.SyscallConn(); err == nil {
			rc.Control(func(fd uintptr) { unix.Shutdown(int(fd), unix.SHUT_RDWR) })
		}
	}
	return c.Conn.Close()
}
