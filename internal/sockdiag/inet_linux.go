package sockdiag

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// From include/uapi/linux/inet_diag.h.
const (
	sizeofInetDiagReqV2 = 56 // struct inet_diag_req_v2
	sizeofInetDiagMsg   = 72 // struct inet_diag_msg
	inetDiagCong        = 4  // INET_DIAG_CONG: string, the congestion control
	inetDiagTOS         = 5  // INET_DIAG_TOS: u8 inet->tos
	inetDiagTClass      = 6  // INET_DIAG_TCLASS: u8 IPv6 traffic class
	inetDiagSkMeminfo   = 7  // INET_DIAG_SKMEMINFO: u32[SK_MEMINFO_VARS]
	inetDiagShutdown    = 8  // INET_DIAG_SHUTDOWN: u8 sk_shutdown
	inetDiagMark        = 15 // INET_DIAG_MARK: u32 sk_mark (CAP_NET_ADMIN only)
	inetDiagClassID     = 17 // INET_DIAG_CLASS_ID: u32, the net_cls class id, else sk_priority (sent with INET_DIAG_TCLASS)
	inetDiagSockopt     = 22 // INET_DIAG_SOCKOPT: struct inet_diag_sockopt
	inetDiagReqProtocol = 3  // INET_DIAG_REQ_PROTOCOL: u32, for protocols past 255 (MPTCP)
)

// The bits of struct inet_diag_sockopt, as a little-endian u16 (the
// kernel's bitfields, allocated from the low bit on little-endian
// machines; not read elsewhere).
const (
	SockoptRecverr           = 1 << 0
	SockoptFreebind          = 1 << 2
	SockoptTransparent       = 1 << 5
	SockoptMcAll             = 1 << 6
	SockoptBindAddressNoPort = 1 << 8
	SockoptRecverrRFC4884    = 1 << 9
)

// Have bits: the attributes an Inet was given (an older kernel, a
// protocol or a missing capability leaves some out; the caller then
// asks the socket itself).
const (
	HaveTOS     = 1 << iota // TOS
	HaveTClass              // TClass
	HaveBufs                // SndBuf, RcvBuf
	HaveMark                // Mark
	HaveCong                // Cong
	HaveSockopt             // Sockopt
	HaveClassID             // ClassID
)

// Inet is what sock_diag tells of a TCP, UDP or MPTCP socket.
type Inet struct {
	Family, State  uint8
	Src, Dst       netip.AddrPort
	Ifindex        uint32 // bound device, 0 when none
	Rqueue, Wqueue uint32 // a listener's accept queue length and backlog; else bytes queued
	UID, Ino       uint32
	Shutdown       uint8 // sk_shutdown: 1 receive, 2 send
	// What getsockopt would answer, read in the same dump (Have says
	// which): IP_TOS, IPV6_TCLASS, SO_SNDBUF, SO_RCVBUF, SO_MARK,
	// TCP_CONGESTION, and some IP_* flags (Sockopt*).
	Have           uint8
	TOS, TClass    uint8
	SndBuf, RcvBuf uint32
	Mark           uint32
	Sockopt        uint16
	Cong           string
	// ClassID is the socket's net_cls class id, or its SO_PRIORITY where
	// it has none: 0 says both are 0.
	ClassID uint32
}

// DumpInet returns the sockets of family (AF_INET, AF_INET6) and
// protocol (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE, IPPROTO_MPTCP) in
// godwit's network namespace that have an inode, by inode.
func DumpInet(family uint8, proto uint32) (map[uint32]*Inet, error) {
	t, err := DumpInetTable(family, proto)
	if err != nil {
		return nil, err
	}
	return t.ByIno, nil
}

// InetTable is one sock_diag dump.
type InetTable struct {
	ByIno map[uint32]*Inet
	// NoIno are the entries without a socket file, inode 0: connection
	// requests (SYN_RECV) and TIME_WAIT sockets. Keyed by inode they
	// would overwrite each other.
	NoIno []Inet
}

