package pageserver

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// spliceChunk is what one splice(2) call moves at most: a full pipe
// (pipe-max-size is 1 MiB here and can't be raised without
// CAP_SYS_RESOURCE).
const spliceChunk = 1 << 20

// splicePipe moves n bytes from the pipe src to the TCP socket dst with
// splice(2): pages vmspliced into the pipe by the dumper reach the socket
// without a copy through user space, as CRIU's write_pages_to_server.
func splicePipe(dst *net.TCPConn, src *os.File, n int64) (int64, error) {
	sc, err := dst.SyscallConn()
	if err != nil {
		return 0, err
	}
	pfd := int(src.Fd()) // puts src in blocking mode: splice waits for data
	var done int64
	var serr error
	cerr := sc.Control(func(fd uintptr) {
		sfd := int(fd)
		for done < n {
			k, err := unix.Splice(pfd, nil, sfd, nil, int(min(n-done, spliceChunk)), unix.SPLICE_F_MOVE|unix.SPLICE_F_MORE)
			if k > 0 {
				done += k
				continue
			}
			switch {
			case err == nil:
				serr = errors.New("pipe closed")
				return
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN:
				// The socket is non-blocking (Go's poller owns it): wait
				// until it takes more.
				pfds := []unix.PollFd{{Fd: int32(sfd), Events: unix.POLLOUT}}
				if _, err := unix.Poll(pfds, -1); err != nil && err != unix.EINTR {
					serr = fmt.Errorf("poll: %w", err)
					return
				}
			default:
				serr = fmt.Errorf("splice: %w", err)
				return
			}
		}
	})
	if cerr != nil {
		return done, cerr
	}
	return done, serr
}

// sendFileAt sends hdr, then n bytes of f from off, on the TCP socket dst:
// the header with MSG_MORE so that it leaves with the data, the data with
// sendfile(2) from the page cache, so that GET replies cost the server no
// copy through user space. Waits for room at most timeout each time.
func sendFileAt(dst *net.TCPConn, hdr []byte, f *os.File, off, n int64, timeout time.Duration) (int64, error) {
	sc, err := dst.SyscallConn()
	if err != nil {
		return 0, err
	}
	fc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var done int64
	var serr error
	wait := func(sfd int) bool {
		// The socket is non-blocking (Go's poller owns it).
		pfds := []unix.PollFd{{Fd: int32(sfd), Events: unix.POLLOUT}}
		k, err := unix.Poll(pfds, int(timeout.Milliseconds()))
		switch {
		case err == unix.EINTR:
			return true
		case err != nil:
			serr = fmt.Errorf("poll: %w", err)
		case k == 0:
			serr = fmt.Errorf("peer took no data for %v", timeout)
		}
		return serr == nil
	}
	cerr := sc.Control(func(fd uintptr) {
		sfd := int(fd)
		for len(hdr) > 0 {
			k, err := unix.SendmsgN(sfd, hdr, nil, nil, unix.MSG_MORE|unix.MSG_NOSIGNAL)
			switch {
			case err == nil:
				hdr = hdr[k:]
			case err == unix.EINTR:
			case err == unix.EAGAIN:
				if !wait(sfd) {
					return
				}
			default:
				serr = fmt.Errorf("send: %w", err)
				return
			}
		}
		ferr := fc.Control(func(ffd uintptr) {
			for done < n {
				k, err := unix.Sendfile(sfd, int(ffd), &off, int(min(n-done, spliceChunk)))
				if k > 0 {
					done += int64(k)
					continue
				}
				switch {
				case err == nil:
					serr = fmt.Errorf("sendfile: file ends at %d", off)
					return
				case err == unix.EINTR:
				case err == unix.EAGAIN:
					if !wait(sfd) {
						return
					}
				default:
					serr = fmt.Errorf("sendfile: %w", err)
					return
				}
			}
		})
		if ferr != nil && serr == nil {
			serr = ferr
		}
	})
	if cerr != nil {
		return done, cerr
	}
	return done, serr
}

// recvFull fills b from the TCP socket src with recv(2), sleeping in
// poll(2) while no data is there rather than in Go's poller: the thread
// that waits is the one the kernel wakes, with no goroutine hand-off in
// between (a lazy-pages fault waits on this). With block (the socket is in
// blocking mode: Client.BlockingGets), one recv(2) with MSG_WAITALL
// sleeps in the kernel until b is full, and a recv that times out
// (SO_RCVTIMEO) having read nothing fails with ErrGetTimeout. Abort's
// shutdown wakes it either way.
func recvFull(src *net.TCPConn, b []byte, block bool) error {
	sc, err := src.SyscallConn()
	if err != nil {
		return err
	}
	flags := 0
	if block {
		flags = unix.MSG_WAITALL
	}
	var rerr error
	cerr := sc.Control(func(fd uintptr) {
		sfd := int(fd)
		for len(b) > 0 {
			k, err := recvNoAddr(sfd, b, flags)
			switch {
			case err == nil && k == 0:
				rerr = io.ErrUnexpectedEOF
				return
			case err == nil:
				b = b[k:]
			case err == unix.EINTR:
			case err == unix.EAGAIN && block:
				rerr = ErrGetTimeout
				return
			case err == unix.EAGAIN:
				if rerr = pollIn(sfd); rerr != nil {
					return
				}
			default:
				rerr = err
				return
			}
		}
	})
	if cerr != nil {
		return cerr
	}
	return rerr
}

// recvNoAddr is recv(2): recvfrom without the address x/sys would decode.
func recvNoAddr(fd int, b []byte, flags int) (int, error) {
	n, _, e := unix.Syscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(flags), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// pollIn waits until the socket fd has data.
func pollIn(fd int) error {
	pfds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	if _, err := unix.Poll(pfds, -1); err != nil && err != unix.EINTR {
		return fmt.Errorf("poll: %w", err)
	}
	return nil
}

// recvHead reads a reply's header into hb, and with it, in the same
// readv(2), as much of the data that follows as has come, into data. It
// returns how many bytes of data it read. The caller must know that
// nothing but this reply's data can follow the header on the stream
// (one request in flight), since data may take all of it. block is as for
// recvFull: the readv sleeps in the kernel, at most SO_RCVTIMEO.
func recvHead(src *net.TCPConn, hb, data []byte, block bool) (int, error) {
	sc, err := src.SyscallConn()
	if err != nil {
		return 0, err
	}
	got, extra := 0, 0
	var rerr error
	cerr := sc.Control(func(fd uintptr) {
		sfd := int(fd)
		iov := [2]unix.Iovec{}
		for got < len(hb) {
			iov[0].Base, iov[0].Len = &hb[got], uint64(len(hb)-got)
			iov[1].Base, iov[1].Len = &data[0], uint64(len(data))
			k, _, e := unix.Syscall(unix.SYS_READV, uintptr(sfd), uintptr(unsafe.Pointer(&iov[0])), 2)
			switch {
			case e == 0 && k == 0:
				rerr = io.ErrUnexpectedEOF
				return
			case e == 0:
				if h := len(hb) - got; int(k) > h {
					extra, got = int(k)-h, len(hb)
				} else {
					got += int(k)
				}
			case e == unix.EINTR:
			case e == unix.EAGAIN && block:
				rerr = ErrGetTimeout
				return
			case e == unix.EAGAIN:
				if rerr = pollIn(sfd); rerr != nil {
					return
				}
			default:
				rerr = e
				return
			}
		}
	})
	if cerr != nil {
		return 0, cerr
	}
	return extra, rerr
}
