package drivers

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
	"godwit/internal/netlock"
	"godwit/internal/sockdiag"
	"godwit/internal/tcprepair"
)

// Inet sockets (AF_INET, AF_INET6): TCP and MPTCP — unbound, bound,
// listening, and (with --tcp-established) connected in any state a
// connection can be frozen in — and UDP and UDP-Lite, bound or
// connected. The dump learns the socket from sock_diag (addresses,
// backlog, shutdown, waiting connections) and its options from a copy
// taken with pidfd_getfd; an established connection is read in
// TCP_REPAIR mode (internal/tcprepair), and that copy stays open in
// repair mode until the dump ends, so that the task's death closes the
// connection silently (no FIN, no RST) and its peer sees only delay. A
// failed dump takes every socket out of repair mode again.
//
// ICMP ping and raw sockets: fd_raw.go.
//
// Refused, naming the socket: connections waiting
// in a listener's accept queue or half-open (the kernel cannot put a
// connection back into an accept queue; --skip-in-flight leaves them
// out); connecting sockets (SYN_SENT); established connections without
// --tcp-established; datagrams queued on a UDP socket (their senders
// cannot be restored) or corked; socket filters; options CRIU's image
// has no field for set away from their defaults (IP_TRANSPARENT,
// TCP_USER_TIMEOUT, UDP_CORK); sockets of another network namespace.

func init() { registerFDKind(inetKind{}) }

type inetKind struct{}

func (inetKind) name() string             { return "inet socket" }
func (inetKind) fileKind() model.FileKind { return model.InetSocket }

// match: the unix kind matches every socket and hands inet ones here.
func (inetKind) match(string, *unix.Stat_t) bool { return false }
func (inetKind) check(int, int, uint64) error    { return nil }

// inetDump is a dump's view of its inet sockets: sock_diag's tables,
// read once per family and protocol, and the sockets put in repair mode.
type inetDump struct {
	mu       sync.Mutex
	diag     map[[2]uint32]*sockdiag.InetTable
	repaired []int
	// defaults: a fresh socket's options, by family, type and protocol.
	defaults map[[3]uint32]*freshOpts
	// The sysctls the options are compared with, read once per dump (a
	// long-running agent must not keep an old value).
	defaultTTL         func() uint32
	notsentLowatSysctl func() (int, bool)
	// netns: nil for godwit's namespace; foreign: the view of the one
	// other namespace of the dump's sockets (fd_inet_netns.go).
	netns   *inetNetns
	foreign *inetDump
	// tasks: the network namespace of each task whose sockets were
	// read, by pid (taskNetns).
	tasks map[int]NetnsID
	// self: godwit's network namespace, once read (selfNetns).
	self NetnsID
	// pre: the inet sockets of the task being collected, by fd,
	// collected ahead (prefetchInet).
	pre map[int]*preInet
	// mcast: the multicast groups of the namespace's devices, once
	// read (mcastGroups).
	mcast *[]mcastGroup
	// steer: the reuseport steering programs of the tasks' sockets
	// (fd_inet_bpf.go).
	steer steerState
}

func (fl *Files) inetState() *inetDump {
	if fl.inet == nil {
		fl.inet = newInetDump()
	}
	return fl.inet
}

func newInetDump() *inetDump {
	return &inetDump{diag: map[[2]uint32]*sockdiag.InetTable{},
		defaultTTL: sync.OnceValue(readDefaultTTL), notsentLowatSysctl: sync.OnceValues(readNotsentLowat)}
}

func (d *inetDump) table(family, proto uint32) (*sockdiag.InetTable, error) {
	k := [2]uint32{family, proto}
	if t, ok := d.diag[k]; ok {
		return t, nil
	}
	var t *sockdiag.InetTable
	err := d.inNetns(func() error {
		var err error
		t, err = sockdiag.DumpInetTableOpts(uint8(family), proto)
		return err
	})
	if err != nil {
		return nil, err
	}
	d.diag[k] = t
	return t, nil
}

// ReleaseRepaired ends the dump's hold on the connections it read in
// repair mode. resume: the tasks run on (a failed dump, --leave-running),
// so repair mode is left first; otherwise the tasks were killed and the
// last copy closes in repair mode, silently.
func (fl *Files) ReleaseRepaired(resume bool) error {
	if fl == nil || fl.inet == nil {
		return nil
	}
	var errs []error
	for _, d := range []*inetDump{fl.inet, fl.inet.foreign} {
		if d == nil {
			continue
		}
		d.mu.Lock()
		errs = append(errs, releaseAll(d.repaired, resume))
		d.repaired = nil
		d.mu.Unlock()
	}
	if f := fl.inet.foreign; f != nil {
		f.release() // the dump is over
	}
	return errors.Join(errs...)
}

// releaseAll closes the copies ss, first out of repair mode if resume,
// on as many goroutines as Go runs threads when they are many: the last
// close of a connection tears it down in the kernel (its buffers, its
// inode), some microseconds each, and none waits for another.
func releaseAll(ss []int, resume bool) error {
	release := func(ss []int) error {
		var errs []error
		for _, s := range ss {
			if resume {
				if err := tcprepair.Off(s); err != nil {
					errs = append(errs, err)
				}
			}
			unix.Close(s)
		}
		return errors.Join(errs...)
	}
	n := min(runtime.GOMAXPROCS(0), len(ss)/prefetchMin)
	if n < 2 {
		return release(ss)
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for w := range n {
		wg.Go(func() { errs[w] = release(ss[len(ss)*w/n : len(ss)*(w+1)/n]) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// inetName is the address getsockname or getpeername (call) gives for
// the inet socket s, read raw: unix.Getsockname asks SO_PROTOCOL of
// every inet socket besides (for L2TP's addresses), a third call per
// socket, and a dump reads two addresses of thousands of sockets.
func inetName(s int, call uintptr) (netip.AddrPort, error) {
	var rsa unix.RawSockaddrAny
	l := uint32(unix.SizeofSockaddrAny)
	if _, _, e := unix.RawSyscall(call, uintptr(s), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&l))); e != 0 {
		return netip.AddrPort{}, e
	}
	be := func(p *uint16) uint16 { // sin_port: network order
		b := (*[2]byte)(unsafe.Pointer(p))
		return uint16(b[0])<<8 | uint16(b[1])
	}
	switch rsa.Addr.Family {
	case unix.AF_INET:
		if l < unix.SizeofSockaddrInet4 {
			break
		}
		a := (*unix.RawSockaddrInet4)(unsafe.Pointer(&rsa))
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), be(&a.Port)), nil
	case unix.AF_INET6:
		if l < unix.SizeofSockaddrInet6 {
			break
		}
		a := (*unix.RawSockaddrInet6)(unsafe.Pointer(&rsa))
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), be(&a.Port)), nil
	}
	return netip.AddrPort{}, fmt.Errorf("address of family %d (%d bytes)", rsa.Addr.Family, l)
}

func addrPort(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port))
	}
	return netip.AddrPort{}
}

func sockaddr(family uint32, ap netip.AddrPort) unix.Sockaddr {
	if family == unix.AF_INET {
		return &unix.SockaddrInet4{Addr: ap.Addr().Unmap().As4(), Port: int(ap.Port())}
	}
	return &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
}

func protoName(p uint32) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "TCP"
	case unix.IPPROTO_MPTCP:
		return "MPTCP"
	case unix.IPPROTO_UDP:
		return "UDP"
	case unix.IPPROTO_UDPLITE:
		return "UDP-Lite"
	}
	return fmt.Sprintf("protocol %d", p)
}

// describe names a socket in errors: "TCP socket 127.0.0.1:80 -> 127.0.0.1:5000".
func describe(st *model.InetSocketState) string {
	if rawOrPing(st) {
		return describeRaw(st)
	}
	d := protoName(st.Proto) + " socket"
	if st.Src.IsValid() && (st.Src.Port() != 0 || !st.Src.Addr().IsUnspecified()) {
		d += " " + st.Src.String()
	}
	if st.Dst.IsValid() && st.Dst.Port() != 0 {
		d += " -> " + st.Dst.String()
	}
	return d
}

// collectInet reads the inet socket s (a copy of fd's) into f.
func collectInet(fl *Files, pid int, fd *FD, f *model.File, s, family int) error {
	return collectInetTaking(fl, pid, fd, f, s, family, nil)
}

