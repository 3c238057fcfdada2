package drivers

import (
	"fmt"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
	"godwit/internal/sockdiag"
)

// The options a dump takes from sock_diag (IP_TOS, IPV6_TCLASS,
// SO_SNDBUF, SO_RCVBUF, SO_MARK, SO_PRIORITY where 0, TCP_CONGESTION,
// SO_BINDTODEVICE and the IP flags of inet_diag_sockopt) come out exactly as asking the socket
// gives them: each set on bound and connected TCP and UDP sockets of
// both families, the socket read both ways, the states and refusals
// compared.
func TestInetOptsFromDiagAsAsked(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (SO_MARK, IP_TRANSPARENT)")
	}
	type set struct {
		name       string
		level, opt int
		v          int
		str        string
		family     int // 0: both
		stream     bool
	}
	sol, ip, ip6, tcp := unix.SOL_SOCKET, unix.SOL_IP, unix.SOL_IPV6, unix.SOL_TCP
	sets := []set{
		{name: "nothing"},
		{name: "IP_TOS", level: ip, opt: unix.IP_TOS, v: 0x10, family: unix.AF_INET},
		{name: "IP_FREEBIND", level: ip, opt: unix.IP_FREEBIND, v: 1},
		{name: "IP_TRANSPARENT", level: ip, opt: unix.IP_TRANSPARENT, v: 1},
		{name: "IP_RECVERR", level: ip, opt: unix.IP_RECVERR, v: 1},
		{name: "IP_MULTICAST_ALL", level: ip, opt: unix.IP_MULTICAST_ALL, v: toggle},
		{name: "IP_BIND_ADDRESS_NO_PORT", level: ip, opt: unix.IP_BIND_ADDRESS_NO_PORT, v: 1},
		{name: "IP_RECVERR_RFC4884", level: ip, opt: unix.IP_RECVERR_RFC4884, v: 1},
		{name: "SO_PRIORITY", level: sol, opt: unix.SO_PRIORITY, v: 5},
		{name: "SO_SNDBUF", level: sol, opt: unix.SO_SNDBUF, v: 50000},
		{name: "SO_RCVBUF", level: sol, opt: unix.SO_RCVBUF, v: 70000},
		{name: "SO_MARK", level: sol, opt: unix.SO_MARK, v: 7},
		{name: "IPV6_TCLASS", level: ip6, opt: unix.IPV6_TCLASS, v: 0x20, family: unix.AF_INET6},
		{name: "TCP_CONGESTION", level: tcp, opt: unix.TCP_CONGESTION, str: "reno", stream: true},
		{name: "SO_BINDTODEVICE", level: sol, opt: unix.SO_BINDTODEVICE, str: "lo"},
	}
	kinds := []struct {
		name               string
		family, typ, proto int
		connected          bool
	}{
		{"tcp4", unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_TCP, false},
		{"tcp6", unix.AF_INET6, unix.SOCK_STREAM, unix.IPPROTO_TCP, false},
		{"tcp4 connected", unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_TCP, true},
		{"tcp6 connected", unix.AF_INET6, unix.SOCK_STREAM, unix.IPPROTO_TCP, true},
		{"udp4", unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_UDP, false},
		{"udp6", unix.AF_INET6, unix.SOCK_DGRAM, unix.IPPROTO_UDP, false},
	}
	loopback := func(family int) unix.Sockaddr {
		if family == unix.AF_INET {
			return &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
		}
		return &unix.SockaddrInet6{Addr: [16]byte{15: 1}}
	}
	id := newInetDump()
	diagUsed := 0
	for _, k := range kinds {
		for _, o := range sets {
			if o.family != 0 && o.family != k.family || o.stream && k.typ != unix.SOCK_STREAM {
				continue
			}
			t.Run(k.name+"/"+o.name, func(t *testing.T) {
				s, err := unix.Socket(k.family, k.typ|unix.SOCK_CLOEXEC, k.proto)
				if err != nil {
					t.Fatal(err)
				}
				defer unix.Close(s)
				if k.connected {
					l, err := unix.Socket(k.family, k.typ|unix.SOCK_CLOEXEC, k.proto)
					if err != nil {
						t.Fatal(err)
					}
					defer unix.Close(l)
					if err := unix.Bind(l, loopback(k.family)); err != nil {
						t.Fatal(err)
					}
					if err := unix.Listen(l, 1); err != nil {
						t.Fatal(err)
					}
					la, _ := unix.Getsockname(l)
					if err := unix.Connect(s, la); err != nil {
						t.Fatal(err)
					}
				}
				// Bound first: with IP_BIND_ADDRESS_NO_PORT a bind to port 0
				// would leave it unlisted.
				if !k.connected {
					if err := unix.Bind(s, loopback(k.family)); err != nil {
						t.Fatal(err)
					}
				}
				switch {
				case o.name == "nothing":
				case o.str != "":
					err = unix.SetsockoptString(s, o.level, o.opt, o.str)
				case o.v == toggle:
					var v int
					if v, err = unix.GetsockoptInt(s, o.level, o.opt); err == nil {
						err = unix.SetsockoptInt(s, o.level, o.opt, 1-v)
					}
				default:
					err = unix.SetsockoptInt(s, o.level, o.opt, o.v)
				}
				if err != nil {
					t.Fatalf("setsockopt %s: %v", o.name, err)
				}
				var st unix.Stat_t
				if err := unix.Fstat(s, &st); err != nil {
					t.Fatal(err)
				}
				tab, err := sockdiag.DumpInetTableOpts(uint8(k.family), uint32(k.proto))
				if err != nil {
					t.Fatal(err)
				}
				dg := tab.ByIno[uint32(st.Ino)]
				if dg == nil {
					t.Fatalf("socket %d not in sock_diag's table", st.Ino)
				}
				want := uint8(sockdiag.HaveTOS | sockdiag.HaveBufs | sockdiag.HaveSockopt | sockdiag.HaveMark | sockdiag.HaveClassID)
				if k.family == unix.AF_INET6 {
					want |= sockdiag.HaveTClass
				}
				if k.connected {
					// (Not for a TCP socket only bound: asked then.)
					want |= sockdiag.HaveCong
				}
				if dg.Have&want != want {
					t.Errorf("sock_diag gave %#x of %#x", dg.Have, want)
				}
				if sb, _ := unix.GetsockoptInt(s, sol, unix.SO_SNDBUF); int(dg.SndBuf) != sb {
					t.Errorf("sock_diag's SO_SNDBUF %d, getsockopt's %d", dg.SndBuf, sb)
				}
				read := func(dg *sockdiag.Inet) string {
					ms := &model.InetSocketState{Ino: uint32(st.Ino), Family: uint32(k.family), Type: uint32(k.typ), Proto: uint32(k.proto)}
					err := inetOptsDiag(id, s, ms, dg)
					so, serr := inetSocketOptsDiag(s, ms, dg)
					return fmt.Sprintf("%+v %+v %v %v", *ms, so, err, serr)
				}
				asked, fromDiag := read(nil), read(dg)
				if asked != fromDiag {
					t.Errorf("asked:     %s\nfrom diag: %s", asked, fromDiag)
				}
				if !diagUsable(dg, &model.InetSocketState{Ino: uint32(st.Ino), Family: uint32(k.family), Type: uint32(k.typ), Proto: uint32(k.proto)}) {
					t.Errorf("sock_diag's entry not used: %+v", dg)
				} else {
					diagUsed++
				}
			})
		}
	}
	if diagUsed == 0 {
		t.Error("no socket was read from sock_diag")
	}
}
