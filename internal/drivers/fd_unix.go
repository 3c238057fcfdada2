package drivers

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
	"godwit/internal/sockdiag"
)

// Unix sockets: stream, datagram and seqpacket; unbound, bound to a path
// or an abstract name, listening (with no connection waiting), connected
// pairs whose ends are both in the tree (socketpair), connections a
// listener of the tree accepted (connect and accept are made again), a
// datagram socket connected by name to another of the tree, with the
// bytes or messages queued in each direction and the shutdown state; a
// peer outside the tree with --ext-unix-sk or --external unix[INO]
// (makeExternal says how each is restored). The dump learns the socket
// from sock_diag and its options from a copy taken with pidfd_getfd, and
// peeks at the queue (SO_PEEK_OFF, MSG_PEEK): the task keeps every byte.
// The restore makes the socket in godwit, refills the queues by sending
// from the peer, and hands it over. The socket-level options CRIU's
// sk_opts holds are carried; any other option that differs from a new
// socket's is refused (unixOpts). The peer credentials (SO_PEERCRED) of
// a remade connection are godwit's, as for a remade socketpair: not
// carried yet (audit gap C).
//
// Refused, naming the socket: other families; connections waiting in a
// listener's backlog; a peer outside the tree without the options;
// queued file descriptors (SCM_RIGHTS); an out-of-band byte (MSG_OOB)
// queued; queued messages carrying
// credentials (SO_PASSCRED); a datagram socket not connected with
// messages queued (their senders are not known); socket filters; a set
// SO_PEEK_OFF; names relative to a directory.

func init() { registerFDKind(unixKind{}) }

type unixKind struct{}

func (unixKind) name() string             { return "socket" }
func (unixKind) fileKind() model.FileKind { return model.UnixSocket }
func (unixKind) match(target string, _ *unix.Stat_t) bool {
	return strings.HasPrefix(target, "socket:[")
}
func (unixKind) check(int, int, uint64) error { return nil }

// The kernel's socket states (include/net/tcp_states.h), which unix
// sockets use too.
const (
	tcpEstablished = 1
	tcpClose       = 7
	tcpListen      = 10
)

func (unixKind) collect(fl *Files, pid int, fd *FD, f *model.File) error {
	if done, err := fl.prefetched(fd, f); done {
		return err // an inet socket, collected ahead (fd_inet.go)
	}
	s, err := grabFD(pid, fd.Num)
	if err != nil {
		return err
	}
	defer unix.Close(s)
	dom, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return fmt.Errorf("SO_DOMAIN: %w", err)
	}
	switch dom {
	case unix.AF_NETLINK:
		return collectNetlink(pid, s, fd, f)
	case unix.AF_PACKET:
		return refusePacket(s)
	case unix.AF_INET, unix.AF_INET6:
		return collectInet(fl, pid, fd, f, s, dom)
	}
	if dom != unix.AF_UNIX {
		return fmt.Errorf("%s sockets are not supported yet", familyName(dom))
	}
	d, err := sockdiag.QueryUnix(uint32(fd.Stat.Ino))
	if err != nil {
		return err
	}
	if len(d.Name) > 0 && d.Name[0] != 0 {
		// A path's name ends at its NUL (the kernel counts it).
		if i := bytes.IndexByte(d.Name, 0); i >= 0 {
			d.Name = d.Name[:i]
		}
	}
	st := &model.UnixSocketState{
		Ino: d.Ino, Type: uint32(d.Type), State: uint32(d.State), Peer: d.Peer,
		Name: d.Name, Shutdown: uint32(d.Shutdown),
	}
	switch st.Type {
	case unix.SOCK_STREAM, unix.SOCK_DGRAM, unix.SOCK_SEQPACKET:
	default:
		return fmt.Errorf("unix socket of type %d", st.Type)
	}
	if len(d.Name) > 0 && d.Name[0] != 0 && d.Name[0] != '/' {
		return fmt.Errorf("bound to %q, relative to the directory it was bound in: not supported yet", d.Name)
	}
	if len(d.Name) > 0 && d.Name[0] == '/' {
		var fst unix.Stat_t
		if err := unix.Stat(string(d.Name), &fst); err == nil && d.HasVFS && uint32(fst.Ino) == d.VFSIno {
			st.FileMode = fst.Mode
		} else {
			return fmt.Errorf("bound to %s, which is gone or now another file: not supported yet", d.Name)
		}
	}
	switch {
	case st.State == tcpListen:
		if len(d.Icons) > 0 {
			return fmt.Errorf("listening, with %d connections waiting in its backlog: not supported yet", len(d.Icons))
		}
		st.Backlog = d.Wqueue
	case st.Peer != 0:
		pd, err := sockdiag.QueryUnix(st.Peer)
		if err != nil {
			return fmt.Errorf("its peer: %w", err)
		}
		if pd.Peer != st.Ino || len(d.Name) > 0 || len(pd.Name) > 0 {
			// Connected through a bound name: refused inside the tree,
			// allowed (by option) to a peer outside (checkUnixPeers).
			st.PeerName = pd.Name
			if st.PeerName == nil {
				st.PeerName = []byte{} // connected through our own name
			}
			if len(pd.Name) > 0 && pd.Name[0] != 0 {
				if i := bytes.IndexByte(pd.Name, 0); i >= 0 {
					st.PeerName = pd.Name[:i]
				}
			}
		}
	case st.State == tcpEstablished && st.Type == unix.SOCK_DGRAM:
		// A datagram socket others connected to: the kernel marks it
		// established too, though it has no peer; it is a bound
		// socket, and its clients make it so again.
		st.State = tcpClose
	case st.State == tcpEstablished:
		return fmt.Errorf("connected to a socket that is gone: not supported yet")
	}
	if st.Opts, err = socketOpts(s); err != nil {
		return err
	}
	if err := unixOpts(s, st); err != nil {
		return err
	}
	if st.State != tcpListen {
		if st.Type == unix.SOCK_STREAM {
			if err := refuseOOB(s); err != nil {
				return err
			}
		}
		if st.Queue, err = peekQueue(s, st); err != nil {
			return err
		}
	}
	if len(st.Queue) > 0 && st.Peer == 0 {
		return fmt.Errorf("%d messages queued on a socket that is not connected (their senders cannot be restored): not supported yet", len(st.Queue))
	}
	if len(st.Queue) > 0 && st.Opts.PassCred {
		return fmt.Errorf("%d messages queued with their senders' credentials (SO_PASSCRED): not supported yet", len(st.Queue))
	}
	f.Kind, f.Path = model.UnixSocket, ""
	f.Unix = st
	return nil
}

