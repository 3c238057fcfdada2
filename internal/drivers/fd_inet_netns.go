package drivers

import (
	"errors"
	"fmt"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"

	"godwit/internal/sockdiag"
)

// Inet sockets of another network namespace than godwit's (a tree in a
// namespace of its own, dumped from outside it): what depends on the
// namespace is read in the socket's own: sock_diag's tables, the
// sysctls options are compared with (ip_default_ttl, tcp_notsent_lowat),
// the fresh sockets that give the defaults, and /proc/net's tables. Each
// runs on a thread that joined the namespace (inNetns) and ends with it.
// One such namespace per dump (every task of a tree shares one); a
// socket of a third is refused.

// inetNetns is the namespace of an inetDump other than godwit's.
type inetNetns struct {
	fd  int // the namespace, from SIOCGSKNS
	ino uint64
}

// inetStateOf is the dump's view of the namespace of socket s.
func (fl *Files) inetStateOf(s int) (*inetDump, error) {
	d := fl.inetState()
	nsfd, err := unix.IoctlRetInt(s, unix.SIOCGSKNS)
	if err != nil {
		return nil, fmt.Errorf("SIOCGSKNS: %w", err)
	}
	var a, b unix.Stat_t
	if err := unix.Fstat(nsfd, &a); err != nil {
		unix.Close(nsfd)
		return nil, fmt.Errorf("stat its network namespace: %w", err)
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
	onThreadToDrop(func() {
		if err := unix.Setns(d.netns.fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("join network namespace %d: %w", d.netns.ino, err)
			return
		}
		errc <- f()
	})
	return <-errc
}

// onThreadToDrop runs f on a goroutine locked to a thread that ends with
// it, so that whatever f changes of its thread (its namespaces) dies with
// it. Never the main thread: Go keeps that one (wedged) when its locked
// goroutine exits, and it is the thread /proc/self/ns and /proc/self/net
// show. Holding the main thread locked meanwhile keeps f off it.
func onThreadToDrop(f func()) {
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			onThreadToDrop(f)
			runtime.UnlockOSThread() // untouched
			close(done)
			return
		}
		defer close(done)
		f() // never unlocked
	}()
	<-done
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