// collectInetTaking is collectInet where a connection read in repair
// mode may keep s itself as its copy held until the dump ends (setting
// *took: the caller must not close it) instead of a dup of it.
func collectInetTaking(fl *Files, pid int, fd *FD, f *model.File, s, family int, took *bool) error {
	typ, err := getsockoptInt(s, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return fmt.Errorf("SO_TYPE: %w", err)
	}
	proto, err := getsockoptInt(s, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	if err != nil {
		return fmt.Errorf("SO_PROTOCOL: %w", err)
	}
	switch {
	case typ == unix.SOCK_STREAM && (proto == unix.IPPROTO_TCP || proto == unix.IPPROTO_MPTCP):
	case typ == unix.SOCK_DGRAM && (proto == unix.IPPROTO_UDP || proto == unix.IPPROTO_UDPLITE):
	case typ == unix.SOCK_RAW || isPing(uint32(typ), uint32(proto)):
		return collectRaw(fl, pid, fd, f, s, family, typ, proto)
	default:
		return fmt.Errorf("%s socket of type %d, protocol %d: not supported yet", familyName(family), typ, proto)
	}
	ino := uint32(fd.Stat.Ino)
	id, dg, err := fl.inetViewByDiag(pid, uint32(family), uint32(proto), ino)
	if err != nil {
		return err
	}
	if id == nil {
		if id, err = fl.inetStateOf(s, pid); err != nil {
			return fmt.Errorf("%s %s socket %d: %w", familyName(family), protoName(uint32(proto)), ino, err)
		}
		id.mu.Lock()
		tab, err := id.table(uint32(family), uint32(proto))
		id.mu.Unlock()
		if err != nil {
			return err
		}
		dg = tab.ByIno[ino]
	}
	if dg == nil {
		// sock_diag lists the sockets of the namespace that have an
		// address: this one has none.
		dg = &sockdiag.Inet{State: tcprepair.StateClose}
	}
	if dg.State == tcpBoundInactive {
		dg.State = tcprepair.StateClose
	}
	st := &model.InetSocketState{
		Ino: ino, Family: uint32(family), Type: uint32(typ), Proto: uint32(proto), State: uint32(dg.State),
		Shutdown: uint32(dg.Shutdown),
	}
	// getsockname/getpeername say what the task sees (a v4-mapped
	// address stays mapped); sock_diag fills in a listener's backlog.
	if ap, err := inetName(s, unix.SYS_GETSOCKNAME); err == nil {
		st.Src = ap
	} else {
		return fmt.Errorf("getsockname: %w", err)
	}
	if ap, err := inetName(s, unix.SYS_GETPEERNAME); err == nil {
		st.Dst = ap
	} else if !errors.Is(err, unix.ENOTCONN) {
		return fmt.Errorf("getpeername: %w", err)
	} else {
		// As the image keeps it: the family's any address, port 0.
		st.Dst = netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
		if family == unix.AF_INET6 {
			st.Dst = netip.AddrPortFrom(netip.IPv6Unspecified(), 0)
		}
	}
	what := describe(st)
	if st.Proto == unix.IPPROTO_MPTCP && st.State != tcprepair.StateClose && st.State != tcprepair.StateListen {
		return refuseMPTCPConn(s, st, what)
	}
	if err := inetOptsDiag(id, s, st, dg); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if st.Opts, err = inetSocketOptsDiag(s, st, dg); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := id.steer.refuseSteering(pid, st, what); err != nil {
		return err
	}
	f.Kind, f.Path, f.Inet = model.InetSocket, "", st
	if typ == unix.SOCK_DGRAM {
		return collectUDP(s, st, what)
	}
	switch st.State {
	case tcprepair.StateClose:
		if st.Shutdown != 0 {
			return fmt.Errorf("%s: shut down and closed: not supported yet", what)
		}
		return nil
	case tcprepair.StateListen:
		st.Backlog = dg.Wqueue
		if dg.Rqueue > 0 && !fl.SkipInFlight {
			return fmt.Errorf("%s: listening, with %d connections waiting in its accept queue (the kernel cannot put them back; --skip-in-flight leaves them out, and their clients are reset)", what, dg.Rqueue)
		}
		n, err := halfOpen(id, st)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if n > 0 && !fl.SkipInFlight {
			return fmt.Errorf("%s: listening, with %d connections half-open (SYN_RECV; --skip-in-flight leaves them out)", what, n)
		}
		return nil
	}
	if err := tcprepair.Supported(uint8(st.State)); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if !fl.TCPEstablished {
		return fmt.Errorf("%s: established TCP connection (%s): dump with --tcp-established", what, tcprepair.StateName(uint8(st.State)))
	}
	if extra := st.Shutdown &^ impliedShutdown(uint8(st.State)); extra&2 != 0 {
		return fmt.Errorf("%s: send side shut down in %s: not supported", what, tcprepair.StateName(uint8(st.State)))
	}
	// Its packets go nowhere from now on, until the restore (or the
	// end of a dump that leaves the task running).
	if err := fl.NetLock.Lock([]netlock.Conn{{Local: st.Src, Remote: st.Dst}}); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := repairDump(id, s, st, what, took); err != nil {
		return err
	}
	return unreadBehindMark(dg, st, what)
}

// unreadBehindMark refuses a connection with more bytes received and
// unread (sock_diag's rqueue: rcv_nxt - copied_seq) than the repair
// peek read: reads and SIOCINQ stop at an urgent mark, also when the
// program already took the urgent byte with MSG_OOB (tcprepair sees no
// urgent data then), and the bytes past the mark would be lost. The
// task is frozen since the table was read, so copied_seq has not moved
// and rqueue can only have grown: a larger rqueue is never a race.
func unreadBehindMark(dg *sockdiag.Inet, st *model.InetSocketState, what string) error {
	peeked := uint64(len(st.Stream.InQ))
	if finReceived(uint8(st.State)) {
		peeked++ // rcv_nxt counts the peer's FIN
	}
	if uint64(dg.Rqueue) > peeked {
		return fmt.Errorf("%s: %d bytes received and unread, %d readable before an urgent (MSG_OOB) mark: %w", what, dg.Rqueue, len(st.Stream.InQ), tcprepair.ErrUrgent)
	}
	return nil
}

// finReceived: the peer's FIN is counted in rcv_nxt.
func finReceived(state uint8) bool {
	return state == tcprepair.StateCloseWait || state == tcprepair.StateClosing || state == tcprepair.StateLastAck
}

// tcpBoundInactive is how sock_diag reports a TCP socket bound but
// neither listening nor connected (TCP_BOUND_INACTIVE,
// include/net/tcp_states.h).
const tcpBoundInactive = 13

// repairDump puts a copy of s in repair mode, kept until the dump ends
// (ReleaseRepaired), and reads the connection; with took, s itself is
// that copy (see collectInetTaking).
func repairDump(id *inetDump, s int, st *model.InetSocketState, what string, took *bool) error {
	keep := s
	if took == nil {
		var err error
		if keep, err = unix.FcntlInt(uintptr(s), unix.F_DUPFD_CLOEXEC, 0); err != nil {
			return fmt.Errorf("%s: dup: %w", what, err)
		}
	}
	if err := tcprepair.On(keep); err != nil {
		if took == nil {
			unix.Close(keep)
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	if took != nil {
		*took = true
	}
	id.mu.Lock()
	id.repaired = append(id.repaired, keep)
	id.mu.Unlock()
	rs, err := tcprepair.Dump(keep)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	st.Stream = &model.TCPStream{
		InSeq: rs.InSeq, OutSeq: rs.OutSeq, InQ: rs.InQ, OutQ: rs.OutQ, Unsent: rs.Unsent,
		OptMask: rs.Options, SndWscale: rs.SndWscale, RcvWscale: rs.RcvWscale,
		MSSClamp: rs.MSSClamp, Timestamp: rs.Timestamp,
	}
	if w := rs.Window; w != nil {
		ms := st.Stream
		ms.HasWindow = true
		ms.SndWl1, ms.SndWnd, ms.MaxWnd, ms.RcvWnd, ms.RcvWup = w.SndWl1, w.SndWnd, w.MaxWindow, w.RcvWnd, w.RcvWup
	}
	return nil
}

// impliedShutdown is the sk_shutdown a TCP state brings with it: a FIN
// received shuts down receiving, one sent sending.
func impliedShutdown(state uint8) uint32 {
	var s uint32
	switch state {
	case tcprepair.StateCloseWait, tcprepair.StateClosing, tcprepair.StateLastAck:
		s |= 1
	}
	switch state {
	case tcprepair.StateFinWait1, tcprepair.StateFinWait2, tcprepair.StateClosing, tcprepair.StateLastAck:
		s |= 2
	}
	return s
}

// halfOpen counts the connection requests (SYN_RECV) to listener l.
// Requests have no inode, and an IPv4 request to a dual-stack IPv6
// listener is listed among the AF_INET sockets: both families' TCP
// tables are searched. (An MPTCP listener's requests are TCP ones.)
func halfOpen(id *inetDump, l *model.InetSocketState) (int, error) {
	fams := []uint32{unix.AF_INET}
	if l.Family == unix.AF_INET6 {
		fams = []uint32{unix.AF_INET6}
		if !l.V6Only {
			fams = append(fams, unix.AF_INET)
		}
	}
	la := l.Src.Addr().Unmap()
	n := 0
	for _, fam := range fams {
		id.mu.Lock()
		tab, err := id.table(fam, unix.IPPROTO_TCP)
		id.mu.Unlock()
		if err != nil {
			return 0, err
		}
		for _, s := range tab.NoIno {
			if s.State != tcprepair.StateSynRecv || s.Src.Port() != l.Src.Port() {
				continue
			}
			if la.IsUnspecified() && (la.Is6() || s.Src.Addr().Unmap().Is4()) || s.Src.Addr().Unmap() == la {
				n++
			}
		}
	}
	return n, nil
}

func collectUDP(s int, st *model.InetSocketState, what string) error {
	if st.Shutdown != 0 {
		return fmt.Errorf("%s: shut down: not supported yet", what)
	}
	inq, err := unix.IoctlGetInt(s, unix.SIOCINQ)
	if err != nil {
		return fmt.Errorf("%s: SIOCINQ: %w", what, err)
	}
	if inq > 0 {
		return fmt.Errorf("%s: datagrams queued to be read (their senders cannot be restored): not supported yet", what)
	}
	outq, err := unix.IoctlGetInt(s, unix.SIOCOUTQ)
	if err != nil {
		return fmt.Errorf("%s: SIOCOUTQ: %w", what, err)
	}
	if outq > 0 {
		return fmt.Errorf("%s: %d bytes being sent or corked: not supported", what, outq)
	}
	cork, err := unix.GetsockoptInt(s, unix.IPPROTO_UDP, unix.UDP_CORK)
	if err != nil {
		return fmt.Errorf("%s: UDP_CORK: %w", what, err)
	}
	if cork != 0 {
		return fmt.Errorf("%s: UDP_CORK is set: not supported yet", what)
	}
	return nil
}

// readDefaultTTL reads the default IPv4 TTL of the calling thread's
// network namespace (inetDump.inNetns).
func readDefaultTTL() uint32 {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_default_ttl")
	if err != nil {
		return 64
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 64
	}
	return uint32(v)
}

// inetOpts reads the inet and TCP options into st, refusing those the
// image cannot carry.
func inetOpts(id *inetDump, s int, st *model.InetSocketState) error {
	return inetOptsDiag(id, s, st, nil)
}

// inetOptsDiag is inetOpts taking what sock_diag told of s (dg, nil if
// nothing) instead of asking s (diagOpt).
func inetOptsDiag(id *inetDump, s int, st *model.InetSocketState, dg *sockdiag.Inet) error {
	o := &st.Inet
	var err error
	geti := func(level, opt int, name string) int {
		if err != nil {
			return 0
		}
		if v, ok := diagOpt(dg, st, level, opt); ok {
			return v
		}
		var v int
		if v, err = getsockoptInt(s, level, opt); err != nil {
			if (st.Proto == unix.IPPROTO_MPTCP || st.Type == unix.SOCK_RAW) && unsupportedOpt(err) {
				// MPTCP has no such option (nor could it be set), nor
				// has a raw IPv6 socket IPv4's.
				err = nil
				return 0
			}
			err = fmt.Errorf("getsockopt %s: %w", name, err)
		}
		return v
	}
	o.ReuseAddr = geti(unix.SOL_SOCKET, unix.SO_REUSEADDR, "SO_REUSEADDR") != 0
	o.ReusePort = geti(unix.SOL_SOCKET, unix.SO_REUSEPORT, "SO_REUSEPORT") != 0
	o.KeepAlive = geti(unix.SOL_SOCKET, unix.SO_KEEPALIVE, "SO_KEEPALIVE") != 0
	o.Broadcast = geti(unix.SOL_SOCKET, unix.SO_BROADCAST, "SO_BROADCAST") != 0
	o.OOBInline = geti(unix.SOL_SOCKET, unix.SO_OOBINLINE, "SO_OOBINLINE") != 0
	if geti(unix.SOL_SOCKET, unix.SO_TIMESTAMP, "SO_TIMESTAMP") != 0 {
		return errors.New("SO_TIMESTAMP is set: not supported yet")
	}
	if st.Family == unix.AF_INET {
		o.Freebind = geti(unix.SOL_IP, unix.IP_FREEBIND, "IP_FREEBIND") != 0
		o.TOS = uint32(geti(unix.SOL_IP, unix.IP_TOS, "IP_TOS"))
		if geti(unix.SOL_IP, unix.IP_TRANSPARENT, "IP_TRANSPARENT") != 0 {
			return errors.New("IP_TRANSPARENT is set: not supported yet")
		}
		// A TTL equal to the namespace's default is left unset: setting
		// it would pin it.
		if ttl := uint32(geti(unix.SOL_IP, unix.IP_TTL, "IP_TTL")); ttl != id.defaultTTL() {
			o.TTL = ttl
		}
		o.Pktinfo = geti(unix.SOL_IP, unix.IP_PKTINFO, "IP_PKTINFO") != 0
	} else {
		o.Freebind = geti(unix.SOL_IPV6, unix.IPV6_FREEBIND, "IPV6_FREEBIND") != 0
		st.V6Only = geti(unix.SOL_IPV6, unix.IPV6_V6ONLY, "IPV6_V6ONLY") != 0
		if geti(unix.SOL_IPV6, unix.IPV6_TRANSPARENT, "IPV6_TRANSPARENT") != 0 {
			return errors.New("IPV6_TRANSPARENT is set: not supported yet")
		}
		if tc := geti(unix.SOL_IPV6, unix.IPV6_TCLASS, "IPV6_TCLASS"); tc != 0 {
			return fmt.Errorf("IPV6_TCLASS is %d: not supported yet", tc)
		}
		o.Pktinfo = geti(unix.SOL_IPV6, unix.IPV6_RECVPKTINFO, "IPV6_RECVPKTINFO") != 0
		// The image has one pktinfo field, the family's: a v6 socket
		// asking for IPv4 packet info too cannot be carried.
		if geti(unix.SOL_IP, unix.IP_PKTINFO, "IP_PKTINFO") != 0 {
			return errors.New("IP_PKTINFO is set on an IPv6 socket: not supported yet")
		}
	}
	if err != nil {
		return err
	}
	// The byte-string options first: IP_OPTIONS also changes a closed
	// socket's TCP_MAXSEG (its mss_cache), which refuseOpts compares.
	if err := refuseBufs(s, st); err != nil {
		return err
	}
	if err := refuseOpts(id, s, st, dg); err != nil {
		return err
	}
	if err := refuseMemberships(id, s, st); err != nil {
		return err
	}
	if diagUsable(dg, st) && dg.Ifindex == 0 {
		// sock_diag's idiag_if is sk_bound_dev_if: none bound.
		st.BindDev = ""
	} else if dev, derr := unix.GetsockoptString(s, unix.SOL_SOCKET, unix.SO_BINDTODEVICE); derr == nil {
		st.BindDev = dev
	} else {
		return fmt.Errorf("getsockopt SO_BINDTODEVICE: %w", derr)
	}
	l, lerr := unix.GetsockoptLinger(s, unix.SOL_SOCKET, unix.SO_LINGER)
	if lerr != nil {
		return fmt.Errorf("getsockopt SO_LINGER: %w", lerr)
	}
	o.LingerOn, o.Linger = l.Onoff != 0, uint32(l.Linger)
	if st.Type != unix.SOCK_STREAM {
		return nil
	}
	tcp := unix.IPPROTO_TCP
	if st.Proto == unix.IPPROTO_MPTCP {
		// An MPTCP socket answers the TCP options it supports at
		// SOL_TCP too.
		tcp = unix.SOL_TCP
	}
	o.NoDelay = geti(tcp, unix.TCP_NODELAY, "TCP_NODELAY") != 0
	o.Cork = geti(tcp, unix.TCP_CORK, "TCP_CORK") != 0
	o.KeepIdle = uint32(geti(tcp, unix.TCP_KEEPIDLE, "TCP_KEEPIDLE"))
	o.KeepIntvl = uint32(geti(tcp, unix.TCP_KEEPINTVL, "TCP_KEEPINTVL"))
	o.KeepCnt = uint32(geti(tcp, unix.TCP_KEEPCNT, "TCP_KEEPCNT"))
	if st.Proto == unix.IPPROTO_TCP {
		if ut := geti(tcp, unix.TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT"); ut != 0 && err == nil {
			return fmt.Errorf("TCP_USER_TIMEOUT is %d: not supported yet", ut)
		}
	}
	return err
}

func (inetKind) collect(fl *Files, pid int, fd *FD, f *model.File) error {
	s, err := grabFD(pid, fd.Num)
	if err != nil {
		return err
	}
	defer unix.Close(s)
	dom, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return fmt.Errorf("SO_DOMAIN: %w", err)
	}
	return collectInet(fl, pid, fd, f, s, dom)
}

func (inetKind) open(rs *restoreFDs, what string, f *model.File) (uint64, error) {
	st := f.Inet
	if st == nil {
		return 0, fmt.Errorf("%s: inet socket without its state", what)
	}
	what = fmt.Sprintf("%s: %s", what, describe(st))
	s, ok := rs.socks[st.Ino]
	if h := rs.r.Held; !ok && h != nil {
		// A listener made early, for a connection on its port.
		if s, ok = h.socks[st.Ino]; ok {
			delete(h.socks, st.Ino)
			rs.socks[st.Ino] = s
		}
	}
	if !ok {
		var err error
		if s, err = makeInet(rs, st); err != nil {
			return 0, fmt.Errorf("%s: %w", what, err)
		}
		rs.socks[st.Ino] = s
	}
	if _, err := unix.FcntlInt(uintptr(s), unix.F_SETFL, int(f.Flags&unix.O_NONBLOCK)); err != nil {
		return 0, fmt.Errorf("%s: F_SETFL: %w", what, err)
	}
	return rs.install(what, s)
}

// makeInet makes the socket of st in godwit.
func makeInet(rs *restoreFDs, st *model.InetSocketState) (int, error) {
	if rawOrPing(st) {
		return newRaw(st)
	}
	connected := st.Type == unix.SOCK_STREAM && st.State != tcprepair.StateClose && st.State != tcprepair.StateListen
	if connected && rs.r.TCPClose {
		// --tcp-close: a closed socket, with its options.
		return newInet(st, false)
	}
	if connected {
		if st.Stream == nil {
			return -1, fmt.Errorf("established connection (%s) dumped without --tcp-established", tcprepair.StateName(uint8(st.State)))
		}
		if !rs.r.TCPEstablished {
			return -1, errors.New("established connection: restore with --tcp-established")
		}
		if err := listenersFirst(rs, st); err != nil {
			return -1, err
		}
		return restoreConn(st)
	}
	return newInet(st, true)
}

// restoreConn rebuilds the established connection st in godwit (its
// listeners made first: listenersFirst). It touches nothing shared, so
// several run at once (premakeConns).
func restoreConn(st *model.InetSocketState) (int, error) { return restoreConnWith(st, nil) }

// restoreConnWith is restoreConn comparing the options with fresh (nil:
// with the socket's own values, read one by one).
func restoreConnWith(st *model.InetSocketState, fresh *freshInts) (int, error) {
	ms := st.Stream
	rst := &tcprepair.Stream{
		State: uint8(st.State), InSeq: ms.InSeq, OutSeq: ms.OutSeq, InQ: ms.InQ, OutQ: ms.OutQ, Unsent: ms.Unsent,
		Options: ms.OptMask, SndWscale: ms.SndWscale, RcvWscale: ms.RcvWscale, MSSClamp: ms.MSSClamp, Timestamp: ms.Timestamp,
	}
	if ms.HasWindow {
		rst.Window = &tcprepair.Window{SndWl1: ms.SndWl1, SndWnd: ms.SndWnd, MaxWindow: ms.MaxWnd, RcvWnd: ms.RcvWnd, RcvWup: ms.RcvWup}
	}
	s, err := tcprepair.Restore(int(st.Family), int(st.Proto), sockaddr(st.Family, st.Src), sockaddr(st.Family, st.Dst), rst,
		func(s int) error { return setInetOptsWith(s, st, false, true, fresh) })
	if err != nil {
		return -1, notLocal(st, err)
	}
	// Repair mode bound it whatever held the port; SO_REUSEADDR
	// as the task had it (leaving repair cleared it).
	if err := setInetOptsWith(s, st, true, false, fresh); err != nil {
		unix.Close(s)
		return -1, err
	}
	if extra := st.Shutdown &^ impliedShutdown(uint8(st.State)); extra&1 != 0 {
		if err := unix.Shutdown(s, unix.SHUT_RD); err != nil {
			unix.Close(s)
			return -1, fmt.Errorf("shutdown(SHUT_RD): %w", err)
		}
	}
	return s, nil
}

// premakeConns rebuilds this task's established connections before its
// fds are placed, on as many goroutines as Go runs threads: a connection
// costs some twenty repair calls, all in godwit, none dependent on
// another once the listeners on their ports exist (made first, in
// order). The sockets wait in rs.socks for inetKind.open to hand them
// over in SCM_RIGHTS batches. On error every socket made is closed (in
// repair mode or not yet connected: silently).
func (rs *restoreFDs) premakeConns() error {
	r := rs.r
	if !r.TCPEstablished || r.TCPClose || len(r.Inherit) != 0 {
		// Refused or closed one by one, as open does; with
		// --inherit-fd a connection may be replaced by the caller's.
		return nil
	}
	var todo []*model.InetSocketState
	var whats []string
	seen := map[uint32]bool{}
	for _, e := range r.Task.FDs {
		f := r.Tree.Files[e.File]
		if f == nil || f.Kind != model.InetSocket || f.Inet == nil || len(f.Locks) != 0 {
			continue
		}
		st := f.Inet
		connected := st.Type == unix.SOCK_STREAM && st.State != tcprepair.StateClose && st.State != tcprepair.StateListen
		if !connected || st.Stream == nil || seen[st.Ino] {
			continue
		}
		if at, ok := r.Opened[e.File]; ok && at.Pid != r.Task.Pid {
			continue // the description is another task's
		}
		if _, ok := rs.socks[st.Ino]; ok {
			continue
		}
		seen[st.Ino] = true
		what := fmt.Sprintf("fd %d: %s", e.Num, describe(st))
		if err := listenersFirst(rs, st); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		todo = append(todo, st)
		whats = append(whats, what)
	}
	if len(todo) < 2 {
		return nil
	}
	made := make([]int, len(todo))
	errs := make([]error, len(todo))
	fresh := newFreshSet()
	defer fresh.close()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(todo)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(todo) {
					return
				}
				made[i], errs[i] = restoreConnWith(todo[i], fresh.of(todo[i]))
			}
		}()
	}
	wg.Wait()
	var err error
	for i, st := range todo {
		if errs[i] != nil {
			if err == nil {
				err = fmt.Errorf("%s: %w", whats[i], errs[i])
			}
			continue
		}
		rs.socks[st.Ino] = made[i]
	}
	return err
}