// ExtUnix is what the dump may hold of unix sockets whose peer is outside
// the tree: all (--ext-unix-sk), or those whose inode or peer's inode is
// in Inos (--external unix[INO]).
type ExtUnix struct {
	All  bool
	Inos []uint32
}

func (e ExtUnix) allows(u *model.UnixSocketState) bool {
	if e.All {
		return true
	}
	for _, i := range e.Inos {
		if i == u.Ino || i == u.Peer {
			return true
		}
	}
	return false
}

// checkUnixPeers refuses a socket connected through a bound name inside
// the tree (not supported yet), and one whose peer is outside the tree
// unless ext allows it; an allowed one is marked External. A socket
// with bytes from an outside peer queued is refused: only that peer could
// send them again.
func checkUnixPeers(t *model.Tree, ext ExtUnix) error {
	inTree := map[uint32]bool{}
	for _, f := range t.Files {
		if f.Unix != nil {
			inTree[f.Unix.Ino] = true
		}
	}
	for _, k := range t.Tasks {
		for _, e := range k.FDs {
			f := t.Files[e.File]
			if f == nil || f.Unix == nil || f.Unix.Peer == 0 {
				continue
			}
			u := f.Unix
			where := fmt.Sprintf("task %d fd %d: unix socket %d", k.Pid, e.Num, u.Ino)
			switch {
			case inTree[u.Peer] && u.PeerName != nil && u.Type == unix.SOCK_DGRAM:
				if len(u.Queue) > 0 {
					return fmt.Errorf("%s: connected by name to socket %d of the tree, with %d messages queued (their senders cannot be restored): not supported yet", where, u.Peer, len(u.Queue))
				}
				continue
			case inTree[u.Peer] && u.PeerName != nil:
				if err := acceptedPair(t, u); err != nil {
					return fmt.Errorf("%s: connected through a bound name (connect or accept) to socket %d of the tree: %w", where, u.Peer, err)
				}
				continue
			case inTree[u.Peer]:
				continue
			case !ext.allows(u):
				return fmt.Errorf("%s: its peer (socket %d%s) is outside the tree: dump with --ext-unix-sk or --external unix[%d]", where, u.Peer, peerName(u), u.Ino)
			case len(u.Queue) > 0 && u.PeerName != nil:
				return fmt.Errorf("%s: %d messages queued from its peer outside the tree (socket %d%s): only that peer could send them again: not supported", where, len(u.Queue), u.Peer, peerName(u))
			}
			u.External = true
		}
	}
	return nil
}

// treeUnix finds the tree's unix socket of inode ino.
func treeUnix(t *model.Tree, ino uint32) *model.File {
	for _, f := range t.Files {
		if f.Unix != nil && f.Unix.Ino == ino && !f.Unix.External {
			return f
		}
	}
	return nil
}

// acceptedPair finds, for u connected through a name to a socket of the
// tree, the two ends as connect and accept made them and the listener
// that accepted: a stream or seqpacket client (unbound, or bound to a
// name of its own), its server end bound to the listener's name, and a
// listener of the tree on that name with the same type. The restore
// connects to that listener again and accepts. Anything else (a datagram
// socket connected to another by name) is refused.
func acceptedPair(t *model.Tree, u *model.UnixSocketState) error {
	_, _, _, err := acceptedEnds(t, u)
	return err
}

