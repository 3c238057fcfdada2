package drivers

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
)

// Every option the image has no field for, set on every inet kind (TCP,
// UDP, raw, ping; both families), fails the dump naming it rather than
// coming back at its default; the same sockets without it, and a
// connection accepted by a plain listener, are not refused. Run in a
// child in a network namespace of its own, where ping sockets are
// allowed (ping_group_range) without touching the host's.
func TestInetUncarriedOptsRefused(t *testing.T) {
	if os.Getenv("GODWIT_TEST_NETNS_CHILD") == "1" {
		for _, msg := range inetUncarriedOpts() {
			t.Error(msg)
		}
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	c := exec.Command(os.Args[0], "-test.run=^TestInetUncarriedOptsRefused$", "-test.count=1", "-test.v")
	c.Env = append(os.Environ(), "GODWIT_TEST_NETNS_CHILD=1")
	c.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	out, err := c.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestInetUncarriedOptsRefused") {
		t.Fatalf("child in its own netns: %v\n%s", err, out)
	}
}

// toggle: set a boolean option to the opposite of a fresh socket's
// (IP_MULTICAST_ALL is on for IPv4 sockets, off for IPv6 ones).
const toggle = -1

type inetKindCase struct {
	name               string
	family, typ, proto int
	stream, raw        bool
}

