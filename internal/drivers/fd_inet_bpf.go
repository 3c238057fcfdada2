package drivers

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/bpfiter"
	"godwit/internal/logging"
	"godwit/internal/model"
)

// BPF programs attached to sockets.
//
// A classic BPF socket filter (SO_ATTACH_FILTER) is read back with
// SO_GET_FILTER, carried in the image (sk_opts so_filter) and attached
// again at restore. An eBPF filter (SO_ATTACH_BPF) cannot be read back
// (SO_GET_FILTER answers EACCES: the kernel keeps no original program
// for it): refused by name.
//
// A SO_REUSEPORT group's steering program (SO_ATTACH_REUSEPORT_CBPF or
// _EBPF) shows in no socket option and in no sock_diag message:
// internal/bpfiter finds it with a BPF iterator, and a socket whose group
// has one is refused by name, since the program cannot be read back
// either. When the iterator cannot run (a kernel without BTF or BPF, or
// older than 5.11), the dump goes on as before and the log says, for each
// SO_REUSEPORT socket, that it could not be checked: refusing every
// SO_REUSEPORT socket there would refuse every pre-forked server that
// spreads its connections with it (nginx reuseport, Envoy, HAProxy) for
// a rarely used program, on kernels where no check is possible at all.

// reuseportSteering is bpfiter.ReuseportSteering; tests replace it to
// take the path where the check cannot run.
var reuseportSteering = bpfiter.ReuseportSteering

// steerState is what a dump learnt of its tasks' reuseport groups.
type steerState struct {
	mu    sync.Mutex
	byPid map[int]steerOf
}

type steerOf struct {
	progs map[uint64]bpfiter.Steering // by socket inode
	err   error
}

// of returns what the iterator found in pid's sockets, running it once
// per task.
func (ss *steerState) of(pid int) steerOf {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if r, ok := ss.byPid[pid]; ok {
		return r
	}
	var r steerOf
	r.progs, r.err = reuseportSteering(pid)
	if ss.byPid == nil {
		ss.byPid = map[int]steerOf{}
	}
	ss.byPid[pid] = r
	return r
}

// refuseSteering refuses st (task pid's socket) when its reuseport group
// has a steering program. A socket whose SO_REUSEPORT is off is not
// looked at: the kernel consults the group's program only for a lookup
// that found a socket with the option on.
func (ss *steerState) refuseSteering(pid int, st *model.InetSocketState, what string) error {
	if !st.Inet.ReusePort {
		return nil
	}
	r := ss.of(pid)
	if r.err != nil {
		if errors.Is(r.err, bpfiter.ErrUnavailable) {
			logging.Warnf("%s: SO_REUSEPORT: cannot check its group for a reuseport steering program (%v); one attached would be lost at restore", what, r.err)
			return nil
		}
		return fmt.Errorf("%s: check for a reuseport steering program: %w", what, r.err)
	}
	if s, ok := r.progs[uint64(st.Ino)]; ok {
		return fmt.Errorf("%s: its SO_REUSEPORT group has a reuseport steering program, %v: not supported (the kernel cannot give it back)", what, s)
	}
	return nil
}

// readSockFilter reads s's classic BPF socket filter, nil when none.
func readSockFilter(s int) ([]unix.SockFilter, error) {
	// With no buffer, SO_GET_FILTER answers with the filter's length
	// in instructions; with one, it takes the length in instructions.
	var n uint32
	if err := getFilterRaw(s, nil, &n); err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, nil
	}
	f := make([]unix.SockFilter, n)
	got := n
	if err := getFilterRaw(s, unsafe.Pointer(&f[0]), &got); err != nil {
		return nil, err
	}
	if got != n {
		return nil, fmt.Errorf("SO_GET_FILTER: the filter changed from %d to %d instructions while read", n, got)
	}
	return f, nil
}

// getFilterRaw is getsockopt(SO_GET_FILTER) into p (n instructions).
func getFilterRaw(s int, p unsafe.Pointer, n *uint32) error {
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(s), unix.SOL_SOCKET, unix.SO_GET_FILTER, uintptr(p), uintptr(unsafe.Pointer(n)), 0)
	switch {
	case e == unix.EACCES:
		return errors.New("an eBPF socket filter (SO_ATTACH_BPF) is attached: not supported (the kernel cannot give it back)")
	case e != 0:
		return fmt.Errorf("getsockopt SO_GET_FILTER: %w", e)
	}
	return nil
}

// attachSockFilter attaches f to s (nothing when f is empty).
func attachSockFilter(s int, f []unix.SockFilter) error {
	if len(f) == 0 {
		return nil
	}
	if len(f) > 0xffff {
		return fmt.Errorf("a socket filter of %d instructions", len(f))
	}
	if err := unix.SetsockoptSockFprog(s, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER,
		&unix.SockFprog{Len: uint16(len(f)), Filter: &f[0]}); err != nil {
		return fmt.Errorf("setsockopt SO_ATTACH_FILTER (%d instructions): %w", len(f), err)
	}
	return nil
}