// notLocal names the address when the kernel refused it as not local.
func notLocal(st *model.InetSocketState, err error) error {
	if !errors.Is(err, unix.EADDRNOTAVAIL) {
		return err
	}
	if st.Type == unix.SOCK_STREAM && st.State != tcprepair.StateListen && st.State != tcprepair.StateClose {
		return fmt.Errorf("address %s is not local here (--tcp-close restores the connection closed)", st.Src.Addr())
	}
	return fmt.Errorf("address %s is not local here", st.Src.Addr())
}

// newInet makes an unconnected TCP socket (unbound, bound or listening)
// or a UDP socket (bound, connected); bind false: only the socket and
// its options (--tcp-close).
func newInet(st *model.InetSocketState, bind bool) (int, error) {
	s, err := unix.Socket(int(st.Family), int(st.Type)|unix.SOCK_CLOEXEC, int(st.Proto))
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			unix.Close(s)
		}
	}()
	if err := setInetOpts(s, st, false, false); err != nil {
		return -1, err
	}
	bound := st.Src.Port() != 0 || (st.Src.IsValid() && !st.Src.Addr().IsUnspecified())
	if bind && bound {
		if err := unix.Bind(s, sockaddr(st.Family, st.Src)); err != nil {
			return -1, notLocal(st, fmt.Errorf("bind: %w", err))
		}
	}
	if bind && st.Type == unix.SOCK_STREAM && st.State == tcprepair.StateListen {
		if err := unix.Listen(s, int(st.Backlog)); err != nil {
			return -1, fmt.Errorf("listen: %w", err)
		}
	}
	if bind && st.Type == unix.SOCK_DGRAM && st.State == tcprepair.StateEstablished {
		if err := unix.Connect(s, sockaddr(st.Family, st.Dst)); err != nil {
			return -1, fmt.Errorf("connect: %w", err)
		}
	}
	ok = true
	return s, nil
}