// DumpInetTable returns every socket of family and protocol (see
// DumpInet) in godwit's network namespace: one request answers for all
// the sockets of a dump.
func DumpInetTable(family uint8, proto uint32) (*InetTable, error) {
	return dumpInetTable(family, proto, 0)
}

// DumpInetTableOpts is DumpInetTable with the options sock_diag can
// tell (Inet.Have): the larger answer a dump reading the sockets wants.
func DumpInetTableOpts(family uint8, proto uint32) (*InetTable, error) {
	return dumpInetTable(family, proto, 1<<(inetDiagCong-1)|1<<(inetDiagTOS-1)|1<<(inetDiagTClass-1)|1<<(inetDiagSkMeminfo-1))
}

// dumpInetTable asks for the extensions ext (idiag_ext: a bit per
// attribute below 9; INET_DIAG_SHUTDOWN comes unasked).
func dumpInetTable(family uint8, proto uint32, ext uint8) (*InetTable, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("socket(NETLINK_SOCK_DIAG): %w", err)
	}
	defer unix.Close(fd)
	const seq = 0x696e // "in"
	l := unix.SizeofNlMsghdr + sizeofInetDiagReqV2
	if proto > 255 {
		l += 8
	}
	msg := make([]byte, l)
	ne := binary.NativeEndian
	ne.PutUint32(msg[0:], uint32(len(msg)))
	ne.PutUint16(msg[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(msg[8:], seq)
	req := msg[unix.SizeofNlMsghdr:]
	req[0] = family
	if proto <= 255 {
		req[1] = uint8(proto)
	} else {
		// The byte says TCP (as ss(8) sends it), the attribute the
		// protocol.
		req[1] = unix.IPPROTO_TCP
		a := req[sizeofInetDiagReqV2:]
		ne.PutUint16(a[0:], 8)
		ne.PutUint16(a[2:], inetDiagReqProtocol)
		ne.PutUint32(a[4:], proto)
	}
	req[2] = ext
	ne.PutUint32(req[4:], ^uint32(0)) // every state
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("send sock_diag request: %w", err)
	}
	out := &InetTable{ByIno: map[uint32]*Inet{}}
	buf := make([]byte, 256<<10)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("receive sock_diag reply: %w", err)
		}
		socks, done, err := ParseInetDump(buf[:n], seq)
		if err != nil {
			return nil, fmt.Errorf("sock_diag family %d protocol %d: %w", family, proto, err)
		}
		for i := range socks {
			if socks[i].Ino == 0 {
				out.NoIno = append(out.NoIno, socks[i])
				continue
			}
			out.ByIno[socks[i].Ino] = &socks[i]
		}
		if done {
			return out, nil
		}
	}
}

// ParseInetDump parses netlink messages of the dump answering request
// seq; done is true once the dump's end (NLMSG_DONE) was read.
func ParseInetDump(b []byte, seq uint32) (socks []Inet, done bool, err error) {
	ne := binary.NativeEndian
	for len(b) > 0 {
		if len(b) < unix.SizeofNlMsghdr {
			return nil, false, fmt.Errorf("short netlink header (%d bytes)", len(b))
		}
		l := ne.Uint32(b)
		if l < unix.SizeofNlMsghdr || uint64(l) > uint64(len(b)) {
			return nil, false, fmt.Errorf("netlink message of %d bytes in %d", l, len(b))
		}
		typ, mseq := ne.Uint16(b[4:]), ne.Uint32(b[8:])
		payload := b[unix.SizeofNlMsghdr:l]
		next := (l + 3) &^ 3
		if uint64(next) > uint64(len(b)) {
			next = uint32(len(b))
		}
		b = b[next:]
		if mseq != seq {
			continue
		}
		switch typ {
		case unix.NLMSG_DONE:
			return socks, true, nil
		case unix.NLMSG_ERROR:
			if len(payload) < 4 {
				return nil, false, errors.New("short NLMSG_ERROR")
			}
			if e := -int32(ne.Uint32(payload)); e > 0 {
				return nil, false, unix.Errno(e)
			}
		case unix.SOCK_DIAG_BY_FAMILY:
			s, err := parseInetMsg(payload)
			if err != nil {
				return nil, false, err
			}
			socks = append(socks, s)
		}
	}
	return socks, false, nil
}