func acceptedEnds(t *model.Tree, u *model.UnixSocketState) (client, server, listener *model.File, err error) {
	pf := treeUnix(t, u.Peer)
	me := treeUnix(t, u.Ino)
	if pf == nil || me == nil {
		return nil, nil, nil, fmt.Errorf("its peer is not in the dump")
	}
	if u.Type != unix.SOCK_STREAM && u.Type != unix.SOCK_SEQPACKET {
		return nil, nil, nil, fmt.Errorf("a datagram socket connected by name: not supported yet")
	}
	// The accepted end has the listener's name.
	listenerOn := func(name []byte) *model.File {
		var found *model.File
		for _, f := range t.Files {
			if len(name) > 0 && f.Unix != nil && f.Unix.State == tcpListen && f.Unix.Type == u.Type && bytes.Equal(f.Unix.Name, name) {
				if found != nil {
					return nil // two listeners on one name: ambiguous
				}
				found = f
			}
		}
		return found
	}
	if listener = listenerOn(me.Unix.Name); listener != nil {
		client, server = pf, me
	} else if listener = listenerOn(pf.Unix.Name); listener != nil {
		client, server = me, pf
	} else {
		return nil, nil, nil, fmt.Errorf("no listener of the tree on the name of either end (the one that accepted it is closed, or outside): not supported yet")
	}
	if pf.Unix.Peer != u.Ino || server.Unix.Type != client.Unix.Type {
		return nil, nil, nil, fmt.Errorf("not a connection a listener accepted: not supported yet")
	}
	name := server.Unix.Name
	if len(client.Unix.Name) > 0 && bytes.Equal(client.Unix.Name, name) {
		return nil, nil, nil, fmt.Errorf("both ends bound to %q: not supported", name)
	}
	return client, server, listener, nil
}

// makeAccepted makes a connection the tree's listener accepted: a client
// socket (bound to its own name if it was) connects to the listener's
// name and godwit accepts it on its copy of the listener, which is made
// first where it has not been (kept for its own fd, or its task). Each
// end's queue is refilled from the other; shutdowns mirrored.
func makeAccepted(rs *restoreFDs, what string, f *model.File) (int, error) {
	client, server, lf, err := acceptedEnds(rs.r.Tree, f.Unix)
	if err != nil {
		return -1, fmt.Errorf("%s: %w", what, err)
	}
	l, err := listenerFD(rs, what, lf)
	if err != nil {
		return -1, err
	}
	typ := int(client.Unix.Type) | unix.SOCK_CLOEXEC
	c, err := unix.Socket(unix.AF_UNIX, typ, 0)
	if err != nil {
		return -1, fmt.Errorf("%s: socket: %w", what, err)
	}
	keep := func(file *model.File, fd int) {
		if rs.unixSocket(file.Unix.Ino) != nil || rs.r.Held == nil {
			rs.socks[file.Unix.Ino] = fd
		} else {
			rs.r.Held.socks[file.Unix.Ino] = fd
		}
	}
	keep(client, c)
	if len(client.Unix.Name) > 0 {
		if err := bindUnix(c, client.Unix); err != nil {
			return -1, fmt.Errorf("%s: %w", what, err)
		}
	}
	name := string(server.Unix.Name)
	if name[0] == 0 {
		name = "@" + name[1:]
	}
	if err := unix.Connect(c, &unix.SockaddrUnix{Name: name}); err != nil {
		return -1, fmt.Errorf("%s: connect to %s: %w", what, name, err)
	}
	s, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("%s: accept on %s: %w", what, name, err)
	}
	keep(server, s)
	for _, e := range []struct {
		from int
		to   *model.File
	}{{s, client}, {c, server}} {
		if err := refill(e.from, e.to.Unix.Queue); err != nil {
			return -1, fmt.Errorf("%s: %w", what, err)
		}
	}
	for _, e := range []struct {
		fd   int
		file *model.File
	}{{c, client}, {s, server}} {
		for _, h := range []struct {
			bit uint32
			how int
		}{{2, unix.SHUT_WR}, {1, unix.SHUT_RD}} {
			if e.file.Unix.Shutdown&h.bit != 0 {
				if err := unix.Shutdown(e.fd, h.how); err != nil {
					return -1, fmt.Errorf("%s: shutdown: %w", what, err)
				}
			}
		}
	}
	if f == client {
		return c, nil
	}
	return s, nil
}

