package drivers

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
	"godwit/internal/tcprepair"
)

// ICMP ping sockets (SOCK_DGRAM with IPPROTO_ICMP or IPPROTO_ICMPV6,
// allowed by net.ipv4.ping_group_range) and raw sockets (SOCK_RAW with
// any protocol), AF_INET and AF_INET6: bound address (a ping socket's
// port is its echo identifier), connected peer, bound device, the inet
// options of every inet socket, and the raw options CRIU's
// ip_opts_raw_entry carries (IP_HDRINCL/IPV6_HDRINCL, IP_NODEFRAG,
// IP_CHECKSUM, ICMP_FILTER/ICMPV6_FILTER). The socket is remade in
// godwit, options first, then bound and connected, as the task made it.
//
// Refused, naming the socket: packets queued to be read or still being
// sent (their senders and routes cannot be restored: as for UDP), a
// receive side shut down (seen through poll, POLLRDHUP), a send side shut
// down (sendShutdown's probe), or any shutdown sock_diag reports
// (raw_diag, where the kernel has it; it has no handler for ping
// sockets), and options the image has no field for set away from a fresh
// socket's value (IPV6_CHECKSUM among them). sendShutdown says which
// send-side shutdowns it cannot see.

// isPing: an ICMP datagram ("ping") socket.
func isPing(typ, proto uint32) bool {
	return typ == unix.SOCK_DGRAM && (proto == unix.IPPROTO_ICMP || proto == unix.IPPROTO_ICMPV6)
}

// rawOrPing: a socket this file collects and makes.
func rawOrPing(st *model.InetSocketState) bool {
	return st.Type == unix.SOCK_RAW || isPing(st.Type, st.Proto)
}

// describeRaw names a raw or ping socket in errors: "raw socket
// (protocol 1) 127.0.0.1", "ICMP ping socket 127.0.0.1 id 4242 ->
// 127.0.0.2". A raw socket's "port" is its protocol, left out.
func describeRaw(st *model.InetSocketState) string {
	var d string
	if st.Type == unix.SOCK_RAW {
		d = fmt.Sprintf("raw socket (protocol %d)", st.Proto)
		if a := st.Src.Addr(); a.IsValid() && !a.IsUnspecified() {
			d += " " + a.String()
		}
		if a := st.Dst.Addr(); st.State == tcprepair.StateEstablished && a.IsValid() {
			d += " -> " + a.String()
		}
		return d
	}
	d = "ICMP ping socket"
	if st.Proto == unix.IPPROTO_ICMPV6 {
		d = "ICMPv6 ping socket"
	}
	if a := st.Src.Addr(); a.IsValid() && !a.IsUnspecified() {
		d += " " + a.String()
	}
	if st.Src.Port() != 0 {
		d += fmt.Sprintf(" id %d", st.Src.Port())
	}
	if a := st.Dst.Addr(); st.State == tcprepair.StateEstablished && a.IsValid() {
		d += " -> " + a.String()
	}
	return d
}

