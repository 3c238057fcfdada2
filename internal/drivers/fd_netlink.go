package drivers

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
)

// Netlink sockets (route, generic, …): the protocol, the bound port id
// (none: the socket is restored unbound, and binds itself on first use as
// it would have), every multicast group joined, a connect()ed destination
// and the SO_* options, as CRIU's netlink_sk_entry holds them. The restore
// makes the socket in godwit, binds it to the same port id, joins the
// groups, connects, and hands it over.
//
// Refused, naming the socket: messages queued to be read (replies or
// notifications the task has not read: their contents cannot be put
// back), a dump (NLM_F_DUMP) in progress, the NETLINK_* options CRIU's
// image has no field for (NETLINK_PKTINFO, _BROADCAST_ERROR, _NO_ENOBUFS,
// _LISTEN_ALL_NSID, _CAP_ACK, _EXT_ACK, _GET_STRICT_CHK), SOCK_DGRAM (the
// image has no type: it would come back SOCK_RAW), a socket filter.

func init() { registerFDKind(netlinkKind{}) }

type netlinkKind struct{}

func (netlinkKind) name() string             { return "netlink socket" }
func (netlinkKind) fileKind() model.FileKind { return model.NetlinkSocket }

// match is false: every socket is classified as unixKind's, whose collect
// passes netlink sockets on to collectNetlink by family.
func (netlinkKind) match(string, *unix.Stat_t) bool { return false }
func (netlinkKind) check(int, int, uint64) error    { return nil }

func (netlinkKind) collect(_ *Files, pid int, fd *FD, f *model.File) error {
	s, err := grabFD(pid, fd.Num)
	if err != nil {
		return err
	}
	defer unix.Close(s)
	return collectNetlink(pid, s, fd, f)
}

// netlinkNames names the protocols in errors.
var netlinkNames = map[uint32]string{
	unix.NETLINK_ROUTE: "NETLINK_ROUTE", unix.NETLINK_SOCK_DIAG: "NETLINK_SOCK_DIAG",
	unix.NETLINK_NFLOG: "NETLINK_NFLOG", unix.NETLINK_XFRM: "NETLINK_XFRM",
	unix.NETLINK_SELINUX: "NETLINK_SELINUX", unix.NETLINK_AUDIT: "NETLINK_AUDIT",
	unix.NETLINK_NETFILTER: "NETLINK_NETFILTER", unix.NETLINK_KOBJECT_UEVENT: "NETLINK_KOBJECT_UEVENT",
	unix.NETLINK_GENERIC: "NETLINK_GENERIC", unix.NETLINK_CONNECTOR: "NETLINK_CONNECTOR",
}

func netlinkName(p uint32) string {
	if n, ok := netlinkNames[p]; ok {
		return n
	}
	return "netlink protocol " + strconv.Itoa(int(p))
}

// The NETLINK_* options the image cannot carry.
var netlinkFlagOpts = []struct {
	opt  int
	name string
}{
	{unix.NETLINK_PKTINFO, "NETLINK_PKTINFO"},
	{unix.NETLINK_BROADCAST_ERROR, "NETLINK_BROADCAST_ERROR"},
	{unix.NETLINK_NO_ENOBUFS, "NETLINK_NO_ENOBUFS"},
	{unix.NETLINK_LISTEN_ALL_NSID, "NETLINK_LISTEN_ALL_NSID"},
	{unix.NETLINK_CAP_ACK, "NETLINK_CAP_ACK"},
	{unix.NETLINK_EXT_ACK, "NETLINK_EXT_ACK"},
	{unix.NETLINK_GET_STRICT_CHK, "NETLINK_GET_STRICT_CHK"},
}

// maxNetlinkGroupWords bounds the membership bitmap (the kernel's largest
// group count, NETLINK_ROUTE's, fits in a few words).
const maxNetlinkGroupWords = 64