// makeDgramClient makes a datagram socket connected by name to another
// socket of the tree: that socket is made first where it has not been,
// then this one (bound to its own name if it was) connects to its name.
func makeDgramClient(rs *restoreFDs, what string, f *model.File) (int, error) {
	st := f.Unix
	sf := treeUnix(rs.r.Tree, st.Peer)
	if sf == nil || len(st.PeerName) == 0 || !bytes.Equal(sf.Unix.Name, st.PeerName) {
		return -1, fmt.Errorf("%s: the socket it is connected to (%d) is not in the dump under its name", what, st.Peer)
	}
	if _, err := listenerFD(rs, what, sf); err != nil {
		return -1, err
	}
	s, err := unix.Socket(unix.AF_UNIX, int(st.Type)|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("%s: socket: %w", what, err)
	}
	rs.socks[st.Ino] = s
	if len(st.Name) > 0 {
		if err := bindUnix(s, st); err != nil {
			return -1, fmt.Errorf("%s: %w", what, err)
		}
	}
	name := string(st.PeerName)
	if name[0] == 0 {
		name = "@" + name[1:]
	}
	if err := unix.Connect(s, &unix.SockaddrUnix{Name: name}); err != nil {
		return -1, fmt.Errorf("%s: connect to %s: %w", what, name, err)
	}
	for _, h := range []struct {
		bit uint32
		how int
	}{{2, unix.SHUT_WR}, {1, unix.SHUT_RD}} {
		if st.Shutdown&h.bit != 0 {
			if err := unix.Shutdown(s, h.how); err != nil {
				return -1, fmt.Errorf("%s: shutdown: %w", what, err)
			}
		}
	}
	return s, nil
}

// listenerFD is godwit's descriptor of the tree's listener lf: made
// before in this task or for another one, held by a task restored
// before, or made now (and kept for its own fd, or its task).
func listenerFD(rs *restoreFDs, what string, lf *model.File) (int, error) {
	ino := lf.Unix.Ino
	if l, ok := rs.socks[ino]; ok {
		return l, nil
	}
	if h := rs.r.Held; h != nil {
		if l, ok := h.socks[ino]; ok {
			return l, nil
		}
	}
	for id, at := range rs.r.Opened {
		if f := rs.r.Tree.Files[id]; f != nil && f.Unix != nil && f.Unix.Ino == ino && at.Pid != rs.r.Task.Pid {
			l, err := grabFD(at.Pid, at.FD)
			if err != nil {
				return -1, fmt.Errorf("%s: the listener held by %d fd %d: %w", what, at.Pid, at.FD, err)
			}
			rs.ghosts[[2]uint64{listenerKey, uint64(ino)}] = l // closed with the task's copies
			return l, nil
		}
	}
	l, err := makeUnix(rs, what+": its listener", lf)
	if err != nil {
		return -1, err
	}
	if rs.unixSocket(ino) == nil && rs.r.Held != nil {
		delete(rs.socks, ino)
		rs.r.Held.socks[ino] = l
	}
	return l, nil
}

// listenerKey keys, in restoreFDs.ghosts, godwit's copy of a listener
// taken from another task.
const listenerKey = ^uint64(0) - 4

func peerName(u *model.UnixSocketState) string {
	switch {
	case len(u.PeerName) == 0:
		return ""
	case u.PeerName[0] == 0:
		return fmt.Sprintf(", bound to @%s", u.PeerName[1:])
	}
	return fmt.Sprintf(", bound to %s", u.PeerName)
}

// grabFD takes a copy of fd n of pid (one open file description with it).
func grabFD(pid, n int) (int, error) {
	pfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, fmt.Errorf("pidfd_open: %w", err)
	}
	defer unix.Close(pfd)
	fd, err := unix.PidfdGetfd(pfd, n, 0)
	if err != nil {
		return -1, fmt.Errorf("pidfd_getfd: %w", err)
	}
	return fd, nil
}

func familyName(dom int) string {
	switch dom {
	case unix.AF_INET:
		return "AF_INET"
	case unix.AF_INET6:
		return "AF_INET6"
	case unix.AF_NETLINK:
		return "AF_NETLINK"
	case unix.AF_PACKET:
		return "AF_PACKET"
	}
	return fmt.Sprintf("family %d", dom)
}

// socketOpts reads the options restored, and refuses what is not.
func socketOpts(s int) (model.SocketOpts, error) {
	var o model.SocketOpts
	var err error
	geti := func(opt int, what string) uint32 {
		if err != nil {
			return 0
		}
		var v int
		if v, err = unix.GetsockoptInt(s, unix.SOL_SOCKET, opt); err != nil {
			err = fmt.Errorf("getsockopt %s: %w", what, err)
		}
		return uint32(v)
	}
	o.SndBuf = geti(unix.SO_SNDBUF, "SO_SNDBUF")
	o.RcvBuf = geti(unix.SO_RCVBUF, "SO_RCVBUF")
	o.PassCred = geti(unix.SO_PASSCRED, "SO_PASSCRED") != 0
	o.PassSec = geti(unix.SO_PASSSEC, "SO_PASSSEC") != 0
	o.Priority = geti(unix.SO_PRIORITY, "SO_PRIORITY")
	o.RcvLowat = geti(unix.SO_RCVLOWAT, "SO_RCVLOWAT")
	o.Mark = geti(unix.SO_MARK, "SO_MARK")
	peekOff := int32(geti(unix.SO_PEEK_OFF, "SO_PEEK_OFF"))
	if err != nil {
		return o, err
	}
	if peekOff != -1 {
		return o, fmt.Errorf("SO_PEEK_OFF is set (%d): not supported yet", peekOff)
	}
	return o, socketTimeoutsFilter(s, &o)
}

