package drivers

import (
	"errors"
	"fmt"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"

	"godwit/internal/osthread"
	"godwit/internal/sockdiag"
)

// Inet sockets of another network namespace than godwit's (a tree in a
// namespace of its own, dumped from outside it): what depends on the
// namespace is read in the socket's own: sock_diag's tables, the
// sysctls options are compared with (ip_default_ttl, tcp_notsent_lowat),
// the fresh sockets that give the defaults, and /proc/net's tables. Each
// runs on a thread that joined the namespace (inNetns) and ends with it.
// One such namespace per dump: every socket must be in its task's
// namespace and that the tree's root's (inetStateOf).

// inetNetns is the namespace of an inetDump other than godwit's.
type inetNetns struct {
	fd  int // the namespace, from SIOCGSKNS
	ino uint64
}

// NetnsID names a network namespace: the device and inode of its
// /proc/PID/ns/net.
type NetnsID struct{ Dev, Ino uint64 }

// NetnsOf is the network namespace of task pid.
func NetnsOf(pid int) (NetnsID, error) {
	var st unix.Stat_t
	p := "/proc/" + strconv.Itoa(pid) + "/ns/net"
	if err := unix.Stat(p, &st); err != nil {
		return NetnsID{}, fmt.Errorf("network namespace of %d: %w", pid, err)
	}
	return NetnsID{st.Dev, st.Ino}, nil
}

// taskNetns is task pid's network namespace, read once per task.
func (d *inetDump) taskNetns(pid int) (NetnsID, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if ns, ok := d.tasks[pid]; ok {
		return ns, nil
	}
	ns, err := NetnsOf(pid)
	if err != nil {
		return NetnsID{}, err
	}
	if d.tasks == nil {
		d.tasks = map[int]NetnsID{}
	}
	d.tasks[pid] = ns
	return ns, nil
}

// inetViewByDiag is the dump's view of the namespace of the socket ino
// of task pid, and sock_diag's entry of it, when that table lists it:
// sock_diag answers for the namespace it is asked in only, so a socket
// listed in the table of its task's namespace is in that namespace (an
// inode names one socket), and inetStateOf's per-socket checks
// (SIOCGSKNS, two stats) are not needed. nil, nil when it cannot tell
// (a socket not listed, a namespace not yet seen): ask inetStateOf.
func (fl *Files) inetViewByDiag(pid int, family, proto, ino uint32) (*inetDump, *sockdiag.Inet, error) {
	d := fl.inetState()
	if fl.TreeNetns == (NetnsID{}) {
		return nil, nil, nil
	}
	task, err := d.taskNetns(pid)
	if err != nil || task != fl.TreeNetns {
		return nil, nil, nil // inetStateOf says why
	}
	self, err := d.selfNetns()
	if err != nil {
		return nil, nil, nil
	}
	view := d
	if task != self {
		d.mu.Lock()
		view = d.foreign
		d.mu.Unlock()
		if view == nil || view.netns.ino != task.Ino {
			return nil, nil, nil
		}
	}
	view.mu.Lock()
	tab, err := view.table(family, proto)
	view.mu.Unlock()
	if err != nil {
		return nil, nil, err
	}
	if dg := tab.ByIno[ino]; dg != nil && dg.Ino == ino {
		return view, dg, nil
	}
	return nil, nil, nil
}

// selfNetns is godwit's network namespace, read once per dump (every
// thread that joins another ends with it: osthread.Drop).
func (d *inetDump) selfNetns() (NetnsID, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.self != (NetnsID{}) {
		return d.self, nil
	}
	var b unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &b); err != nil {
		return NetnsID{}, err
	}
	d.self = NetnsID{b.Dev, b.Ino}
	return d.self, nil
}