// listenersFirst makes, before a connection on their port, the tree's
// listeners on that port not made yet: a listener binds only where no
// connection without SO_REUSEADDR holds its port, as when the task made
// it, while a connection in repair mode binds anywhere.
func listenersFirst(rs *restoreFDs, c *model.InetSocketState) error {
	if rs.listeners == nil {
		// The tree's listeners by port, once per task (not a pass over
		// every file per connection).
		rs.listeners = map[uint16][]model.ID{}
		for id, f := range rs.r.Tree.Files {
			if l := f.Inet; l != nil && l.State == tcprepair.StateListen {
				rs.listeners[l.Src.Port()] = append(rs.listeners[l.Src.Port()], id)
			}
		}
		rs.mine = map[model.ID]bool{}
		for _, e := range rs.r.Task.FDs {
			rs.mine[e.File] = true
		}
	}
	for _, id := range rs.listeners[c.Src.Port()] {
		l := rs.r.Tree.Files[id].Inet
		if l.Family != c.Family {
			continue
		}
		if _, ok := rs.socks[l.Ino]; ok {
			continue
		}
		if h := rs.r.Held; h != nil {
			if _, ok := h.socks[l.Ino]; ok {
				continue
			}
		}
		if at, ok := rs.r.Opened[id]; ok && at.Pid != rs.r.Task.Pid {
			continue // made in a task restored before
		}
		s, err := newInet(l, true)
		if err != nil {
			return fmt.Errorf("its listener %s: %w", describe(l), err)
		}
		if rs.mine[id] || rs.r.Held == nil {
			rs.socks[l.Ino] = s
		} else {
			rs.r.Held.socks[l.Ino] = s
		}
	}
	return nil
}

// uncarried are the integer options the image has no field for: a socket
// where one differs from a fresh socket's value (the kernel's default in
// this network namespace) is refused by name rather than restored
// without it.
// An IPv6 socket answers the IPv4 options too (they act on its
// v4-mapped traffic), except a raw one, which has none (both then
// unsupported: skipped).
var uncarried = map[uint32][]sockOpt{
	unix.AF_INET:  append(append([]sockOpt(nil), sockUncarried...), ipUncarried...),
	unix.AF_INET6: append(append(append([]sockOpt(nil), sockUncarried...), ipUncarried...), ipv6Uncarried...),
}

// sockUncarried: the socket-level options neither CRIU's sk_opts_entry
// nor godwit's model carries. SO_INCOMING_CPU is not among them: the
// kernel itself sets it as packets arrive.
var sockUncarried = []sockOpt{
	{unix.SOL_SOCKET, unix.SO_DONTROUTE, 0, "SO_DONTROUTE"},
	{unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 0, "SO_TIMESTAMPNS"},
	{unix.SOL_SOCKET, unix.SO_TIMESTAMPING, 0, "SO_TIMESTAMPING"},
	{unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 0, "SO_RXQ_OVFL"},
	{unix.SOL_SOCKET, unix.SO_WIFI_STATUS, 0, "SO_WIFI_STATUS"},
	{unix.SOL_SOCKET, unix.SO_SELECT_ERR_QUEUE, 0, "SO_SELECT_ERR_QUEUE"},
	{unix.SOL_SOCKET, unix.SO_BUSY_POLL, 0, "SO_BUSY_POLL"},
	{unix.SOL_SOCKET, unix.SO_ZEROCOPY, 0, "SO_ZEROCOPY"},
	{unix.SOL_SOCKET, unix.SO_NOFCS, 0, "SO_NOFCS"},
	{unix.SOL_SOCKET, unix.SO_LOCK_FILTER, 0, "SO_LOCK_FILTER"},
	{unix.SOL_SOCKET, unix.SO_RCVMARK, 0, "SO_RCVMARK"},
	{unix.SOL_SOCKET, unix.SO_DEBUG, 0, "SO_DEBUG"},
	{unix.SOL_SOCKET, unix.SO_NO_CHECK, 0, "SO_NO_CHECK"},
	{unix.SOL_SOCKET, unix.SO_PEEK_OFF, 0, "SO_PEEK_OFF"},
	{unix.SOL_SOCKET, unix.SO_MAX_PACING_RATE, 0, "SO_MAX_PACING_RATE"},
	{unix.SOL_SOCKET, unix.SO_PREFER_BUSY_POLL, 0, "SO_PREFER_BUSY_POLL"},
	{unix.SOL_SOCKET, unix.SO_RESERVE_MEM, 0, "SO_RESERVE_MEM"},
	{unix.SOL_SOCKET, unix.SO_TXREHASH, 0, "SO_TXREHASH"},
	{unix.SOL_SOCKET, unix.SO_RCVPRIORITY, 0, "SO_RCVPRIORITY"},
	{unix.SOL_SOCKET, unix.SO_TIMESTAMP_NEW, 0, "SO_TIMESTAMP_NEW"},
	{unix.SOL_SOCKET, unix.SO_TIMESTAMPNS_NEW, 0, "SO_TIMESTAMPNS_NEW"},
	{unix.SOL_SOCKET, unix.SO_TIMESTAMPING_NEW, 0, "SO_TIMESTAMPING_NEW"},
	// Read as an int: the clock id of struct sock_txtime. A socket set
	// to CLOCK_REALTIME (0) without flags looks unset.
	{unix.SOL_SOCKET, unix.SO_TXTIME, 0, "SO_TXTIME"},
}