// socketTimeoutsFilter reads the send and receive timeouts into o and
// refuses an attached socket filter (inet sockets carry theirs:
// fd_inet_bpf.go).
func socketTimeoutsFilter(s int, o *model.SocketOpts) error {
	if err := socketTimeouts(s, o); err != nil {
		return err
	}
	f, err := readSockFilter(s)
	if err != nil {
		return err
	}
	if len(f) != 0 {
		return fmt.Errorf("a socket filter of %d instructions is attached: not supported yet on this kind of socket", len(f))
	}
	return nil
}

// socketTimeouts reads the send and receive timeouts into o.
func socketTimeouts(s int, o *model.SocketOpts) error {
	for _, t := range []struct {
		opt      int
		sec, use *uint64
	}{{unix.SO_SNDTIMEO, &o.SndTimeoSec, &o.SndTimeoUsec}, {unix.SO_RCVTIMEO, &o.RcvTimeoSec, &o.RcvTimeoUsec}} {
		tv, err := unix.GetsockoptTimeval(s, unix.SOL_SOCKET, t.opt)
		if err != nil {
			return fmt.Errorf("getsockopt timeout: %w", err)
		}
		*t.sec, *t.use = uint64(tv.Sec), uint64(tv.Usec)
	}
	return nil
}

// unixUncarried: the socket-level options of a unix socket that neither
// CRIU's sk_opts_entry nor godwit's model carries; a socket whose value
// differs from a new socket's of its type is refused (SO_PASSRIGHTS is on
// in a new one, the others off).
var unixUncarried = append([]sockOpt{
	{unix.SOL_SOCKET, unix.SO_TIMESTAMP, 0, "SO_TIMESTAMP"},
	{unix.SOL_SOCKET, unix.SO_PASSPIDFD, 0, "SO_PASSPIDFD"},
	{unix.SOL_SOCKET, unix.SO_PASSRIGHTS, 0, "SO_PASSRIGHTS"},
}, sockUncarried...)

// unixOpts reads into st the options carried beyond socketOpts
// (SO_REUSEADDR, SO_REUSEPORT, SO_BROADCAST, SO_KEEPALIVE, SO_OOBINLINE,
// SO_LINGER) and refuses any of
// unixUncarried that differs from a new socket's.
func unixOpts(s int, st *model.UnixSocketState) error {
	for _, b := range []struct {
		opt  int
		v    *bool
		name string
	}{
		{unix.SO_REUSEADDR, &st.ReuseAddr, "SO_REUSEADDR"}, {unix.SO_REUSEPORT, &st.ReusePort, "SO_REUSEPORT"},
		{unix.SO_BROADCAST, &st.Broadcast, "SO_BROADCAST"}, {unix.SO_KEEPALIVE, &st.KeepAlive, "SO_KEEPALIVE"},
		{unix.SO_OOBINLINE, &st.OOBInline, "SO_OOBINLINE"},
	} {
		v, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, b.opt)
		if err != nil {
			return fmt.Errorf("getsockopt %s: %w", b.name, err)
		}
		*b.v = v != 0
	}
	l, err := unix.GetsockoptLinger(s, unix.SOL_SOCKET, unix.SO_LINGER)
	if err != nil {
		return fmt.Errorf("getsockopt SO_LINGER: %w", err)
	}
	if l.Onoff == 0 && l.Linger != 0 {
		// The image has a linger time only when lingering is on.
		return fmt.Errorf("SO_LINGER is off with a time of %d s kept: not supported yet", l.Linger)
	}
	st.LingerOn, st.Linger = l.Onoff != 0, uint32(l.Linger)
	fresh, err := unix.Socket(unix.AF_UNIX, int(st.Type)|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("a new unix socket to compare options with: %w", err)
	}
	defer unix.Close(fresh)
	for _, o := range unixUncarried {
		want, ferr := getsockoptInt(fresh, o.level, o.opt)
		v, err := getsockoptInt(s, o.level, o.opt)
		switch {
		case ferr != nil && err != nil:
			continue // this kernel has not the option
		case err != nil:
			return fmt.Errorf("getsockopt %s: %w", o.name, err)
		case ferr != nil:
			return fmt.Errorf("getsockopt %s on a new socket: %w", o.name, ferr)
		case v != want:
			return fmt.Errorf("%s is %d (a new socket's: %d): not supported yet", o.name, v, want)
		}
	}
	return nil
}

// setUnixOpts gives s the options unixOpts read.
func setUnixOpts(s int, st *model.UnixSocketState) error {
	b := func(v bool) int {
		if v {
			return 1
		}
		return 0
	}
	if err := setInts(s, []sockOpt{
		{unix.SOL_SOCKET, unix.SO_REUSEADDR, b(st.ReuseAddr), "SO_REUSEADDR"},
		{unix.SOL_SOCKET, unix.SO_REUSEPORT, b(st.ReusePort), "SO_REUSEPORT"},
		{unix.SOL_SOCKET, unix.SO_BROADCAST, b(st.Broadcast), "SO_BROADCAST"},
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, b(st.KeepAlive), "SO_KEEPALIVE"},
		{unix.SOL_SOCKET, unix.SO_OOBINLINE, b(st.OOBInline), "SO_OOBINLINE"},
	}); err != nil {
		return err
	}
	if st.LingerOn {
		if err := unix.SetsockoptLinger(s, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: int32(st.Linger)}); err != nil {
			return fmt.Errorf("setsockopt SO_LINGER: %w", err)
		}
	}
	return nil
}