func inetUncarriedOpts() (errs []string) {
	fail := func(f string, a ...any) { errs = append(errs, fmt.Sprintf(f, a...)) }
	if err := os.WriteFile("/proc/sys/net/ipv4/ping_group_range", []byte("0 0"), 0); err != nil {
		return []string{err.Error()}
	}
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return []string{fmt.Sprintf("ip link set lo up: %v: %s", err, out)}
	}
	kinds := []inetKindCase{
		{name: "tcp4", family: unix.AF_INET, typ: unix.SOCK_STREAM, proto: unix.IPPROTO_TCP, stream: true},
		{name: "tcp6", family: unix.AF_INET6, typ: unix.SOCK_STREAM, proto: unix.IPPROTO_TCP, stream: true},
		{name: "udp4", family: unix.AF_INET, typ: unix.SOCK_DGRAM, proto: unix.IPPROTO_UDP},
		{name: "udp6", family: unix.AF_INET6, typ: unix.SOCK_DGRAM, proto: unix.IPPROTO_UDP},
		{name: "raw4", family: unix.AF_INET, typ: unix.SOCK_RAW, proto: unix.IPPROTO_ICMP, raw: true},
		{name: "raw6", family: unix.AF_INET6, typ: unix.SOCK_RAW, proto: unix.IPPROTO_ICMPV6, raw: true},
		{name: "ping4", family: unix.AF_INET, typ: unix.SOCK_DGRAM, proto: unix.IPPROTO_ICMP},
		{name: "ping6", family: unix.AF_INET6, typ: unix.SOCK_DGRAM, proto: unix.IPPROTO_ICMPV6},
	}
	type opt struct {
		level, opt, v int
		name          string
		bytes         []byte // a byte-string option instead of v
		dgramOnly     bool   // TCP sends no multicast: not compared there
	}
	sol, ip, ip6 := unix.SOL_SOCKET, unix.SOL_IP, unix.SOL_IPV6
	v4 := []opt{
		{ip, unix.IP_RECVTTL, 1, "IP_RECVTTL", nil, false},
		{ip, unix.IP_RECVTOS, 1, "IP_RECVTOS", nil, false},
		{ip, unix.IP_MINTTL, 5, "IP_MINTTL", nil, false},
		{ip, unix.IP_MULTICAST_ALL, toggle, "IP_MULTICAST_ALL", nil, false},
		{ip, unix.IP_RECVOPTS, 1, "IP_RECVOPTS", nil, false},
		{ip, unix.IP_RETOPTS, 1, "IP_RETOPTS", nil, false},
		{ip, unix.IP_RECVORIGDSTADDR, 1, "IP_RECVORIGDSTADDR", nil, false},
		{ip, unix.IP_OPTIONS, 0, "IP_OPTIONS", []byte{1, 1, 1, 0}, false}, // NOP NOP NOP EOL
		{ip, unix.IP_MULTICAST_TTL, 9, "IP_MULTICAST_TTL", nil, true},
		{ip, unix.IP_MULTICAST_LOOP, toggle, "IP_MULTICAST_LOOP", nil, true},
	}
	all := append([]opt{{sol, unix.SO_DONTROUTE, 1, "SO_DONTROUTE", nil, false}}, v4...)
	v6 := []opt{
		{ip6, unix.IPV6_RECVHOPLIMIT, 1, "IPV6_RECVHOPLIMIT", nil, false},
		{ip6, unix.IPV6_UNICAST_HOPS, 7, "IPV6_UNICAST_HOPS", nil, false},
		{ip6, unix.IPV6_RECVTCLASS, 1, "IPV6_RECVTCLASS", nil, false},
		{ip6, unix.IPV6_MULTICAST_HOPS, 3, "IPV6_MULTICAST_HOPS", nil, true},
		{ip6, unix.IPV6_MULTICAST_LOOP, toggle, "IPV6_MULTICAST_LOOP", nil, true},
		{ip6, unix.IPV6_RECVORIGDSTADDR, 1, "IPV6_RECVORIGDSTADDR", nil, false},
		{ip6, unix.IPV6_MINHOPCOUNT, 5, "IPV6_MINHOPCOUNT", nil, false},
		{ip6, unix.IPV6_DONTFRAG, 1, "IPV6_DONTFRAG", nil, false},
	}
	id := newInetDump()
	dump := func(s int, k inetKindCase) error {
		st := &model.InetSocketState{Family: uint32(k.family), Type: uint32(k.typ), Proto: uint32(k.proto)}
		return inetOpts(id, s, st)
	}
	for _, k := range kinds {
		opts := all
		if k.family == unix.AF_INET6 {
			opts = append(append([]opt(nil), all...), v6...)
		}
		s, err := unix.Socket(k.family, k.typ|unix.SOCK_CLOEXEC, k.proto)
		if err != nil {
			fail("%s: socket: %v", k.name, err)
			continue
		}
		if err := dump(s, k); err != nil {
			fail("%s: a socket with no option set is refused: %v", k.name, err)
		}
		unix.Close(s)
		set := 0
		for _, o := range opts {
			if o.dgramOnly && k.stream {
				continue
			}
			s, err := unix.Socket(k.family, k.typ|unix.SOCK_CLOEXEC, k.proto)
			if err != nil {
				fail("%s: socket: %v", k.name, err)
				continue
			}
			if o.bytes != nil {
				err = unix.SetsockoptString(s, o.level, o.opt, string(o.bytes))
			} else if o.v == toggle {
				var v int
				if v, err = unix.GetsockoptInt(s, o.level, o.opt); err == nil {
					err = unix.SetsockoptInt(s, o.level, o.opt, 1-v)
				}
			} else {
				err = unix.SetsockoptInt(s, o.level, o.opt, o.v)
			}
			if errors.Is(err, unix.ENOPROTOOPT) && o.level == ip && k.family == unix.AF_INET6 && k.raw {
				unix.Close(s) // a raw IPv6 socket has no IPv4 options
				continue
			}
			if err != nil {
				fail("%s: setsockopt %s: %v", k.name, o.name, err)
				unix.Close(s)
				continue
			}
			set++
			if err := dump(s, k); err == nil || !strings.Contains(err.Error(), o.name) {
				fail("%s with %s set: dump says %v, want a refusal naming it", k.name, o.name, err)
			}
			unix.Close(s)
		}
		if set == 0 {
			fail("%s: no option could be set", k.name)
		}
	}
	// A connection accepted by a listener with nothing set, and the
	// client's end, are not refused (the kernel's own settings on them
	// match a fresh socket's).
	for _, nw := range []struct{ net, addr string }{{"tcp4", "127.0.0.1:0"}, {"tcp6", "[::1]:0"}} {
		l, err := net.Listen(nw.net, nw.addr)
		if err != nil {
			fail("listen %s: %v", nw.addr, err)
			continue
		}
		c, err := net.Dial(nw.net, l.Addr().String())
		if err != nil {
			fail("dial: %v", err)
			l.Close()
			continue
		}
		a, err := l.Accept()
		if err != nil {
			fail("accept: %v", err)
		} else {
			k := kinds[0]
			if nw.net == "tcp6" {
				k = kinds[1]
			}
			for _, conn := range []net.Conn{a, c} {
				rc, _ := conn.(*net.TCPConn).SyscallConn()
				var derr error
				rc.Control(func(fd uintptr) { derr = dump(int(fd), k) })
				if derr != nil {
					fail("%s: a plain connection is refused: %v", nw.net, derr)
				}
			}
			a.Close()
		}
		c.Close()
		l.Close()
	}
	return errs
}