func parseInetMsg(p []byte) (Inet, error) {
	ne := binary.NativeEndian
	be := binary.BigEndian
	if len(p) < sizeofInetDiagMsg {
		return Inet{}, fmt.Errorf("short inet_diag_msg (%d bytes)", len(p))
	}
	s := Inet{Family: p[0], State: p[1]}
	id := p[4:52]
	sport, dport := be.Uint16(id[0:]), be.Uint16(id[2:])
	switch s.Family {
	case unix.AF_INET:
		s.Src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(id[4:8])), sport)
		s.Dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(id[20:24])), dport)
	case unix.AF_INET6:
		s.Src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(id[4:20])), sport)
		s.Dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(id[20:36])), dport)
	default:
		return Inet{}, fmt.Errorf("reply of family %d", s.Family)
	}
	s.Ifindex = ne.Uint32(id[36:])
	s.Rqueue, s.Wqueue = ne.Uint32(p[56:]), ne.Uint32(p[60:])
	s.UID, s.Ino = ne.Uint32(p[64:]), ne.Uint32(p[68:])
	a := p[sizeofInetDiagMsg:]
	for len(a) >= 4 {
		l, typ := ne.Uint16(a), ne.Uint16(a[2:])
		if l < 4 || int(l) > len(a) {
			return Inet{}, fmt.Errorf("attribute %d of %d bytes in %d", typ, l, len(a))
		}
		v := a[4:l]
		if err := s.attr(typ&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER), v); err != nil {
			return Inet{}, err
		}
		n := (int(l) + 3) &^ 3
		if n > len(a) {
			n = len(a)
		}
		a = a[n:]
	}
	return s, nil
}

// attr takes the attribute typ of value v into s.
func (s *Inet) attr(typ uint16, v []byte) error {
	ne := binary.NativeEndian
	short := func(n int) error {
		if len(v) < n {
			return fmt.Errorf("attribute %d: %d bytes, want %d", typ, len(v), n)
		}
		return nil
	}
	switch typ {
	case inetDiagShutdown:
		if err := short(1); err != nil {
			return err
		}
		s.Shutdown = v[0]
	case inetDiagTOS:
		if err := short(1); err != nil {
			return err
		}
		s.TOS, s.Have = v[0], s.Have|HaveTOS
	case inetDiagTClass:
		if err := short(1); err != nil {
			return err
		}
		s.TClass, s.Have = v[0], s.Have|HaveTClass
	case inetDiagSkMeminfo:
		if err := short(4 * (unix.SK_MEMINFO_SNDBUF + 1)); err != nil {
			return err
		}
		s.RcvBuf, s.SndBuf = ne.Uint32(v[4*unix.SK_MEMINFO_RCVBUF:]), ne.Uint32(v[4*unix.SK_MEMINFO_SNDBUF:])
		s.Have |= HaveBufs
	case inetDiagMark:
		if err := short(4); err != nil {
			return err
		}
		s.Mark, s.Have = ne.Uint32(v), s.Have|HaveMark
	case inetDiagClassID:
		if err := short(4); err != nil {
			return err
		}
		s.ClassID, s.Have = ne.Uint32(v), s.Have|HaveClassID
	case inetDiagCong:
		// A NUL-terminated string.
		if i := bytes.IndexByte(v, 0); i >= 0 {
			s.Cong, s.Have = string(v[:i]), s.Have|HaveCong
		}
	case inetDiagSockopt:
		if err := short(2); err != nil {
			return err
		}
		if littleEndian() {
			s.Sockopt, s.Have = uint16(v[0])|uint16(v[1])<<8, s.Have|HaveSockopt
		}
	}
	return nil
}

// littleEndian: the bitfields of struct inet_diag_sockopt are laid out
// from the low bit (the layout Sockopt* assume).
func littleEndian() bool { return binary.NativeEndian.Uint16([]byte{1, 0}) == 1 }