// inetStateOf is the dump's view of the namespace of socket s, held by
// task pid. The socket must be in its task's namespace, and that the
// tree's (Files.TreeNetns): the network lock is made there, and the
// restore makes the socket in the one namespace it restores the tree
// in. A socket the task made in another namespace (after setns, or one
// passed to it) would be dumped unlocked and restored in the wrong
// namespace: refused.
func (fl *Files) inetStateOf(s, pid int) (*inetDump, error) {
	d := fl.inetState()
	if fl.TreeNetns == (NetnsID{}) {
		return nil, errors.New("internal error: the tree's network namespace is not known")
	}
	task, err := d.taskNetns(pid)
	if err != nil {
		return nil, err
	}
	nsfd, err := unix.IoctlRetInt(s, unix.SIOCGSKNS)
	if err != nil {
		return nil, fmt.Errorf("SIOCGSKNS: %w", err)
	}
	var a, b unix.Stat_t
	if err := unix.Fstat(nsfd, &a); err != nil {
		unix.Close(nsfd)
		return nil, fmt.Errorf("stat its network namespace: %w", err)
	}
	if a.Ino != task.Ino || a.Dev != task.Dev {
		unix.Close(nsfd)
		return nil, fmt.Errorf("socket in netns %d, its task %d in %d: not supported", a.Ino, pid, task.Ino)
	}
	if task != fl.TreeNetns {
		unix.Close(nsfd)
		return nil, fmt.Errorf("socket of task %d in netns %d, the tree's root in %d: not supported", pid, task.Ino, fl.TreeNetns.Ino)
	}
	if err := unix.Stat("/proc/thread-self/ns/net", &b); err != nil {
		unix.Close(nsfd)
		return nil, fmt.Errorf("stat godwit's network namespace: %w", err)
	}
	if a.Ino == b.Ino && a.Dev == b.Dev {
		unix.Close(nsfd)
		return d, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.foreign == nil {
		d.foreign = newInetDumpIn(&inetNetns{fd: nsfd, ino: a.Ino})
		return d.foreign, nil
	}
	unix.Close(nsfd)
	if d.foreign.netns.ino != a.Ino {
		// Not reached while every socket is in the tree's namespace.
		return nil, fmt.Errorf("in network namespace %d, while the dump's other sockets are in %d: not supported yet", a.Ino, d.foreign.netns.ino)
	}
	return d.foreign, nil
}

// newInetDumpIn is the view of namespace ns.
func newInetDumpIn(ns *inetNetns) *inetDump {
	d := &inetDump{diag: map[[2]uint32]*sockdiag.InetTable{}, netns: ns}
	d.defaultTTL = sync.OnceValue(func() uint32 {
		v := uint32(64)
		if err := d.inNetns(func() error { v = readDefaultTTL(); return nil }); err != nil {
			return 64
		}
		return v
	})
	d.notsentLowatSysctl = sync.OnceValues(func() (int, bool) {
		var v int
		var ok bool
		if err := d.inNetns(func() error { v, ok = readNotsentLowat(); return nil }); err != nil {
			return 0, false
		}
		return v, ok
	})
	return d
}

// inNetns runs f in d's namespace: here for godwit's, else on a thread
// that joins it and is never unlocked (so it ends with its goroutine,
// and no other goroutine runs in that namespace).
func (d *inetDump) inNetns(f func() error) error {
	if d.netns == nil {
		return f()
	}
	errc := make(chan error, 1)
	osthread.Drop(func() {
		if err := unix.Setns(d.netns.fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("join network namespace %d: %w", d.netns.ino, err)
			return
		}
		errc <- f()
	})
	return <-errc
}

// socketIn makes a socket in d's namespace.
func (d *inetDump) socketIn(family, typ, proto int) (int, error) {
	s := -1
	err := d.inNetns(func() error {
		var err error
		s, err = unix.Socket(family, typ, proto)
		return err
	})
	if errors.Is(err, unix.EACCES) && isPing(uint32(typ&^unix.SOCK_CLOEXEC), uint32(proto)) {
		err = fmt.Errorf("%w (net.ipv4.ping_group_range of the socket's network namespace excludes godwit's group %d)", err, unix.Getegid())
	}
	return s, err
}

// release ends the dump's hold on the namespace of a foreign view.
func (d *inetDump) release() {
	if d.netns != nil && d.netns.fd >= 0 {
		unix.Close(d.netns.fd)
		d.netns.fd = -1
	}
}