// collectRaw reads the raw or ping socket s (a copy of fd's) into f.
func collectRaw(fl *Files, pid int, fd *FD, f *model.File, s, family, typ, proto int) error {
	ino := uint32(fd.Stat.Ino)
	id, err := fl.inetStateOf(s, pid)
	if err != nil {
		return fmt.Errorf("%s %s socket %d: %w", familyName(family), map[bool]string{true: "raw", false: "ping"}[typ == unix.SOCK_RAW], ino, err)
	}
	st := &model.InetSocketState{Ino: ino, Family: uint32(family), Type: uint32(typ), Proto: uint32(proto), State: tcprepair.StateClose}
	sa, err := unix.Getsockname(s)
	if err != nil {
		return fmt.Errorf("getsockname: %w", err)
	}
	st.Src = addrPort(sa)
	// getpeername answers ENOTCONN for a socket connected with port 0,
	// as raw sockets always are: the peer is read from the namespace's
	// table.
	var pe procInet
	if typ == unix.SOCK_RAW || st.Src.Port() != 0 {
		// (A ping socket without identifier is neither bound nor
		// connected, which would have given it one: not listed.)
		if pe, err = procInetSock(id, procInetTable(st), ino); err != nil {
			return fmt.Errorf("%s: %w", describeRaw(st), err)
		}
	}
	if pe.State == tcprepair.StateEstablished {
		st.Dst, st.State = pe.Remote, tcprepair.StateEstablished
	} else {
		st.Dst = netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
		if family == unix.AF_INET6 {
			st.Dst = netip.AddrPortFrom(netip.IPv6Unspecified(), 0)
		}
	}
	what := describeRaw(st)
	if err := inetOpts(id, s, st); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if st.Opts, err = inetSocketOpts(s); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if typ == unix.SOCK_RAW {
		if st.Inet.Raw, err = rawOpts(s, st); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	if err := rawShutdown(id, s, st); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := rawQueued(s); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	f.Kind, f.Path, f.Inet = model.InetSocket, "", st
	return nil
}

// rawOpts reads the options of ip_opts_raw_entry.
func rawOpts(s int, st *model.InetSocketState) (*model.RawOpts, error) {
	r := &model.RawOpts{}
	var err error
	geti := func(level, opt int, name string) bool {
		if err != nil {
			return false
		}
		var v int
		if v, err = unix.GetsockoptInt(s, level, opt); err != nil {
			err = fmt.Errorf("getsockopt %s: %w", name, err)
		}
		return v != 0
	}
	if st.Family == unix.AF_INET {
		r.HdrIncl = geti(unix.SOL_IP, unix.IP_HDRINCL, "IP_HDRINCL")
		r.NoDefrag = geti(unix.SOL_IP, unix.IP_NODEFRAG, "IP_NODEFRAG")
		r.Checksum = geti(unix.SOL_IP, unix.IP_CHECKSUM, "IP_CHECKSUM")
		if err != nil {
			return nil, err
		}
		if st.Proto == unix.IPPROTO_ICMP {
			v, err := unix.GetsockoptInt(s, unix.SOL_RAW, unix.ICMP_FILTER)
			if err != nil {
				return nil, fmt.Errorf("getsockopt ICMP_FILTER: %w", err)
			}
			r.ICMPFilter = []uint32{uint32(v)}
		}
		return r, nil
	}
	r.HdrIncl = geti(unix.SOL_IPV6, unix.IPV6_HDRINCL, "IPV6_HDRINCL")
	if err != nil {
		return nil, err
	}
	if st.Proto == unix.IPPROTO_ICMPV6 {
		f, err := unix.GetsockoptICMPv6Filter(s, unix.SOL_ICMPV6, unix.ICMPV6_FILTER)
		if err != nil {
			return nil, fmt.Errorf("getsockopt ICMPV6_FILTER: %w", err)
		}
		r.ICMPFilter = append([]uint32(nil), f.Data[:]...)
	}
	return r, nil
}

// rawShutdown refuses a shut-down socket: sock_diag's word where it
// lists the socket (raw_diag), else poll's (a receive side shut down
// polls POLLRDHUP; a send side alone shows nowhere but sock_diag).
func rawShutdown(id *inetDump, s int, st *model.InetSocketState) error {
	if st.Type == unix.SOCK_RAW {
		id.mu.Lock()
		tab, err := id.table(st.Family, unix.IPPROTO_RAW)
		id.mu.Unlock()
		// An error: no raw_diag here (poll below still looks).
		if err == nil {
			if dg := tab.ByIno[st.Ino]; dg != nil && dg.Shutdown != 0 {
				return fmt.Errorf("shut down (%d): not supported yet", dg.Shutdown)
			}
		}
	}
	p := []unix.PollFd{{Fd: int32(s), Events: unix.POLLRDHUP}}
	if _, err := unix.Poll(p, 0); err != nil {
		return fmt.Errorf("poll: %w", err)
	}
	if p[0].Revents&(unix.POLLRDHUP|unix.POLLHUP) != 0 {
		return errors.New("shut down: not supported yet")
	}
	if shut, err := sendShutdown(s, st); err != nil {
		return err
	} else if shut {
		return errors.New("shut down for sending: not supported yet")
	}
	return nil
}

// sendShutdown tells whether s is shut down for sending, which neither
// poll nor any option shows: it sends an echo request whose second half
// lies in a page that cannot be read. The kernel takes the buffer for
// the packet before it copies the data, refusing with EPIPE a socket shut
// down for sending; any other fails the copy (EFAULT) and the packet,
// never complete, is dropped. Nothing leaves the socket either way. Not
// told apart: a ping socket without identifier (not probed: the send
// would give it one), a socket the probe cannot route, and a raw socket
// without IP_HDRINCL, whose sends ignore the shutdown (the kernel takes
// their buffer unchecked): for these the shutdown shows in sock_diag
// alone, and they are restored without it.
func sendShutdown(s int, st *model.InetSocketState) (bool, error) {
	if isPing(st.Type, st.Proto) && st.Src.Port() == 0 {
		return false, nil
	}
	page, err := unix.Mmap(-1, 0, unix.Getpagesize(), unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return false, fmt.Errorf("probe send shutdown: %w", err)
	}
	defer unix.Munmap(page)
	hdr := []byte{8, 0, 0, 0, 0, 0, 0, 0} // ICMP echo request
	if st.Family == unix.AF_INET6 {
		hdr[0] = 128 // ICMPv6 echo request
	}
	var to unix.Sockaddr
	if st.State != tcprepair.StateEstablished {
		to = &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
		if st.Family == unix.AF_INET6 {
			to = &unix.SockaddrInet6{Addr: netip.IPv6Loopback().As16()}
		}
	}
	_, err = unix.SendmsgBuffers(s, [][]byte{hdr, page[:64]}, nil, to, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
	return errors.Is(err, unix.EPIPE), nil
}

// rawQueued refuses a socket with packets queued to be read (their
// senders cannot be restored) or not yet sent: the memory the kernel
// charges the socket for them (SO_MEMINFO), which also counts what
// SIOCINQ cannot see on a ping socket.
func rawQueued(s int) error {
	var m [unix.SK_MEMINFO_VARS]uint32
	l := uint32(unsafe.Sizeof(m))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(s), unix.SOL_SOCKET, unix.SO_MEMINFO,
		uintptr(unsafe.Pointer(&m)), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
		return fmt.Errorf("getsockopt SO_MEMINFO: %w", e)
	}
	if r := m[unix.SK_MEMINFO_RMEM_ALLOC]; r != 0 {
		return fmt.Errorf("packets queued to be read (%d bytes; their senders cannot be restored): not supported", r)
	}
	if w := m[unix.SK_MEMINFO_WMEM_ALLOC]; w != 0 {
		return fmt.Errorf("packets being sent (%d bytes): not supported", w)
	}
	return nil
}

// newRaw makes the raw or ping socket st in godwit: options, then bound
// and connected as dumped.
func newRaw(st *model.InetSocketState) (int, error) {
	s, err := unix.Socket(int(st.Family), int(st.Type)|unix.SOCK_CLOEXEC, int(st.Proto))
	if err != nil {
		if isPing(st.Type, st.Proto) && errors.Is(err, unix.EACCES) {
			return -1, fmt.Errorf("socket: %w (net.ipv4.ping_group_range of this network namespace excludes godwit's group %d)", err, unix.Getegid())
		}
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
	if st.Type == unix.SOCK_RAW {
		if err := setRawOpts(s, st); err != nil {
			return -1, err
		}
	}
	// A raw socket's port is its protocol (bind ignores it); a ping
	// socket's is its identifier, which bind sets.
	a := st.Src
	if st.Type == unix.SOCK_RAW {
		a = netip.AddrPortFrom(a.Addr(), 0)
	}
	if a.IsValid() && (a.Port() != 0 || !a.Addr().IsUnspecified()) {
		if err := unix.Bind(s, sockaddr(st.Family, a)); err != nil {
			return -1, notLocal(st, fmt.Errorf("bind: %w", err))
		}
	}
	if st.State == tcprepair.StateEstablished {
		if err := unix.Connect(s, sockaddr(st.Family, st.Dst)); err != nil {
			return -1, fmt.Errorf("connect: %w", err)
		}
	}
	if st.Shutdown != 0 {
		return -1, fmt.Errorf("shut down (%d): not supported yet", st.Shutdown)
	}
	ok = true
	return s, nil
}

// setRawOpts gives s the raw options of st (each only where it differs
// from the fresh socket's: IPPROTO_RAW sockets have IP_HDRINCL fixed).
func setRawOpts(s int, st *model.InetSocketState) error {
	r := st.Inet.Raw
	if r == nil {
		r = &model.RawOpts{}
	}
	b := func(v bool) int {
		if v {
			return 1
		}
		return 0
	}
	if st.Family == unix.AF_INET {
		if err := setInts(s, []sockOpt{
			{unix.SOL_IP, unix.IP_HDRINCL, b(r.HdrIncl), "IP_HDRINCL"},
			{unix.SOL_IP, unix.IP_NODEFRAG, b(r.NoDefrag), "IP_NODEFRAG"},
			{unix.SOL_IP, unix.IP_CHECKSUM, b(r.Checksum), "IP_CHECKSUM"},
		}); err != nil {
			return err
		}
	} else {
		if r.NoDefrag || r.Checksum {
			return errors.New("IP_NODEFRAG or IP_CHECKSUM on an IPv6 raw socket")
		}
		if err := setInts(s, []sockOpt{{unix.SOL_IPV6, unix.IPV6_HDRINCL, b(r.HdrIncl), "IPV6_HDRINCL"}}); err != nil {
			return err
		}
	}
	switch f := r.ICMPFilter; {
	case len(f) == 0:
	case len(f) == 1 && st.Family == unix.AF_INET && st.Proto == unix.IPPROTO_ICMP:
		if err := unix.SetsockoptInt(s, unix.SOL_RAW, unix.ICMP_FILTER, int(int32(f[0]))); err != nil {
			return fmt.Errorf("setsockopt ICMP_FILTER: %w", err)
		}
	case len(f) == 8 && st.Family == unix.AF_INET6 && st.Proto == unix.IPPROTO_ICMPV6:
		var v unix.ICMPv6Filter
		copy(v.Data[:], f)
		if err := unix.SetsockoptICMPv6Filter(s, unix.SOL_ICMPV6, unix.ICMPV6_FILTER, &v); err != nil {
			return fmt.Errorf("setsockopt ICMPV6_FILTER: %w", err)
		}
	default:
		return fmt.Errorf("an ICMP filter of %d words on a raw socket of family %d, protocol %d", len(f), st.Family, st.Proto)
	}
	return nil
}

// rawUncarried: as uncarried, the options of raw IPv6 sockets the image
// has no field for (IPV6_CHECKSUM: an offset, -1 when off).
var rawUncarried = map[uint32][]sockOpt{
	unix.AF_INET6: {{unix.SOL_RAW, unix.IPV6_CHECKSUM, 0, "IPV6_CHECKSUM"}},
}

// procInetTable names the /proc/net table listing st's kind of socket.
func procInetTable(st *model.InetSocketState) string {
	t := "icmp"
	if st.Type == unix.SOCK_RAW {
		t = "raw"
	}
	if st.Family == unix.AF_INET6 {
		t += "6"
	}
	return t
}

// procInet is a socket's line of /proc/net/{raw,raw6,icmp,icmp6}.
type procInet struct {
	Local, Remote netip.AddrPort
	State         uint8
}

// procInetSock finds socket ino in table of id's network namespace
// (/proc/thread-self/net is the calling thread's).
func procInetSock(id *inetDump, table string, ino uint32) (procInet, error) {
	path := "/proc/thread-self/net/" + table
	var b []byte
	if err := id.inNetns(func() error {
		var err error
		b, err = os.ReadFile(path)
		return err
	}); err != nil {
		return procInet{}, err
	}
	path = "/proc/net/" + table
	p, ok, err := parseProcInet(b, ino)
	if err != nil {
		return procInet{}, fmt.Errorf("%s: %w", path, err)
	}
	if !ok {
		return procInet{}, fmt.Errorf("socket %d not in its namespace's %s", ino, path)
	}
	return p, nil
}

// parseProcInet reads the table of /proc/net/raw, raw6, icmp or icmp6
// (net/ipv4/raw.c, ping.c, net/ipv6/datagram.c: "sl local_address
// rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout
// inode ..."; an address is the hex of its 32-bit words as the host
// reads them, a port hex in host order) for socket ino.
func parseProcInet(b []byte, ino uint32) (procInet, bool, error) {
	fs, line, ok, err := procNetRow(b, func(h []string) bool {
		return len(h) >= 3 && h[0] == "sl" && h[1] == "local_address"
	}, uint64(ino))
	if err != nil || !ok {
		return procInet{}, false, err
	}
	local, err1 := parseProcAddrPort(fs[1])
	remote, err2 := parseProcAddrPort(fs[2])
	st, err3 := strconv.ParseUint(fs[3], 16, 8)
	if err := errors.Join(err1, err2, err3); err != nil {
		return procInet{}, false, fmt.Errorf("line %q: %w", line, err)
	}
	return procInet{Local: local, Remote: remote, State: uint8(st)}, true, nil
}

// parseProcAddrPort parses "0100007F:0035" or the IPv6 form, 32 hex
// digits before the colon.
func parseProcAddrPort(s string) (netip.AddrPort, error) {
	a, p, ok := strings.Cut(s, ":")
	if !ok || (len(a) != 8 && len(a) != 32) {
		return netip.AddrPort{}, fmt.Errorf("address %q", s)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("address %q: port: %w", s, err)
	}
	var raw []byte
	for i := 0; i < len(a); i += 8 {
		w, err := strconv.ParseUint(a[i:i+8], 16, 32)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("address %q: %w", s, err)
		}
		raw = binary.NativeEndian.AppendUint32(raw, uint32(w))
	}
	ip, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(ip, uint16(port)), nil
}