// ipUncarried: the IPv4 options CRIU's ip_opts_entry has no field for
// (it has freebind, pktinfo, tos, ttl and the raw ones).
var ipUncarried = []sockOpt{
	{unix.SOL_IP, unix.IP_RECVERR, 0, "IP_RECVERR"},
	{unix.SOL_IP, unix.IP_MTU_DISCOVER, 0, "IP_MTU_DISCOVER"},
	{unix.SOL_IP, unix.IP_RECVTTL, 0, "IP_RECVTTL"},
	{unix.SOL_IP, unix.IP_RECVTOS, 0, "IP_RECVTOS"},
	{unix.SOL_IP, unix.IP_RECVOPTS, 0, "IP_RECVOPTS"},
	{unix.SOL_IP, unix.IP_RETOPTS, 0, "IP_RETOPTS"},
	{unix.SOL_IP, unix.IP_RECVORIGDSTADDR, 0, "IP_RECVORIGDSTADDR"},
	{unix.SOL_IP, unix.IP_RECVFRAGSIZE, 0, "IP_RECVFRAGSIZE"},
	{unix.SOL_IP, unix.IP_PASSSEC, 0, "IP_PASSSEC"},
	{unix.SOL_IP, unix.IP_MINTTL, 0, "IP_MINTTL"},
	{unix.SOL_IP, unix.IP_MULTICAST_ALL, 0, "IP_MULTICAST_ALL"},
	{unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 0, "IP_BIND_ADDRESS_NO_PORT"},
	{unix.SOL_IP, unix.IP_ROUTER_ALERT, 0, "IP_ROUTER_ALERT"},
	{unix.SOL_IP, unix.IP_RECVERR_RFC4884, 0, "IP_RECVERR_RFC4884"},
	{unix.SOL_IP, unix.IP_UNICAST_IF, 0, "IP_UNICAST_IF"},
	{unix.SOL_IP, unix.IP_LOCAL_PORT_RANGE, 0, "IP_LOCAL_PORT_RANGE"},
}

// ipv6Uncarried: the IPv6 options no image field carries.
var ipv6Uncarried = []sockOpt{
	{unix.SOL_IPV6, unix.IPV6_RECVERR, 0, "IPV6_RECVERR"},
	{unix.SOL_IPV6, unix.IPV6_MTU_DISCOVER, 0, "IPV6_MTU_DISCOVER"},
	{unix.SOL_IPV6, unix.IPV6_UNICAST_HOPS, 0, "IPV6_UNICAST_HOPS"},
	{unix.SOL_IPV6, unix.IPV6_RECVHOPLIMIT, 0, "IPV6_RECVHOPLIMIT"},
	{unix.SOL_IPV6, unix.IPV6_RECVTCLASS, 0, "IPV6_RECVTCLASS"},
	{unix.SOL_IPV6, unix.IPV6_RECVRTHDR, 0, "IPV6_RECVRTHDR"},
	{unix.SOL_IPV6, unix.IPV6_RECVHOPOPTS, 0, "IPV6_RECVHOPOPTS"},
	{unix.SOL_IPV6, unix.IPV6_RECVDSTOPTS, 0, "IPV6_RECVDSTOPTS"},
	{unix.SOL_IPV6, unix.IPV6_RECVORIGDSTADDR, 0, "IPV6_RECVORIGDSTADDR"},
	{unix.SOL_IPV6, unix.IPV6_RECVPATHMTU, 0, "IPV6_RECVPATHMTU"},
	{unix.SOL_IPV6, unix.IPV6_RECVFRAGSIZE, 0, "IPV6_RECVFRAGSIZE"},
	{unix.SOL_IPV6, unix.IPV6_MINHOPCOUNT, 0, "IPV6_MINHOPCOUNT"},
	{unix.SOL_IPV6, unix.IPV6_MULTICAST_ALL, 0, "IPV6_MULTICAST_ALL"},
	{unix.SOL_IPV6, unix.IPV6_DONTFRAG, 0, "IPV6_DONTFRAG"},
	{unix.SOL_IPV6, unix.IPV6_AUTOFLOWLABEL, 0, "IPV6_AUTOFLOWLABEL"},
	{unix.SOL_IPV6, ipv6FlowInfo, 0, "IPV6_FLOWINFO"},
	{unix.SOL_IPV6, ipv6FlowInfoSend, 0, "IPV6_FLOWINFO_SEND"},
	{unix.SOL_IPV6, unix.IPV6_ADDR_PREFERENCES, 0, "IPV6_ADDR_PREFERENCES"},
	{unix.SOL_IPV6, unix.IPV6_2292PKTINFO, 0, "IPV6_2292PKTINFO"},
	{unix.SOL_IPV6, unix.IPV6_2292HOPOPTS, 0, "IPV6_2292HOPOPTS"},
	{unix.SOL_IPV6, unix.IPV6_2292DSTOPTS, 0, "IPV6_2292DSTOPTS"},
	{unix.SOL_IPV6, unix.IPV6_2292RTHDR, 0, "IPV6_2292RTHDR"},
	{unix.SOL_IPV6, unix.IPV6_2292HOPLIMIT, 0, "IPV6_2292HOPLIMIT"},
	{unix.SOL_IPV6, unix.IPV6_ROUTER_ALERT, 0, "IPV6_ROUTER_ALERT"},
	{unix.SOL_IPV6, unix.IPV6_ROUTER_ALERT_ISOLATE, 0, "IPV6_ROUTER_ALERT_ISOLATE"},
	{unix.SOL_IPV6, unix.IPV6_RECVERR_RFC4884, 0, "IPV6_RECVERR_RFC4884"},
	{unix.SOL_IPV6, unix.IPV6_UNICAST_IF, 0, "IPV6_UNICAST_IF"},
}

// IPV6_FLOWINFO and IPV6_FLOWINFO_SEND, from include/uapi/linux/in6.h
// (not in x/sys/unix).
const (
	ipv6FlowInfo     = 11
	ipv6FlowInfoSend = 33
)

// uncarriedBufs: options whose value is a byte string (none when
// empty): IPv4 options and IPv6 sticky extension headers a socket sends.
var uncarriedBufs = []sockOpt{
	{unix.SOL_IP, unix.IP_OPTIONS, unix.AF_INET, "IP_OPTIONS"},
	{unix.SOL_IPV6, unix.IPV6_HOPOPTS, unix.AF_INET6, "IPV6_HOPOPTS"},
	{unix.SOL_IPV6, unix.IPV6_RTHDR, unix.AF_INET6, "IPV6_RTHDR"},
	{unix.SOL_IPV6, unix.IPV6_RTHDRDSTOPTS, unix.AF_INET6, "IPV6_RTHDRDSTOPTS"},
	{unix.SOL_IPV6, unix.IPV6_DSTOPTS, unix.AF_INET6, "IPV6_DSTOPTS"},
}

// refuseBufs refuses s when one of uncarriedBufs is set (v: the family
// that has it; an IPv6 socket has IP_OPTIONS too, but a raw one not).
func refuseBufs(s int, st *model.InetSocketState) error {
	for _, o := range uncarriedBufs {
		if o.v == unix.AF_INET6 && st.Family != unix.AF_INET6 {
			continue
		}
		v, err := unix.GetsockoptString(s, o.level, o.opt)
		if err != nil {
			if unsupportedOpt(err) {
				continue
			}
			return fmt.Errorf("getsockopt %s: %w", o.name, err)
		}
		if v != "" {
			return fmt.Errorf("%s is set (%d bytes): not supported yet", o.name, len(v))
		}
	}
	return nil
}

// mcastUncarried: as uncarried, the multicast options, of datagram
// sockets only: TCP sends no multicast, and the kernel fills them in on
// an accepted connection from its SYN (interface, TTL).
var mcastUncarried = map[uint32][]sockOpt{
	unix.AF_INET: {
		{unix.SOL_IP, unix.IP_MULTICAST_IF, 0, "IP_MULTICAST_IF"},
		{unix.SOL_IP, unix.IP_MULTICAST_TTL, 0, "IP_MULTICAST_TTL"},
		{unix.SOL_IP, unix.IP_MULTICAST_LOOP, 0, "IP_MULTICAST_LOOP"},
	},
	unix.AF_INET6: {
		// An IPv6 socket's v4-mapped multicast uses the IPv4 ones.
		{unix.SOL_IP, unix.IP_MULTICAST_IF, 0, "IP_MULTICAST_IF"},
		{unix.SOL_IP, unix.IP_MULTICAST_TTL, 0, "IP_MULTICAST_TTL"},
		{unix.SOL_IP, unix.IP_MULTICAST_LOOP, 0, "IP_MULTICAST_LOOP"},
		{unix.SOL_IPV6, unix.IPV6_MULTICAST_IF, 0, "IPV6_MULTICAST_IF"},
		{unix.SOL_IPV6, unix.IPV6_MULTICAST_HOPS, 0, "IPV6_MULTICAST_HOPS"},
		{unix.SOL_IPV6, unix.IPV6_MULTICAST_LOOP, 0, "IPV6_MULTICAST_LOOP"},
	},
}