// refuseOOB fails when an out-of-band byte (send with MSG_OOB) waits in
// stream socket s's receive queue: the peek reads it as an ordinary byte,
// and a restore would hand it back in-band. recv(MSG_OOB|MSG_PEEK) finds
// it without taking it (EINVAL: none); SO_OOBINLINE hides it from that
// recv, so it is cleared on the copy (the same socket) and set back.
func refuseOOB(s int) (err error) {
	inline, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_OOBINLINE)
	if err != nil {
		return fmt.Errorf("getsockopt SO_OOBINLINE: %w", err)
	}
	if inline != 0 {
		if err := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_OOBINLINE, 0); err != nil {
			return fmt.Errorf("setsockopt SO_OOBINLINE: %w", err)
		}
		defer func() {
			if e := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_OOBINLINE, inline); e != nil && err == nil {
				err = fmt.Errorf("setsockopt SO_OOBINLINE: %w", e)
			}
		}()
	}
	var b [1]byte
	_, _, err = unix.Recvfrom(s, b[:], unix.MSG_OOB|unix.MSG_PEEK|unix.MSG_DONTWAIT)
	switch {
	case err == nil:
		return fmt.Errorf("an out-of-band byte (MSG_OOB) is queued: not supported yet")
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.EOPNOTSUPP):
		return nil // none (EOPNOTSUPP: a kernel without CONFIG_AF_UNIX_OOB)
	}
	return fmt.Errorf("look for an out-of-band byte: %w", err)
}

// peekQueue reads what s has to read without taking it: SO_PEEK_OFF moves
// each MSG_PEEK on past what the last one returned; it is off again after.
func peekQueue(s int, st *model.UnixSocketState) (_ [][]byte, err error) {
	if err := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_PEEK_OFF, 0); err != nil {
		return nil, fmt.Errorf("SO_PEEK_OFF: %w", err)
	}
	defer func() {
		if e := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_PEEK_OFF, -1); e != nil && err == nil {
			err = fmt.Errorf("SO_PEEK_OFF: %w", e)
		}
	}()
	buf := make([]byte, max(int(st.Opts.RcvBuf), 64<<10))
	oob := make([]byte, 4096)
	var out [][]byte
	stream := st.Type == unix.SOCK_STREAM
	for {
		n, oobn, flags, _, err := unix.Recvmsg(s, buf, oob, unix.MSG_PEEK|unix.MSG_DONTWAIT|unix.MSG_TRUNC)
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("peek at the receive queue: %w", err)
		}
		if oobn > 0 {
			if err := refuseRights(oob[:oobn]); err != nil {
				return nil, err
			}
		}
		if flags&unix.MSG_CTRUNC != 0 {
			return nil, fmt.Errorf("a queued message carries more control data than godwit reads")
		}
		if n > len(buf) {
			// A datagram longer than the buffer: MSG_TRUNC told its
			// length; the peek offset did not move on (it moves by
			// what was copied), so peek at it again.
			buf = make([]byte, n)
			if err := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_PEEK_OFF, queued(out)); err != nil {
				return nil, fmt.Errorf("SO_PEEK_OFF: %w", err)
			}
			continue
		}
		if n == 0 && (stream || st.Shutdown&1 != 0) {
			break // end of stream (or of a shut-down packet socket)
		}
		if n == 0 {
			// The peek offset cannot move past an empty datagram.
			return nil, fmt.Errorf("an empty datagram is queued: not supported yet")
		}
		if stream && len(out) > 0 {
			out[0] = append(out[0], buf[:n]...)
		} else {
			out = append(out, bytes.Clone(buf[:n]))
		}
	}
	return out, nil
}

func queued(q [][]byte) int {
	n := 0
	for _, m := range q {
		n += len(m)
	}
	return n
}

// refuseRights fails when control messages hold descriptors (closing the
// copies the peek made).
func refuseRights(oob []byte) error {
	cms, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return fmt.Errorf("queued control data: %w", err)
	}
	for i := range cms {
		if cms[i].Header.Level == unix.SOL_SOCKET && cms[i].Header.Type == unix.SCM_RIGHTS {
			fds, _ := unix.ParseUnixRights(&cms[i])
			for _, fd := range fds {
				unix.Close(fd)
			}
			return fmt.Errorf("%d file descriptors are in flight in its queue (SCM_RIGHTS): not supported yet", len(fds))
		}
	}
	return nil
}

