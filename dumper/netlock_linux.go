package dumper

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"

	"godwit/internal/actions"
	"godwit/internal/images"
	"godwit/internal/logging"
	"godwit/internal/netlock"
	"godwit/internal/netnsid"
	"godwit/internal/sockdiag"
)

// The network lock of a dump (internal/netlock; docs/network-lock.md).
// It is made once the tree is frozen: for a tree in godwit's network
// namespace the socket drivers add each TCP connection to it (Files.NetLock)
// before the connection goes into repair mode; a tree in a network
// namespace of its own has that whole namespace locked at once, between
// the network-lock action scripts and the end of the dump, as CRIU does
// for a namespace it dumps. A failed dump removes the lock (rollback), as
// does a dump that leaves the tree running or stopped; a dump that kills
// the tree keeps it and records it in the images (netlock.RecordFile) for
// the restore to remove once the connections are back.

// ownNetns reports whether task pid is in another network namespace
// than godwit.
func ownNetns(pid int) (bool, error) {
	self, err := netnsid.Self()
	if err != nil {
		return false, err
	}
	task, err := netnsid.OfTask(pid)
	if err != nil {
		return false, fmt.Errorf("task %d: %w", pid, err)
	}
	return self != task, nil
}

// lockNetwork makes the lock of the frozen tree rooted at pid.
func lockNetwork(ctx context.Context, method netlock.Method, pid int, scripts *actions.Scripts) (*netlock.Lock, error) {
	own, err := ownNetns(pid)
	if err != nil {
		return nil, err
	}
	ns := ""
	if own {
		ns = "/proc/" + strconv.Itoa(pid) + "/ns/net"
	}
	l, err := netlock.New(method, pid, ns)
	if err != nil {
		return nil, err
	}
	if !own {
		return l, nil // connections are added as the drivers find them
	}
	if err := scripts.Run(actions.NetworkLock, pid); err != nil {
		l.Unlock()
		return nil, err
	}
	if err := l.LockNetns(); err != nil {
		return nil, errors.Join(err, unlockNetwork(l, pid, scripts))
	}
	logging.FromContext(ctx).Infof("dump %d: network namespace locked (%s)", pid, l.Method())
	return l, nil
}

// unlockNetwork removes the lock; for a whole namespace the
// network-unlock scripts run first, as in CRIU.
func unlockNetwork(l *netlock.Lock, pid int, scripts *actions.Scripts) error {
	var serr error
	if l.Netns() {
		serr = scripts.Run(actions.NetworkUnlock, pid)
	}
	return errors.Join(serr, l.Unlock())
}

// writeNetLockRecord records a lock the restore must remove.
func writeNetLockRecord(d *images.Dir, r netlock.Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return writeFile(d, netlock.RecordFile, append(b, '\n'))
}

// lockTreeConns locks, in one batch, every TCP connection of the frozen
// tasks pids that sock_diag shows in godwit's namespace (the drivers then
// find theirs locked already: one firewall command for the whole tree
// instead of one per connection), and the connection requests to their
// listeners.
func lockTreeConns(l *netlock.Lock, pids []int) error {
	inos := map[uint32]bool{}
	link := make([]byte, 64)
	for _, pid := range pids {
		if err := socketInodes(pid, inos, link); err != nil {
			return fmt.Errorf("network lock: %w", err)
		}
	}
	if len(inos) == 0 {
		return nil
	}
	var conns []netlock.Conn
	var listeners []netip.AddrPort
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		for _, proto := range []uint32{unix.IPPROTO_TCP, unix.IPPROTO_MPTCP} {
			tab, err := sockdiag.DumpInet(fam, proto)
			if err != nil {
				if proto == unix.IPPROTO_MPTCP {
					continue // no MPTCP diag here: the drivers lock such sockets one by one
				}
				return fmt.Errorf("network lock: %w", err)
			}
			for ino, s := range tab {
				switch {
				case !inos[ino] || s.State == tcpClose:
				case s.State == tcpListen:
					listeners = append(listeners, s.Src)
				case s.Dst.IsValid() && s.Dst.Port() != 0:
					conns = append(conns, netlock.Conn{Local: s.Src, Remote: s.Dst})
				}
			}
		}
	}
	if err := l.Lock(conns); err != nil {
		return err
	}
	// A client connecting meanwhile waits for the restored listener
	// instead of being refused.
	return l.LockListeners(listeners)
}