// tcpUncarried: as uncarried, the TCP options.
var tcpUncarried = []sockOpt{
	{unix.SOL_TCP, unix.TCP_DEFER_ACCEPT, 0, "TCP_DEFER_ACCEPT"},
	{unix.SOL_TCP, unix.TCP_NOTSENT_LOWAT, 0, "TCP_NOTSENT_LOWAT"},
	{unix.SOL_TCP, unix.TCP_FASTOPEN, 0, "TCP_FASTOPEN"},
	{unix.SOL_TCP, unix.TCP_SYNCNT, 0, "TCP_SYNCNT"},
	{unix.SOL_TCP, unix.TCP_LINGER2, 0, "TCP_LINGER2"},
	{unix.SOL_TCP, unix.TCP_THIN_LINEAR_TIMEOUTS, 0, "TCP_THIN_LINEAR_TIMEOUTS"},
	{unix.SOL_TCP, unix.TCP_SAVE_SYN, 0, "TCP_SAVE_SYN"},
	{unix.SOL_TCP, unix.TCP_TX_DELAY, 0, "TCP_TX_DELAY"},
	{unix.SOL_TCP, unix.TCP_INQ, 0, "TCP_INQ"},
	{unix.SOL_TCP, unix.TCP_FASTOPEN_CONNECT, 0, "TCP_FASTOPEN_CONNECT"},
	{unix.SOL_TCP, unix.TCP_FASTOPEN_NO_COOKIE, 0, "TCP_FASTOPEN_NO_COOKIE"},
	{unix.SOL_TCP, unix.TCP_FASTOPEN_KEY, 0, "TCP_FASTOPEN_KEY"},
	// The first 4 bytes of the upper layer's name ("tls"): 0 for none.
	{unix.SOL_TCP, unix.TCP_ULP, 0, "TCP_ULP"},
	{unix.SOL_TCP, unix.TCP_RTO_MAX_MS, 0, "TCP_RTO_MAX_MS"},
	{unix.SOL_TCP, unix.TCP_RTO_MIN_US, 0, "TCP_RTO_MIN_US"},
	{unix.SOL_TCP, unix.TCP_DELACK_MAX_US, 0, "TCP_DELACK_MAX_US"},
	// Compared only before a connection (unconnectedOnly).
	{unix.SOL_TCP, unix.TCP_MAXSEG, 0, "TCP_MAXSEG"},
	{unix.SOL_TCP, unix.TCP_WINDOW_CLAMP, 0, "TCP_WINDOW_CLAMP"},
}

// unconnectedOnly: options read back as the user's value only on a
// socket not connected (closed or listening). A connection answers
// TCP_MAXSEG with its mss_cache and TCP_WINDOW_CLAMP with the clamp the
// kernel computed from its buffers, so a fresh socket's value says
// nothing there; the handshake's MSS clamp is in the stream (MSSClamp).
var unconnectedOnly = map[[2]int]bool{
	{unix.SOL_TCP, unix.TCP_MAXSEG}:       true,
	{unix.SOL_TCP, unix.TCP_WINDOW_CLAMP}: true,
}

// udpUncarried: as uncarried, the options of UDP and UDP-Lite sockets
// (include/uapi/linux/udp.h; UDP_CORK is refused by collectUDP). The
// UDP-Lite checksum coverage options answer on UDP too (0).
var udpUncarried = []sockOpt{
	{unix.SOL_UDP, udpliteSendCscov, 0, "UDPLITE_SEND_CSCOV"},
	{unix.SOL_UDP, udpliteRecvCscov, 0, "UDPLITE_RECV_CSCOV"},
	{unix.SOL_UDP, unix.UDP_ENCAP, 0, "UDP_ENCAP"},
	{unix.SOL_UDP, unix.UDP_NO_CHECK6_TX, 0, "UDP_NO_CHECK6_TX"},
	{unix.SOL_UDP, unix.UDP_NO_CHECK6_RX, 0, "UDP_NO_CHECK6_RX"},
	{unix.SOL_UDP, unix.UDP_SEGMENT, 0, "UDP_SEGMENT"},
	{unix.SOL_UDP, unix.UDP_GRO, 0, "UDP_GRO"},
	// A raw socket carries it (fd_raw.go); on others it is a cmsg flag.
	{unix.SOL_IP, unix.IP_CHECKSUM, 0, "IP_CHECKSUM"},
}

// UDPLITE_SEND_CSCOV and UDPLITE_RECV_CSCOV (include/uapi/linux/udp.h;
// not in x/sys/unix).
const (
	udpliteSendCscov = 10
	udpliteRecvCscov = 11
)

// freshOpts is what refuseOpts compares with: the values of a fresh
// socket of one family, type and protocol, measured once per dump (the
// defaults depend on sysctls: ip_no_pmtu_disc, tcp_congestion_control).
type freshOpts struct {
	opts []sockOpt // v: the fresh socket's value; skipped: unsupported
	cc   string    // TCP_CONGESTION; "" where the protocol has none
}

// fresh measures (once per dump) the options of a fresh socket like st.
func (d *inetDump) fresh(st *model.InetSocketState) (*freshOpts, error) {
	k := [3]uint32{st.Family, st.Type, st.Proto}
	d.mu.Lock()
	defer d.mu.Unlock()
	if f, ok := d.defaults[k]; ok {
		return f, nil
	}
	s, err := d.socketIn(int(st.Family), int(st.Type)|unix.SOCK_CLOEXEC, int(st.Proto))
	if err != nil {
		return nil, fmt.Errorf("fresh socket to compare options with: %w", err)
	}
	defer unix.Close(s)
	os := uncarried[st.Family]
	if st.Type == unix.SOCK_STREAM {
		os = append(os[:len(os):len(os)], tcpUncarried...)
	} else {
		os = append(os[:len(os):len(os)], mcastUncarried[st.Family]...)
	}
	if st.Type == unix.SOCK_DGRAM && (st.Proto == unix.IPPROTO_UDP || st.Proto == unix.IPPROTO_UDPLITE) {
		os = append(os[:len(os):len(os)], udpUncarried...)
	}
	if st.Type == unix.SOCK_RAW {
		os = append(os[:len(os):len(os)], rawUncarried[st.Family]...)
	}
	f := &freshOpts{}
	for _, o := range os {
		v, err := unix.GetsockoptInt(s, o.level, o.opt)
		if unsupportedOpt(err) {
			o.v = unsupportedValue
		} else if err != nil {
			return nil, fmt.Errorf("getsockopt %s of a fresh socket: %w", o.name, err)
		} else {
			o.v = v
		}
		if o.opt == unix.TCP_NOTSENT_LOWAT && o.level == unix.SOL_TCP && o.v != unsupportedValue {
			o.v = d.notsentLowat(o.v)
		}
		f.opts = append(f.opts, o)
	}
	if st.Type == unix.SOCK_STREAM {
		cc, err := unix.GetsockoptString(s, unix.SOL_TCP, unix.TCP_CONGESTION)
		if err != nil && !unsupportedOpt(err) {
			return nil, fmt.Errorf("getsockopt TCP_CONGESTION of a fresh socket: %w", err)
		}
		f.cc = cc
	}
	if d.defaults == nil {
		d.defaults = map[[3]uint32]*freshOpts{}
	}
	d.defaults[k] = f
	return f, nil
}

// impliedDefault: options (key) that cannot differ from 0 while the
// option given, compared before them, reads 0 (both 0 on a fresh
// socket), so the dump does not ask them then (net/core/sock.c,
// sk_getsockopt):
//   - SO_TIMESTAMPING_NEW answers sk_tsflags, or 0 unless SOCK_TSTAMP_NEW
//     is set, and SO_TIMESTAMPING(_OLD) always answers sk_tsflags;
//   - SO_TIMESTAMPNS_NEW is SOCK_RCVTSTAMPNS && SOCK_TSTAMP_NEW, and
//     SO_TIMESTAMP_NEW is SOCK_RCVTSTAMP && SOCK_TSTAMP_NEW, where
//     SOCK_RCVTSTAMPNS is only ever set with SOCK_RCVTSTAMP
//     (__sock_set_timestamps).
//
// TestInetOptsImplied checks each on the running kernel.
var impliedDefault = map[[2]int][2]int{
	{unix.SOL_SOCKET, unix.SO_TIMESTAMPING_NEW}: {unix.SOL_SOCKET, unix.SO_TIMESTAMPING},
	{unix.SOL_SOCKET, unix.SO_TIMESTAMPNS_NEW}:  {unix.SOL_SOCKET, unix.SO_TIMESTAMP_NEW},
}

// impliers are the options impliedDefault's rest on.
var impliers = func() map[[2]int]bool {
	m := map[[2]int]bool{}
	for _, by := range impliedDefault {
		m[by] = true
	}
	return m
}()

// unsupportedValue marks an option a fresh socket's protocol has not.
const unsupportedValue = -1 << 40

// refuseOpts refuses s when an option the image cannot carry differs
// from its value on a fresh socket of the same family, type and
// protocol (measured once per dump: inetDump.fresh).
func refuseOpts(id *inetDump, s int, st *model.InetSocketState, dg *sockdiag.Inet) error {
	fresh, err := id.fresh(st)
	if err != nil {
		return err
	}
	connected := st.State != tcprepair.StateClose && st.State != tcprepair.StateListen
	// atDefault: the options read so far that had a fresh socket's value.
	var atDefault [4][2]int
	nd := 0
	for _, o := range fresh.opts {
		if connected && unconnectedOnly[[2]int{o.level, o.opt}] {
			continue
		}
		if by, ok := impliedDefault[[2]int{o.level, o.opt}]; ok && o.v == 0 && slices.Contains(atDefault[:nd], by) {
			continue
		}
		v, ok := diagOpt(dg, st, o.level, o.opt)
		if ok && o.v == unsupportedValue {
			ok = false // as below: asked, and refused by its name
		}
		var err error
		if !ok {
			v, err = getsockoptInt(s, o.level, o.opt)
		}
		if err != nil {
			if unsupportedOpt(err) && o.v == unsupportedValue {
				continue // MPTCP has not this option
			}
			return fmt.Errorf("getsockopt %s: %w", o.name, err)
		}
		if o.v == unsupportedValue {
			return fmt.Errorf("getsockopt %s: a fresh socket has not this option", o.name)
		}
		if o.opt == unix.TCP_NOTSENT_LOWAT && o.level == unix.SOL_TCP {
			// 0 stands for the sysctl; what counts is the limit in
			// effect (a connection accepted by an MPTCP listener that
			// fell back to TCP has UINT_MAX set by the kernel).
			v = id.notsentLowat(v)
		}
		if v != o.v {
			return fmt.Errorf("%s is %d (default %d): not supported yet", o.name, v, o.v)
		}
		if _, ok := impliers[[2]int{o.level, o.opt}]; ok && v == 0 && nd < len(atDefault) {
			atDefault[nd] = [2]int{o.level, o.opt}
			nd++
		}
	}
	if st.Type != unix.SOCK_STREAM {
		return nil
	}
	if diagUsable(dg, st) && dg.Have&sockdiag.HaveCong != 0 && st.Proto == unix.IPPROTO_TCP {
		if dg.Cong != fresh.cc {
			return fmt.Errorf("TCP_CONGESTION is %s (default %s): not supported yet", dg.Cong, fresh.cc)
		}
		return nil
	}
	cc, err := unix.GetsockoptString(s, unix.SOL_TCP, unix.TCP_CONGESTION)
	switch {
	case err != nil:
		if unsupportedOpt(err) && fresh.cc == "" {
			return nil
		}
		return fmt.Errorf("getsockopt TCP_CONGESTION: %w", err)
	case cc != fresh.cc:
		return fmt.Errorf("TCP_CONGESTION is %s (default %s): not supported yet", cc, fresh.cc)
	}
	return nil
}