func (unixKind) open(rs *restoreFDs, what string, f *model.File) (uint64, error) {
	st := f.Unix
	if st == nil {
		return 0, fmt.Errorf("%s: socket without its state", what)
	}
	s, ok := rs.socks[st.Ino]
	if h := rs.r.Held; !ok && h != nil {
		// Made with its peer while another task was restored.
		if s, ok = h.socks[st.Ino]; ok {
			delete(h.socks, st.Ino)
			rs.socks[st.Ino] = s
		}
	}
	if !ok {
		var err error
		if s, err = makeUnix(rs, what, f); err != nil {
			return 0, err
		}
	}
	if err := setSocketOpts(s, &st.Opts); err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	if err := setUnixOpts(s, st); err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	if _, err := unix.FcntlInt(uintptr(s), unix.F_SETFL, int(f.Flags&unix.O_NONBLOCK)); err != nil {
		return 0, fmt.Errorf("%s: F_SETFL: %w", what, err)
	}
	return rs.install(what, s)
}

// makeUnix makes the socket of f in godwit (with its peer, for a pair),
// and keeps it (and the peer) in rs until the task's fds are restored.
func makeUnix(rs *restoreFDs, what string, f *model.File) (int, error) {
	st := f.Unix
	typ := int(st.Type) | unix.SOCK_CLOEXEC
	if st.External {
		return makeExternal(rs, what, f)
	}
	if st.Peer != 0 && st.PeerName != nil && st.Type == unix.SOCK_DGRAM {
		return makeDgramClient(rs, what, f)
	}
	if st.Peer != 0 && st.PeerName != nil {
		return makeAccepted(rs, what, f)
	}
	if st.Peer != 0 {
		pf := rs.unixSocket(st.Peer)
		elsewhere := false
		if pf == nil && rs.r.Held != nil {
			pf, elsewhere = rs.r.Held.peer(rs.r.Tree, st.Peer), true
		}
		if pf == nil {
			return -1, fmt.Errorf("%s: the peer of unix socket %d (socket %d) is not in the dump", what, st.Ino, st.Peer)
		}
		sp, err := unix.Socketpair(unix.AF_UNIX, typ, 0)
		if err != nil {
			return -1, fmt.Errorf("%s: socketpair: %w", what, err)
		}
		rs.socks[st.Ino] = sp[0]
		if elsewhere {
			// Kept for the task that holds the peer.
			rs.r.Held.socks[st.Peer] = sp[1]
		} else {
			rs.socks[st.Peer] = sp[1]
		}
		// Each end's queue is what the other sent it.
		if err := refill(sp[1], st.Queue); err != nil {
			return -1, fmt.Errorf("%s: %w", what, err)
		}
		if err := refill(sp[0], pf.Unix.Queue); err != nil {
			return -1, fmt.Errorf("%s: its peer's queue: %w", what, err)
		}
		// One end's shutdown is the other's, mirrored.
		for _, h := range []struct {
			bit uint32
			how int
		}{{2, unix.SHUT_WR}, {1, unix.SHUT_RD}} {
			if st.Shutdown&h.bit != 0 {
				if err := unix.Shutdown(sp[0], h.how); err != nil {
					return -1, fmt.Errorf("%s: shutdown: %w", what, err)
				}
			}
		}
		return sp[0], nil
	}
	s, err := unix.Socket(unix.AF_UNIX, typ, 0)
	if err != nil {
		return -1, fmt.Errorf("%s: socket: %w", what, err)
	}
	rs.socks[st.Ino] = s
	if len(st.Name) > 0 {
		if err := bindUnix(s, st); err != nil {
			return -1, fmt.Errorf("%s: %w", what, err)
		}
	}
	if st.State == tcpListen {
		if err := unix.Listen(s, int(st.Backlog)); err != nil {
			return -1, fmt.Errorf("%s: listen: %w", what, err)
		}
	}
	if st.Shutdown != 0 {
		return -1, fmt.Errorf("%s: shutdown of an unconnected socket cannot be restored", what)
	}
	return s, nil
}