// collectNetlink fills f from s, godwit's copy of the task's netlink
// socket fd.
func collectNetlink(pid, s int, fd *FD, f *model.File) error {
	proto, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	if err != nil {
		return fmt.Errorf("netlink socket: SO_PROTOCOL: %w", err)
	}
	st := &model.NetlinkSocketState{Ino: uint32(fd.Stat.Ino), Protocol: uint32(proto)}
	what := netlinkName(st.Protocol) + " socket"
	typ, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return fmt.Errorf("%s: SO_TYPE: %w", what, err)
	}
	if typ != unix.SOCK_RAW {
		return fmt.Errorf("%s of type SOCK_DGRAM: CRIU's netlink image has no socket type (it would come back SOCK_RAW): not supported", what)
	}
	sa, err := unix.Getsockname(s)
	if err != nil {
		return fmt.Errorf("%s: getsockname: %w", what, err)
	}
	if nl, ok := sa.(*unix.SockaddrNetlink); ok {
		st.PortID = nl.Pid
	}
	if st.PortID != 0 {
		what += fmt.Sprintf(" (port id %d)", st.PortID)
	}
	if pa, err := unix.Getpeername(s); err == nil {
		if nl, ok := pa.(*unix.SockaddrNetlink); ok {
			st.DstPortID, st.DstGroup = nl.Pid, nl.Groups
		}
	}
	if st.Groups, err = netlinkGroups(s); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	for _, o := range netlinkFlagOpts {
		v, err := unix.GetsockoptInt(s, unix.SOL_NETLINK, o.opt)
		if err != nil {
			return fmt.Errorf("%s: getsockopt %s: %w", what, o.name, err)
		}
		if v != 0 {
			return fmt.Errorf("%s: %s is set, which CRIU's netlink image cannot carry: not supported", what, o.name)
		}
	}
	// An unbound socket is in no table (and can receive nothing).
	var info netlinkProc
	if st.PortID != 0 {
		if info, err = procNetlink(pid, fd.Stat.Ino); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	if info.Rmem != 0 {
		return fmt.Errorf("%s: %d bytes of messages queued, not read by the task: not supported", what, info.Rmem)
	}
	if info.Dump {
		return fmt.Errorf("%s: a netlink dump is in progress: not supported", what)
	}
	if st.Opts, err = netlinkSocketOpts(s); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	f.Kind, f.Path = model.NetlinkSocket, ""
	f.Netlink = st
	return nil
}

// netlinkGroups reads the joined groups (NETLINK_LIST_MEMBERSHIPS, every
// group, beyond the 32 getsockname shows); trailing zero words dropped.
func netlinkGroups(s int) ([]uint32, error) {
	buf := make([]uint32, maxNetlinkGroupWords)
	n := uint32(len(buf) * 4)
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(s), unix.SOL_NETLINK, unix.NETLINK_LIST_MEMBERSHIPS,
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0); e != 0 {
		return nil, fmt.Errorf("getsockopt NETLINK_LIST_MEMBERSHIPS: %w", e)
	}
	// n is the size the kernel needs, which may exceed the buffer.
	if n > uint32(len(buf)*4) {
		return nil, fmt.Errorf("NETLINK_LIST_MEMBERSHIPS needs %d bytes", n)
	}
	words := buf[:n/4]
	for len(words) > 0 && words[len(words)-1] == 0 {
		words = words[:len(words)-1]
	}
	if len(words) == 0 {
		return nil, nil
	}
	return append([]uint32(nil), words...), nil
}

// netlinkSocketOpts reads the SO_* options of a netlink socket (which has
// no SO_PEEK_OFF, unlike a unix socket).
func netlinkSocketOpts(s int) (model.SocketOpts, error) {
	var o model.SocketOpts
	for _, i := range []struct {
		opt  int
		v    *uint32
		what string
	}{
		{unix.SO_SNDBUF, &o.SndBuf, "SO_SNDBUF"}, {unix.SO_RCVBUF, &o.RcvBuf, "SO_RCVBUF"},
		{unix.SO_PRIORITY, &o.Priority, "SO_PRIORITY"}, {unix.SO_RCVLOWAT, &o.RcvLowat, "SO_RCVLOWAT"},
		{unix.SO_MARK, &o.Mark, "SO_MARK"},
	} {
		v, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, i.opt)
		if err != nil {
			return o, fmt.Errorf("getsockopt %s: %w", i.what, err)
		}
		*i.v = uint32(v)
	}
	for _, b := range []struct {
		opt  int
		v    *bool
		what string
	}{{unix.SO_PASSCRED, &o.PassCred, "SO_PASSCRED"}, {unix.SO_PASSSEC, &o.PassSec, "SO_PASSSEC"}} {
		v, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, b.opt)
		if err != nil {
			return o, fmt.Errorf("getsockopt %s: %w", b.what, err)
		}
		*b.v = v != 0
	}
	for _, t := range []struct {
		opt      int
		sec, use *uint64
	}{{unix.SO_SNDTIMEO, &o.SndTimeoSec, &o.SndTimeoUsec}, {unix.SO_RCVTIMEO, &o.RcvTimeoSec, &o.RcvTimeoUsec}} {
		tv, err := unix.GetsockoptTimeval(s, unix.SOL_SOCKET, t.opt)
		if err != nil {
			return o, fmt.Errorf("getsockopt timeout: %w", err)
		}
		*t.sec, *t.use = uint64(tv.Sec), uint64(tv.Usec)
	}
	var n uint32
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(s), unix.SOL_SOCKET, unix.SO_GET_FILTER, 0, uintptr(unsafe.Pointer(&n)), 0); e != 0 {
		return o, fmt.Errorf("getsockopt SO_GET_FILTER: %w", e)
	}
	if n != 0 {
		return o, fmt.Errorf("a socket filter of %d instructions is attached: not supported yet", n)
	}
	return o, nil
}

