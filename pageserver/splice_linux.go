package pageserver

import (
	"errors"
	"fmt"
	"net"
	"os"

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