// socketInodes adds the inodes of the sockets task pid holds to inos:
// each fd stat'ed on a copy of it (pidfd_getfd), or where that is
// refused its link read relative to /proc/PID/fd opened once, into link
// (a third slower: each lookup there makes or revalidates a dentry).
func socketInodes(pid int, inos map[uint32]bool, link []byte) error {
	dir, err := os.Open("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		return err
	}
	defer dir.Close()
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("%s: %w", dir.Name(), err)
	}
	if pfd, err := unix.PidfdOpen(pid, 0); err == nil {
		defer unix.Close(pfd)
		if socketInodesCopied(pfd, names, inos) {
			return nil
		}
	}
	socketInodesLinked(int(dir.Fd()), names, inos, link)
	return nil
}

// socketInodesLinked adds to inos the inodes of the sockets among fds
// names, read from their links in the open /proc/PID/fd dfd.
func socketInodesLinked(dfd int, names []string, inos map[uint32]bool, link []byte) {
	for _, name := range names {
		n, err := unix.Readlinkat(dfd, name, link)
		if err != nil {
			continue // closed meanwhile: not a connection of the tree
		}
		if rest, ok := bytes.CutPrefix(link[:n], []byte("socket:[")); ok {
			if v, ok := atou32(bytes.TrimSuffix(rest, []byte("]"))); ok {
				inos[v] = true
			}
		}
	}
}

// socketInodesCopied adds to inos the inodes of the sockets among fds
// names of the task of pidfd, read on copies; false if a copy was
// refused (other than for an fd closed meanwhile). Many fds are read on
// as many goroutines as Go runs threads: three calls each, none waiting
// for another, while the whole tree is frozen.
func socketInodesCopied(pidfd int, names []string, inos map[uint32]bool) bool {
	n := min(runtime.GOMAXPROCS(0), len(names)/256)
	if n < 2 {
		return socketInodesCopiedOn(pidfd, names, inos)
	}
	parts := make([]map[uint32]bool, n)
	oks := make([]bool, n)
	var wg sync.WaitGroup
	for w := range n {
		parts[w] = map[uint32]bool{}
		wg.Go(func() { oks[w] = socketInodesCopiedOn(pidfd, names[len(names)*w/n:len(names)*(w+1)/n], parts[w]) })
	}
	wg.Wait()
	for w := range n {
		if !oks[w] {
			return false
		}
		maps.Copy(inos, parts[w])
	}
	return true
}

// socketInodesCopiedOn is socketInodesCopied on the calling goroutine.
func socketInodesCopiedOn(pidfd int, names []string, inos map[uint32]bool) bool {
	var st unix.Stat_t
	for _, name := range names {
		n, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		s, err := unix.PidfdGetfd(pidfd, n, 0)
		if err == unix.EBADF {
			continue // closed meanwhile: not a connection of the tree
		}
		if err != nil {
			return false
		}
		err = unix.Fstat(s, &st)
		unix.Close(s)
		if err != nil {
			return false
		}
		if st.Mode&unix.S_IFMT == unix.S_IFSOCK {
			inos[uint32(st.Ino)] = true
		}
	}
	return true
}

// atou32 parses a decimal inode number.
func atou32(b []byte) (uint32, bool) {
	if len(b) == 0 || len(b) > 10 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
	}
	return uint32(v), v <= 1<<32-1
}

// The kernel's TCP states a connection is not (include/net/tcp_states.h).
const (
	tcpClose  = 7
	tcpListen = 10
)
