package pageserver

import (
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// rawReadConn reads a lazy session's requests on plain TCP with read(2)
// on the session's own thread rather than through Go's netpoller: a
// lazy-pages fault's GET wakes the thread that answers it directly, where
// the netpoller would wake a poller thread first and hand the session's
// goroutine over to a second one. The socket is put in blocking mode, so
// that a request costs one read(2) (a non-blocking one costs a failed
// read and a poll(2) more), with SO_RCVTIMEO at half the idle timeout: a
// read that times out goes on in poll(2) until the deadline, which stays
// exact. SO_SNDTIMEO bounds each blocking write (the TCP connection's own,
// and sendFileAt's) by the write timeout. Close does not wake a blocked
// Read (the read holds the descriptor): shut the connection down first
// (shutdownCloser).
type rawReadConn struct {
	*net.TCPConn
	rc       syscall.RawConn
	deadline time.Time
	// block: the socket is blocking, its reads bounded by tmo.
	block bool
	tmo   time.Duration
}

// newRawReadConn reads c outside the netpoller; idle is the longest a
// read may wait for a request, write the longest a write may wait for
// room.
func newRawReadConn(c *net.TCPConn, idle, write time.Duration) (*rawReadConn, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	r := &rawReadConn{TCPConn: c, rc: rc}
	if idle >= 2*time.Millisecond && write > 0 {
		r.tmo = idle / 2
		rt, wt := unix.NsecToTimeval(r.tmo.Nanoseconds()), unix.NsecToTimeval(write.Nanoseconds())
		var serr error
		cerr := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptTimeval(int(fd), unix.SOL_SOCKET, unix.SO_RCVTIMEO, &rt)
			if serr == nil {
				serr = unix.SetsockoptTimeval(int(fd), unix.SOL_SOCKET, unix.SO_SNDTIMEO, &wt)
			}
			if serr == nil {
				serr = unix.SetNonblock(int(fd), false)
			}
		})
		r.block = cerr == nil && serr == nil
	}
	return r, nil
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
		// Blocking, while the deadline is further than the socket's
		// own timeout (a read never outlasts the deadline).
		wait := r.block && (r.deadline.IsZero() || time.Until(r.deadline) >= r.tmo)
		for {
			flags := unix.MSG_DONTWAIT
			if wait {
				flags = 0
			}
			k, err := recvNoAddr(sfd, b, flags)
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
			// Nothing came within the socket's timeout (or at once):
			// wait for data in poll(2), up to the deadline.
			wait = false
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
