package drivers

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
	"godwit/internal/tcprepair"
)

// A UDP or UDP-Lite socket that joined a multicast group (IPv4, IPv6,
// and IPv4 on an IPv6 socket) is refused naming the group; a socket of
// the same namespace that did not join is not, though the group is on
// the device's list. In a network namespace of its own.
func TestInetMembershipRefused(t *testing.T) {
	if os.Getenv("GODWIT_TEST_NETNS_CHILD") == "1" {
		for _, msg := range inetMemberships() {
			t.Error(msg)
		}
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	c := exec.Command(os.Args[0], "-test.run=^TestInetMembershipRefused$", "-test.count=1", "-test.v")
	c.Env = append(os.Environ(), "GODWIT_TEST_NETNS_CHILD=1")
	c.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	out, err := c.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestInetMembershipRefused") {
		t.Fatalf("child in its own netns: %v\n%s", err, out)
	}
}

func inetMemberships() (errs []string) {
	fail := func(f string, a ...any) { errs = append(errs, fmt.Sprintf(f, a...)) }
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return []string{fmt.Sprintf("ip link set lo up: %v: %s", err, out)}
	}
	cases := []struct {
		name          string
		family, proto int
		join          func(s int) error
		group         string
	}{
		{"udp4", unix.AF_INET, unix.IPPROTO_UDP, func(s int) error {
			return unix.SetsockoptIPMreqn(s, unix.SOL_IP, unix.IP_ADD_MEMBERSHIP, &unix.IPMreqn{Multiaddr: [4]byte{239, 1, 2, 3}, Ifindex: 1})
		}, "239.1.2.3"},
		{"udplite4", unix.AF_INET, unix.IPPROTO_UDPLITE, func(s int) error {
			return unix.SetsockoptIPMreqn(s, unix.SOL_IP, unix.IP_ADD_MEMBERSHIP, &unix.IPMreqn{Multiaddr: [4]byte{239, 1, 2, 4}, Ifindex: 1})
		}, "239.1.2.4"},
		{"udp6 on ipv4", unix.AF_INET6, unix.IPPROTO_UDP, func(s int) error {
			return unix.SetsockoptIPMreqn(s, unix.SOL_IP, unix.IP_ADD_MEMBERSHIP, &unix.IPMreqn{Multiaddr: [4]byte{239, 1, 2, 5}, Ifindex: 1})
		}, "239.1.2.5"},
		{"udp6", unix.AF_INET6, unix.IPPROTO_UDP, func(s int) error {
			return unix.SetsockoptIPv6Mreq(s, unix.SOL_IPV6, unix.IPV6_JOIN_GROUP, &unix.IPv6Mreq{Multiaddr: [16]byte{0xff, 0x15, 15: 0x42}, Interface: 1})
		}, "ff15::42"},
	}
	id := newInetDump()
	dump := func(s int, family, proto int) error {
		st := &model.InetSocketState{Family: uint32(family), Type: unix.SOCK_DGRAM, Proto: uint32(proto), State: tcprepair.StateClose}
		return inetOpts(id, s, st)
	}
	for _, c := range cases {
		s, err := unix.Socket(c.family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, c.proto)
		if err != nil {
			fail("%s: %v", c.name, err)
			continue
		}
		other, err := unix.Socket(c.family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, c.proto)
		if err != nil {
			fail("%s: %v", c.name, err)
			unix.Close(s)
			continue
		}
		if err := c.join(s); err != nil {
			fail("%s: join %s: %v", c.name, c.group, err)
		} else {
			id.mcast = nil // the groups changed since the last read
			if err := dump(s, c.family, c.proto); err == nil || !strings.Contains(err.Error(), c.group) {
				fail("%s member of %s: dump says %v, want a refusal naming the group", c.name, c.group, err)
			}
			if err := dump(other, c.family, c.proto); err != nil {
				fail("%s not a member (another socket is): refused: %v", c.name, err)
			}
		}
		unix.Close(s)
		unix.Close(other)
	}
	return errs
}