// notsentLowat is the TCP_NOTSENT_LOWAT in effect for value v: 0 means
// net.ipv4.tcp_notsent_lowat (include/net/tcp.h tcp_notsent_lowat()).
func (d *inetDump) notsentLowat(v int) int {
	if v != 0 {
		return int(int32(v))
	}
	if n, ok := d.notsentLowatSysctl(); ok {
		return n
	}
	return v
}

// readNotsentLowat reads net.ipv4.tcp_notsent_lowat of the calling
// thread's network namespace (inetDump.inNetns).
func readNotsentLowat() (int, bool) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_notsent_lowat")
	if err != nil {
		return 0, false
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
	if err != nil {
		return 0, false
	}
	return int(int32(uint32(n))), true
}

// setInetOpts gives s the dumped options. A socket in repair mode binds
// with the kernel's forced reuse, which SO_REUSEADDR would undo: it is
// set after (after), once the connection is made.
func setInetOpts(s int, st *model.InetSocketState, after, repair bool) error {
	return setInetOptsWith(s, st, after, repair, nil)
}

// setInetOptsWith is setInetOpts comparing each option with fresh's
// value (nil: with the socket's own, read first).
func setInetOptsWith(s int, st *model.InetSocketState, after, repair bool, fresh *freshInts) error {
	o := &st.Inet
	b := func(v bool) int {
		if v {
			return 1
		}
		return 0
	}
	type opt = sockOpt
	if after {
		// Leaving repair mode reset it: the socket's own value.
		return setInts(s, []opt{{unix.SOL_SOCKET, unix.SO_REUSEADDR, b(o.ReuseAddr), "SO_REUSEADDR"}})
	}
	if st.Family == unix.AF_INET {
		// IP_TOS sets the priority too: before SO_PRIORITY.
		if err := setIntsWith(s, []opt{{unix.SOL_IP, unix.IP_TOS, int(o.TOS), "IP_TOS"}}, fresh); err != nil {
			return err
		}
	}
	if err := setInetSocketOptsWith(s, &st.Opts, fresh); err != nil {
		return err
	}
	var os []opt
	if !repair {
		os = append(os, opt{unix.SOL_SOCKET, unix.SO_REUSEADDR, b(o.ReuseAddr), "SO_REUSEADDR"})
	}
	os = append(os, []opt{
		{unix.SOL_SOCKET, unix.SO_REUSEPORT, b(o.ReusePort), "SO_REUSEPORT"},
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, b(o.KeepAlive), "SO_KEEPALIVE"},
		{unix.SOL_SOCKET, unix.SO_BROADCAST, b(o.Broadcast), "SO_BROADCAST"},
		{unix.SOL_SOCKET, unix.SO_OOBINLINE, b(o.OOBInline), "SO_OOBINLINE"},
	}...)
	if st.Family == unix.AF_INET {
		os = append(os, opt{unix.SOL_IP, unix.IP_FREEBIND, b(o.Freebind), "IP_FREEBIND"},
			opt{unix.SOL_IP, unix.IP_PKTINFO, b(o.Pktinfo), "IP_PKTINFO"})
		if o.TTL != 0 {
			os = append(os, opt{unix.SOL_IP, unix.IP_TTL, int(o.TTL), "IP_TTL"})
		}
	} else {
		os = append(os, opt{unix.SOL_IPV6, unix.IPV6_FREEBIND, b(o.Freebind), "IPV6_FREEBIND"}, opt{unix.SOL_IPV6, unix.IPV6_V6ONLY, b(st.V6Only), "IPV6_V6ONLY"},
			opt{unix.SOL_IPV6, unix.IPV6_RECVPKTINFO, b(o.Pktinfo), "IPV6_RECVPKTINFO"})
	}
	if st.Type == unix.SOCK_STREAM {
		os = append(os, opt{unix.SOL_TCP, unix.TCP_NODELAY, b(o.NoDelay), "TCP_NODELAY"},
			opt{unix.SOL_TCP, unix.TCP_CORK, b(o.Cork), "TCP_CORK"})
		for _, k := range []struct {
			opt  int
			v    uint32
			name string
		}{{unix.TCP_KEEPIDLE, o.KeepIdle, "TCP_KEEPIDLE"}, {unix.TCP_KEEPINTVL, o.KeepIntvl, "TCP_KEEPINTVL"}, {unix.TCP_KEEPCNT, o.KeepCnt, "TCP_KEEPCNT"}} {
			if k.v != 0 {
				os = append(os, opt{unix.SOL_TCP, k.opt, int(k.v), k.name})
			}
		}
	}
	if err := setIntsWith(s, os, fresh); err != nil {
		return err
	}
	if st.BindDev != "" {
		if err := unix.SetsockoptString(s, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, st.BindDev); err != nil {
			return fmt.Errorf("SO_BINDTODEVICE %s: %w", st.BindDev, err)
		}
	}
	if o.LingerOn {
		if err := unix.SetsockoptLinger(s, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: int32(o.Linger)}); err != nil {
			return fmt.Errorf("SO_LINGER: %w", err)
		}
	}
	return nil
}

// unsupportedOpt: the socket's protocol has no such option.
func unsupportedOpt(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOPROTOOPT)
}

// sockOpt is an integer socket option to set.
type sockOpt struct {
	level, opt, v int
	name          string
}

func setInts(s int, os []sockOpt) error { return setIntsWith(s, os, nil) }

// setIntsWith is setInts comparing with fresh's values (nil: the
// socket's own).
func setIntsWith(s int, os []sockOpt, fresh *freshInts) error {
	for _, o := range os {
		cur, err := fresh.get(s, o.level, o.opt)
		if err == nil && cur == o.v || o.v == 0 && unsupportedOpt(err) {
			continue // as wanted, or an option MPTCP has not
		}
		if err := unix.SetsockoptInt(s, o.level, o.opt, o.v); err != nil {
			return fmt.Errorf("setsockopt %s %d: %w", o.name, o.v, err)
		}
	}
	return nil
}

// inetSocketOpts reads the socket-level options of an inet socket
// (SO_PASSCRED and SO_PASSSEC are unix and netlink options: an inet
// socket answers EOPNOTSUPP).
func inetSocketOpts(s int) (model.SocketOpts, error) { return inetSocketOptsDiag(s, nil, nil) }

// inetSocketOptsDiag is inetSocketOpts taking what sock_diag told of s
// (dg, nil if nothing; st: the socket) instead of asking s.
func inetSocketOptsDiag(s int, st *model.InetSocketState, dg *sockdiag.Inet) (model.SocketOpts, error) {
	var o model.SocketOpts
	var err error
	geti := func(opt int, what string) uint32 {
		if err != nil {
			return 0
		}
		if v, ok := diagOpt(dg, st, unix.SOL_SOCKET, opt); ok {
			return uint32(v)
		}
		var v int
		if v, err = getsockoptInt(s, unix.SOL_SOCKET, opt); err != nil {
			err = fmt.Errorf("getsockopt %s: %w", what, err)
		}
		return uint32(v)
	}
	o.SndBuf = geti(unix.SO_SNDBUF, "SO_SNDBUF")
	o.RcvBuf = geti(unix.SO_RCVBUF, "SO_RCVBUF")
	o.Priority = geti(unix.SO_PRIORITY, "SO_PRIORITY")
	o.RcvLowat = geti(unix.SO_RCVLOWAT, "SO_RCVLOWAT")
	o.Mark = geti(unix.SO_MARK, "SO_MARK")
	if err != nil {
		return o, err
	}
	if off, err := getsockoptInt(s, unix.SOL_SOCKET, unix.SO_PEEK_OFF); err == nil && off != -1 {
		return o, fmt.Errorf("SO_PEEK_OFF is set (%d): not supported yet", off)
	}
	if err := socketTimeouts(s, &o); err != nil {
		return o, err
	}
	o.Filter, err = readSockFilter(s)
	return o, err
}

