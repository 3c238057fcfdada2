package drivers

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
)

// Multicast group memberships (IP_ADD_MEMBERSHIP, MCAST_JOIN_GROUP, the
// IPv6 ones, with or without source filters) are not carried by the
// image, and no getsockopt lists a socket's groups. Every group a socket
// joined is in its device's list, /proc/net/igmp and /proc/net/igmp6 of
// the socket's network namespace; MCAST_MSFILTER asks one socket about
// one (group, interface) and answers EADDRNOTAVAIL when it has not
// joined it. So a socket is refused, naming the group, when it answers
// for any of them.

// mcastGroup is one (interface, group) of a namespace's device lists.
type mcastGroup struct {
	ifindex uint32
	group   netip.Addr
}

// groupFilter is struct group_filter (include/uapi/linux/in.h) without
// its source list: gf_interface, padding to the 8-byte alignment of
// struct __kernel_sockaddr_storage, gf_group, gf_fmode, gf_numsrc;
// GROUP_FILTER_SIZE(0) bytes, the least getsockopt MCAST_MSFILTER takes.
type groupFilter struct {
	iface  uint32
	_      uint32
	group  [128]byte
	fmode  uint32
	numsrc uint32
}

// mcastGroups reads (once per dump) the groups of the dump's network
// namespace's devices.
func (d *inetDump) mcastGroups() ([]mcastGroup, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.mcast != nil {
		return *d.mcast, nil
	}
	var gs []mcastGroup
	err := d.inNetns(func() error {
		b4, err := os.ReadFile("/proc/thread-self/net/igmp")
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		b6, err := os.ReadFile("/proc/thread-self/net/igmp6")
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if gs, err = parseIGMP(b4); err != nil {
			return err
		}
		g6, err := parseIGMP6(b6)
		gs = append(gs, g6...)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("multicast groups of the network namespace: %w", err)
	}
	d.mcast = &gs
	return gs, nil
}

// parseIGMP parses /proc/net/igmp: a device line "Idx\tDevice : Count
// Querier", then one line per group, "\t\t<group> <users> <timer>
// <reporter>", the group the be32 printed as a host-order %08X.
func parseIGMP(b []byte) ([]mcastGroup, error) {
	var gs []mcastGroup
	var ifindex uint64
	sc := bufio.NewScanner(bytes.NewReader(b))
	for first := true; sc.Scan(); first = false {
		line := sc.Text()
		f := strings.Fields(line)
		if first || len(f) == 0 {
			continue
		}
		if !strings.HasPrefix(line, "\t") {
			v, err := strconv.ParseUint(f[0], 10, 32)
			if err != nil {
				return nil, fmt.Errorf("igmp: device line %q", line)
			}
			ifindex = v
			continue
		}
		v, err := strconv.ParseUint(f[0], 16, 32)
		if err != nil {
			return nil, fmt.Errorf("igmp: group line %q", line)
		}
		var a [4]byte
		binary.NativeEndian.PutUint32(a[:], uint32(v))
		gs = append(gs, mcastGroup{uint32(ifindex), netip.AddrFrom4(a)})
	}
	return gs, sc.Err()
}

// parseIGMP6 parses /proc/net/igmp6: "<ifindex> <device> <group, 32
// hex digits> <users> <flags> <timer>" per line.
func parseIGMP6(b []byte) ([]mcastGroup, error) {
	var gs []mcastGroup
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		ifindex, err := strconv.ParseUint(f[0], 10, 32)
		var a [16]byte
		if err != nil || len(f) < 3 || len(f[2]) != 32 {
			return nil, fmt.Errorf("igmp6: line %q", sc.Text())
		}
		if _, err := hex.Decode(a[:], []byte(f[2])); err != nil {
			return nil, fmt.Errorf("igmp6: line %q", sc.Text())
		}
		gs = append(gs, mcastGroup{uint32(ifindex), netip.AddrFrom16(a)})
	}
	return gs, sc.Err()
}

// refuseMemberships refuses a datagram or raw socket that joined a
// multicast group.
func refuseMemberships(id *inetDump, s int, st *model.InetSocketState) error {
	if st.Type == unix.SOCK_STREAM {
		return nil // TCP joins no group (the kernel refuses it)
	}
	gs, err := id.mcastGroups()
	if err != nil {
		return err
	}
	for _, g := range gs {
		level := unix.SOL_IP
		if g.group.Is6() {
			if st.Family != unix.AF_INET6 {
				continue
			}
			level = unix.SOL_IPV6
		}
		joined, err := memberOf(s, level, g)
		if err != nil {
			return err
		}
		if joined {
			return fmt.Errorf("member of multicast group %s on interface %d: not supported yet", g.group, g.ifindex)
		}
	}
	return nil
}

// memberOf asks s whether it joined g (MCAST_MSFILTER at level).
func memberOf(s, level int, g mcastGroup) (bool, error) {
	var gf groupFilter
	gf.iface = g.ifindex
	ne := binary.NativeEndian
	if g.group.Is4() {
		ne.PutUint16(gf.group[0:], unix.AF_INET)
		a := g.group.As4()
		copy(gf.group[4:], a[:])
	} else {
		ne.PutUint16(gf.group[0:], unix.AF_INET6)
		a := g.group.As16()
		copy(gf.group[8:], a[:])
	}
	l := uint32(unsafe.Sizeof(gf))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(s), uintptr(level), unix.MCAST_MSFILTER, uintptr(unsafe.Pointer(&gf)), uintptr(unsafe.Pointer(&l)), 0)
	switch e {
	case 0:
		return true, nil
	case unix.EADDRNOTAVAIL, unix.ENODEV, unix.ENOPROTOOPT, unix.EINVAL:
		// Not joined; no such device any more; a raw IPv6 socket
		// asked about IPv4; a group the kernel does not filter (the
		// all-hosts groups). None of these is a membership of s.
		return false, nil
	}
	return false, fmt.Errorf("getsockopt MCAST_MSFILTER %s: %w", g.group, e)
}