// netlinkProc is a socket's line of /proc/PID/net/netlink.
type netlinkProc struct {
	Protocol, PortID uint32
	Rmem             uint64 // bytes queued to be read
	Dump             bool   // a dump is in progress
}

// procNetlink finds socket ino in the netlink table of pid's network
// namespace.
func procNetlink(pid int, ino uint64) (netlinkProc, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/net/netlink")
	if err != nil {
		return netlinkProc{}, err
	}
	p, ok, err := parseProcNetlink(b, ino)
	if err != nil {
		return netlinkProc{}, err
	}
	if !ok {
		return netlinkProc{}, fmt.Errorf("socket %d not in /proc/%d/net/netlink", ino, pid)
	}
	return p, nil
}

// parseProcNetlink reads /proc/net/netlink (net/netlink/af_netlink.c:
// sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode) for socket ino.
func parseProcNetlink(b []byte, ino uint64) (netlinkProc, bool, error) {
	fs, line, ok, err := procNetRow(b, func(h []string) bool {
		return len(h) >= 10 && h[0] == "sk" && h[9] == "Inode"
	}, ino)
	if err != nil {
		return netlinkProc{}, false, fmt.Errorf("/proc/net/netlink: %w", err)
	}
	if !ok {
		return netlinkProc{}, false, nil
	}
	var p netlinkProc
	proto, err1 := strconv.ParseUint(fs[1], 10, 32)
	port, err2 := strconv.ParseUint(fs[2], 10, 32)
	rmem, err3 := strconv.ParseUint(fs[4], 10, 64)
	dump, err4 := strconv.ParseUint(fs[6], 10, 32)
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return netlinkProc{}, false, fmt.Errorf("/proc/net/netlink: line %q: %w", line, err)
	}
	p.Protocol, p.PortID, p.Rmem, p.Dump = uint32(proto), uint32(port), rmem, dump != 0
	return p, true, nil
}

func (netlinkKind) open(rs *restoreFDs, what string, f *model.File) (uint64, error) {
	st := f.Netlink
	if st == nil {
		return 0, fmt.Errorf("%s: netlink socket without its state", what)
	}
	s, err := makeNetlink(st)
	if err != nil {
		return 0, fmt.Errorf("%s: %s socket: %w", what, netlinkName(st.Protocol), err)
	}
	defer unix.Close(s)
	if err := setSocketOpts(s, &st.Opts); err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	if _, err := unix.FcntlInt(uintptr(s), unix.F_SETFL, int(f.Flags&unix.O_NONBLOCK)); err != nil {
		return 0, fmt.Errorf("%s: F_SETFL: %w", what, err)
	}
	return rs.install(what, s)
}

// makeNetlink makes the socket: bound to its port id (if it was), in its
// groups, connected to its destination (if it was).
func makeNetlink(st *model.NetlinkSocketState) (int, error) {
	s, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(st.Protocol))
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			unix.Close(s)
		}
	}()
	if st.PortID != 0 {
		if err := unix.Bind(s, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Pid: st.PortID}); err != nil {
			return -1, fmt.Errorf("bind to port id %d: %w", st.PortID, err)
		}
	} else if len(st.Groups) > 0 || st.DstPortID != 0 || st.DstGroup != 0 {
		// Joining or connecting binds; the kernel does that only to a
		// bound socket.
		return -1, fmt.Errorf("in groups or connected, but not bound: inconsistent image")
	}
	for w, bits := range st.Groups {
		for b := 0; b < 32; b++ {
			if bits&(1<<b) == 0 {
				continue
			}
			g := w*32 + b + 1
			if err := unix.SetsockoptInt(s, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, g); err != nil {
				return -1, fmt.Errorf("join group %d: %w", g, err)
			}
		}
	}
	if st.DstPortID != 0 || st.DstGroup != 0 {
		if err := unix.Connect(s, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Pid: st.DstPortID, Groups: st.DstGroup}); err != nil {
			return -1, fmt.Errorf("connect to port id %d group %#x: %w", st.DstPortID, st.DstGroup, err)
		}
	}
	ok = true
	return s, nil
}