// makeExternal makes a socket whose peer is outside the tree: a datagram
// socket connected to a bound name is connected to that name again; a
// socketpair end gets a new pair whose other end, after sending the
// queued bytes, is closed (the peer is gone, as --external unix[INO]
// allows); a stream connected through a name needs the very socket
// (--inherit-fd fd[N]:socket[INO]).
func makeExternal(rs *restoreFDs, what string, f *model.File) (int, error) {
	st := f.Unix
	typ := int(st.Type) | unix.SOCK_CLOEXEC
	switch {
	case st.PeerName == nil:
		sp, err := unix.Socketpair(unix.AF_UNIX, typ, 0)
		if err != nil {
			return -1, fmt.Errorf("%s: socketpair: %w", what, err)
		}
		rs.socks[st.Ino] = sp[0]
		err = refill(sp[1], st.Queue)
		unix.Close(sp[1])
		if err != nil {
			return -1, fmt.Errorf("%s: %w", what, err)
		}
		return sp[0], nil
	case st.Type == unix.SOCK_DGRAM && len(st.PeerName) > 0:
		s, err := unix.Socket(unix.AF_UNIX, typ, 0)
		if err != nil {
			return -1, fmt.Errorf("%s: socket: %w", what, err)
		}
		rs.socks[st.Ino] = s
		if len(st.Name) > 0 {
			if err := bindUnix(s, st); err != nil {
				return -1, fmt.Errorf("%s: %w", what, err)
			}
		}
		name := string(st.PeerName)
		if name[0] == 0 {
			name = "@" + name[1:]
		}
		if err := unix.Connect(s, &unix.SockaddrUnix{Name: name}); err != nil {
			return -1, fmt.Errorf("%s: connect to %s, its peer outside the tree: %w", what, name, err)
		}
		if st.Shutdown != 0 {
			return -1, fmt.Errorf("%s: shutdown of a socket connected outside the tree cannot be restored", what)
		}
		return s, nil
	}
	return -1, fmt.Errorf("%s: unix socket %d is connected to socket %d%s outside the tree: restore with --inherit-fd fd[N]:socket[%d]", what, st.Ino, st.Peer, peerName(st), st.Ino)
}

// bindUnix binds s to its dumped name. A path still holding the dumped
// socket's file (the task was killed, its file stays) is unlinked first;
// any other file there is left alone and the bind fails.
func bindUnix(s int, st *model.UnixSocketState) error {
	name := string(st.Name)
	sa := &unix.SockaddrUnix{Name: name}
	if name[0] == 0 {
		sa.Name = "@" + name[1:]
	} else if fi, err := os.Lstat(name); err == nil && fi.Mode()&os.ModeSocket != 0 {
		if err := os.Remove(name); err != nil {
			return fmt.Errorf("remove stale socket file: %w", err)
		}
	}
	if err := unix.Bind(s, sa); err != nil {
		return fmt.Errorf("bind %q: %w", name, err)
	}
	if name[0] == '/' && st.FileMode != 0 {
		if err := unix.Fchmodat(unix.AT_FDCWD, name, st.FileMode&0o7777, 0); err != nil {
			return fmt.Errorf("chmod %s: %w", name, err)
		}
	}
	return nil
}

// refill sends each message from s (to its peer).
func refill(s int, q [][]byte) error {
	for _, m := range q {
		n, err := unix.SendmsgN(s, m, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		if err != nil || n != len(m) {
			return fmt.Errorf("refill the receive queue with %d bytes: sent %d: %v", len(m), n, err)
		}
	}
	return nil
}

// setSocketOpts gives s the dumped options; buffer sizes only where they
// differ from a new socket's (setting one locks it against autotuning).
func setSocketOpts(s int, o *model.SocketOpts) error {
	for _, b := range []struct {
		get, set int
		v        uint32
		what     string
	}{{unix.SO_SNDBUF, unix.SO_SNDBUFFORCE, o.SndBuf, "SO_SNDBUF"}, {unix.SO_RCVBUF, unix.SO_RCVBUFFORCE, o.RcvBuf, "SO_RCVBUF"}} {
		cur, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, b.get)
		if err != nil {
			return fmt.Errorf("getsockopt %s: %w", b.what, err)
		}
		if uint32(cur) != b.v {
			// The kernel doubles what it is given.
			if err := unix.SetsockoptInt(s, unix.SOL_SOCKET, b.set, int(b.v/2)); err != nil {
				return fmt.Errorf("setsockopt %s %d: %w", b.what, b.v, err)
			}
		}
	}
	bool2int := func(b bool) int {
		if b {
			return 1
		}
		return 0
	}
	for _, i := range []struct {
		opt  int
		v    int
		what string
	}{
		{unix.SO_PASSCRED, bool2int(o.PassCred), "SO_PASSCRED"},
		{unix.SO_PASSSEC, bool2int(o.PassSec), "SO_PASSSEC"},
		{unix.SO_PRIORITY, int(o.Priority), "SO_PRIORITY"},
		{unix.SO_RCVLOWAT, int(o.RcvLowat), "SO_RCVLOWAT"},
		{unix.SO_MARK, int(o.Mark), "SO_MARK"},
	} {
		cur, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, i.opt)
		if err == nil && cur == i.v {
			continue
		}
		if err := unix.SetsockoptInt(s, unix.SOL_SOCKET, i.opt, i.v); err != nil {
			return fmt.Errorf("setsockopt %s %d: %w", i.what, i.v, err)
		}
	}
	for _, t := range []struct {
		opt      int
		sec, use uint64
	}{{unix.SO_SNDTIMEO, o.SndTimeoSec, o.SndTimeoUsec}, {unix.SO_RCVTIMEO, o.RcvTimeoSec, o.RcvTimeoUsec}} {
		tv := unix.Timeval{Sec: int64(t.sec), Usec: int64(t.use)}
		if err := unix.SetsockoptTimeval(s, unix.SOL_SOCKET, t.opt, &tv); err != nil {
			return fmt.Errorf("setsockopt timeout: %w", err)
		}
	}
	return nil
}