// setInetSocketOptsWith gives s the dumped socket-level options; buffer
// sizes only where they differ from a new socket's (setting one locks it
// against autotuning).
// Values are compared with fresh's (nil: the socket's own).
func setInetSocketOptsWith(s int, o *model.SocketOpts, fresh *freshInts) error {
	if o.PassCred || o.PassSec {
		return errors.New("SO_PASSCRED or SO_PASSSEC on an inet socket")
	}
	for _, b := range []struct {
		get, set int
		v        uint32
		what     string
	}{{unix.SO_SNDBUF, unix.SO_SNDBUFFORCE, o.SndBuf, "SO_SNDBUF"}, {unix.SO_RCVBUF, unix.SO_RCVBUFFORCE, o.RcvBuf, "SO_RCVBUF"}} {
		cur, err := fresh.get(s, unix.SOL_SOCKET, b.get)
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
	// IP_TOS, set before, sets the priority too: the socket's own.
	if err := setInts(s, []sockOpt{{unix.SOL_SOCKET, unix.SO_PRIORITY, int(o.Priority), "SO_PRIORITY"}}); err != nil {
		return err
	}
	if err := setIntsWith(s, []sockOpt{
		{unix.SOL_SOCKET, unix.SO_RCVLOWAT, int(o.RcvLowat), "SO_RCVLOWAT"},
		{unix.SOL_SOCKET, unix.SO_MARK, int(o.Mark), "SO_MARK"},
	}, fresh); err != nil {
		return err
	}
	for _, t := range []struct {
		opt      int
		sec, use uint64
	}{{unix.SO_SNDTIMEO, o.SndTimeoSec, o.SndTimeoUsec}, {unix.SO_RCVTIMEO, o.RcvTimeoSec, o.RcvTimeoUsec}} {
		if t.sec == 0 && t.use == 0 {
			continue
		}
		tv := unix.Timeval{Sec: int64(t.sec), Usec: int64(t.use)}
		if err := unix.SetsockoptTimeval(s, unix.SOL_SOCKET, t.opt, &tv); err != nil {
			return fmt.Errorf("setsockopt timeout: %w", err)
		}
	}
	return attachSockFilter(s, o.Filter)
}

// preInet is an inet socket collected ahead of fdTable's loop.
type preInet struct {
	file model.File // Kind, Path and Inet, as collectInet sets them
	err  error
}

// prefetchMin: fewer inet sockets than this are collected in fdTable's
// loop, one by one.
const prefetchMin = 16

// prefetchInet collects, on two goroutines, the sockets among fds that
// fdTable's loop would collect itself (want), when they are many: each
// costs some fifty calls (options, repair-mode reads) of its own, none
// dependent on another's. Each result waits in the dump's inetDump for
// unixKind.collect (prefetched) to take it, so errors come in fd order
// as before; a socket that is not inet is left to the loop. Connections
// put in repair mode here are in inetDump.repaired whatever the loop
// does next, so a failed dump takes them out again (ReleaseRepaired).
func (fl *Files) prefetchInet(pid int, fds []FD, want func(i int) bool) {
	var todo []int
	for i := range fds {
		if fds[i].Stat.Mode&unix.S_IFMT == unix.S_IFSOCK && want(i) {
			todo = append(todo, i)
		}
	}
	id := fl.inetState()
	id.pre = nil
	if len(todo) < prefetchMin {
		return
	}
	pfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return // the loop reports it, fd by fd
	}
	defer unix.Close(pfd)
	pre := make([]*preInet, len(todo))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := int(next.Add(1) - 1)
				if k >= len(todo) {
					return
				}
				pre[k] = prefetchOne(fl, pid, pfd, &fds[todo[k]])
			}
		}()
	}
	wg.Wait()
	id.pre = make(map[int]*preInet, len(todo))
	for k, i := range todo {
		if pre[k] != nil {
			id.pre[fds[i].Num] = pre[k]
		}
	}
}

// prefetchOne collects fd if it is an inet socket (nil: it is not, or
// could not be taken: the loop tries again and reports).
func prefetchOne(fl *Files, pid, pfd int, fd *FD) *preInet {
	s, err := unix.PidfdGetfd(pfd, fd.Num, 0)
	if err != nil {
		return nil
	}
	// A connection keeps this copy (in repair mode) until the dump ends.
	took := false
	defer func() {
		if !took {
			unix.Close(s)
		}
	}()
	dom, err := getsockoptInt(s, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil || (dom != unix.AF_INET && dom != unix.AF_INET6) {
		return nil
	}
	p := &preInet{}
	p.err = collectInetTaking(fl, pid, fd, &p.file, s, dom, &took)
	return p
}

// prefetched hands f the socket prefetchInet collected for fd, if any.
func (fl *Files) prefetched(fd *FD, f *model.File) (bool, error) {
	if fl.inet == nil || fl.inet.pre == nil {
		return false, nil
	}
	p, ok := fl.inet.pre[fd.Num]
	if !ok {
		return false, nil
	}
	delete(fl.inet.pre, fd.Num)
	f.Kind, f.Path, f.Inet = p.file.Kind, p.file.Path, p.file.Inet
	return true, p.err
}

// freshInts are the integer options of a fresh socket of one family,
// type and protocol, each read once from a socket made for the purpose:
// a restore of thousands of connections compares each wanted value
// with them instead of reading every option of every socket before
// setting it (a socket is made with the defaults, so its own value is
// the fresh one until godwit sets it). Safe for concurrent use.
type freshInts struct {
	mu   sync.Mutex
	s    int
	vals map[[2]int]freshVal
}

type freshVal struct {
	v   int
	err error
}

// get is option (level, opt) of a fresh socket; with a nil f, that of s.
func (f *freshInts) get(s, level, opt int) (int, error) {
	if f == nil {
		return unix.GetsockoptInt(s, level, opt)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	k := [2]int{level, opt}
	if v, ok := f.vals[k]; ok {
		return v.v, v.err
	}
	v, err := unix.GetsockoptInt(f.s, level, opt)
	f.vals[k] = freshVal{v, err}
	return v, err
}

// freshSet makes the freshInts of each kind of socket a restore needs.
type freshSet struct {
	mu    sync.Mutex
	kinds map[[3]uint32]*freshInts
}

func newFreshSet() *freshSet { return &freshSet{kinds: map[[3]uint32]*freshInts{}} }

// of is the freshInts for sockets like st (nil if no fresh socket could
// be made: each socket's own values are read then).
func (fs *freshSet) of(st *model.InetSocketState) *freshInts {
	k := [3]uint32{st.Family, st.Type, st.Proto}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if f, ok := fs.kinds[k]; ok {
		return f
	}
	var f *freshInts
	if s, err := unix.Socket(int(st.Family), int(st.Type)|unix.SOCK_CLOEXEC, int(st.Proto)); err == nil {
		f = &freshInts{s: s, vals: map[[2]int]freshVal{}}
	}
	fs.kinds[k] = f
	return f
}

func (fs *freshSet) close() {
	for _, f := range fs.kinds {
		if f != nil {
			unix.Close(f.s)
		}
	}
}

// diagOpt is the integer option (level, opt) of the socket st as
// sock_diag told it in dg, when it did: the very field getsockopt
// reads (inet_diag_msg_attrs_fill, net/ipv4/inet_diag.c), taken from
// the dump's one table instead of a call per option and socket. Never
// for MPTCP (its getsockopt answers for itself, or not at all) nor raw
// sockets (another diag), nor for IPv6-level options (their flags live
// apart from inet's): those are asked.
func diagOpt(dg *sockdiag.Inet, st *model.InetSocketState, level, opt int) (int, bool) {
	if !diagUsable(dg, st) {
		return 0, false
	}
	bit := func(b uint16) (int, bool) {
		if dg.Have&sockdiag.HaveSockopt == 0 {
			return 0, false
		}
		if dg.Sockopt&b != 0 {
			return 1, true
		}
		return 0, true
	}
	switch level {
	case unix.SOL_SOCKET:
		switch opt {
		case unix.SO_SNDBUF:
			return int(dg.SndBuf), dg.Have&sockdiag.HaveBufs != 0
		case unix.SO_RCVBUF:
			return int(dg.RcvBuf), dg.Have&sockdiag.HaveBufs != 0
		case unix.SO_MARK:
			return int(dg.Mark), dg.Have&sockdiag.HaveMark != 0
		case unix.SO_PRIORITY:
			// INET_DIAG_CLASS_ID is the net_cls class id, or where
			// there is none sk_priority: only a 0 tells the priority.
			return 0, dg.Have&sockdiag.HaveClassID != 0 && dg.ClassID == 0
		}
	case unix.SOL_IP:
		switch opt {
		case unix.IP_TOS:
			return int(dg.TOS), dg.Have&sockdiag.HaveTOS != 0
		case unix.IP_FREEBIND:
			return bit(sockdiag.SockoptFreebind)
		case unix.IP_TRANSPARENT:
			return bit(sockdiag.SockoptTransparent)
		case unix.IP_RECVERR:
			return bit(sockdiag.SockoptRecverr)
		case unix.IP_MULTICAST_ALL:
			return bit(sockdiag.SockoptMcAll)
		case unix.IP_BIND_ADDRESS_NO_PORT:
			return bit(sockdiag.SockoptBindAddressNoPort)
		case unix.IP_RECVERR_RFC4884:
			return bit(sockdiag.SockoptRecverrRFC4884)
		}
	case unix.SOL_IPV6:
		if opt == unix.IPV6_TCLASS && st.Family == unix.AF_INET6 {
			return int(dg.TClass), dg.Have&sockdiag.HaveTClass != 0
		}
	}
	return 0, false
}

// diagUsable: dg is sock_diag's entry of the TCP or UDP socket st.
func diagUsable(dg *sockdiag.Inet, st *model.InetSocketState) bool {
	return dg != nil && st != nil && dg.Have != 0 && dg.Ino == st.Ino && dg.Family == uint8(st.Family) &&
		st.Type != unix.SOCK_RAW && (st.Proto == unix.IPPROTO_TCP || st.Proto == unix.IPPROTO_UDP || st.Proto == unix.IPPROTO_UDPLITE)
}

// getsockoptInt is unix.GetsockoptInt as a raw system call: the dump
// reads tens of options from each of thousands of sockets, none of
// which blocks, and the scheduler's bookkeeping around each call cost
// a sixth of it.
func getsockoptInt(s, level, opt int) (int, error) {
	var v int32
	l := uint32(4)
	if _, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(s), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&v)), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
		return 0, e
	}
	return int(v), nil
}
