package drivers

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
	"godwit/internal/procfs"
)

// /dev/net/tun fds: the tun or tap device each is attached to, by name,
// with its flags (TUNGETIFF), owner, group and persistence (the link's
// IFLA_INFO_DATA in the task's netns), send buffer and virtio header
// size; and the link's state (up, MTU, a tap's hardware address, its
// addresses), for a device the restore makes again.
//
// The restore opens /dev/net/tun in the task (so the device is in the
// task's netns) and attaches it with TUNSETIFF by name: a device still
// there (a persistent one) is attached again, one that is gone (a
// non-persistent device goes with its last fd) is made again, with the
// dumped settings and link state. Refused: multi-queue devices (a
// detached queue cannot be told from an fd never attached), routes
// through the device other than the kernel's own (godwit does not dump
// the netns's routes), a tap that ever had a socket filter attached
// (TUNATTACHFILTER: TUNGETFILTER gives its length, but its instructions
// stay only at the user pointer the program passed, which may be gone;
// a detached filter keeps its length, so it is refused too), a virtio
// header byte order other than the default (TUNSETVNETLE/BE), and a
// device the restore must make again whose carrier is off (TUNSETCARRIER;
// a new device's carrier is on). Not detected: offloads a program set
// with TUNSETOFFLOAD (the kernel has no getter on the fd); a device made
// again has a new device's offloads.

func init() { registerFDKind(tunKind{}) }

// The tun device, 10:200 (MISC_MAJOR, TUN_MINOR in
// include/linux/miscdevice.h).
const (
	tunMajor = 10
	tunMinor = 200
)

// scratchTunIfreq is the restore's scratch offset of the ifreq of
// TUNSETIFF (after the paths openat puts at 0, before the ctty's).
const scratchTunIfreq = 960

type tunKind struct{}

func (tunKind) name() string             { return "tun" }
func (tunKind) fileKind() model.FileKind { return model.Tun }
func (tunKind) match(_ string, st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFCHR && unix.Major(st.Rdev) == tunMajor && unix.Minor(st.Rdev) == tunMinor
}
func (tunKind) check(int, int, uint64) error { return nil }

func (tunKind) collect(_ *Files, pid int, fd *FD, f *model.File) error {
	c, err := grabFD(pid, fd.Num)
	if err != nil {
		return err
	}
	defer unix.Close(c)
	ts := &model.TunState{Owner: -1, Group: -1}
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return err
	}
	switch err := unix.IoctlIfreq(c, unix.TUNGETIFF, ifr); {
	case errors.Is(err, unix.EBADFD):
		// Not attached to any device.
		f.Kind, f.Tun = model.Tun, ts
		return nil
	case err != nil:
		return fmt.Errorf("TUNGETIFF: %w", err)
	}
	ts.Name, ts.Flags = ifr.Name(), ifr.Uint16()
	if ts.Flags&unix.IFF_MULTI_QUEUE != 0 {
		return fmt.Errorf("device %s is multi-queue: not supported", ts.Name)
	}
	if ts.SndBuf, err = ioctlGetInt32(c, unix.TUNGETSNDBUF); err != nil {
		return fmt.Errorf("TUNGETSNDBUF: %w", err)
	}
	if ts.VnetHdr, err = ioctlGetInt32(c, unix.TUNGETVNETHDRSZ); err != nil {
		return fmt.Errorf("TUNGETVNETHDRSZ: %w", err)
	}
	if err := tunCheckUnsaved(c, ts); err != nil {
		return fmt.Errorf("device %s: %w", ts.Name, err)
	}
	nl, err := netnsRoute(pid)
	if err != nil {
		return err
	}
	defer unix.Close(nl)
	l, err := tunLink(nl, ts.Name)
	if err != nil {
		return fmt.Errorf("device %s: %w", ts.Name, err)
	}
	if err := l.checkRoutes(nl); err != nil {
		return fmt.Errorf("device %s: %w", ts.Name, err)
	}
	// A non-persistent device goes with its last fd and the restore makes
	// it again, with a new device's carrier (on).
	if ts.Flags&unix.IFF_PERSIST == 0 && !l.carrier {
		return fmt.Errorf("device %s: carrier is off (TUNSETCARRIER) and the restore makes a new device with it on: not supported", ts.Name)
	}
	ts.Owner, ts.Group, ts.Up, ts.MTU, ts.Addrs = l.owner, l.group, l.up, l.mtu, l.addrs
	if ts.Flags&unix.IFF_TAP != 0 {
		ts.HwAddr = l.hwaddr
	}
	f.Kind, f.Path, f.Size, f.BuildID, f.Tun = model.Tun, "/dev/net/tun", nil, nil, ts
	return nil
}

// tunCheckUnsaved refuses the fd settings godwit does not carry: a
// tap's socket filter and a non-default virtio header byte order.
func tunCheckUnsaved(c int, ts *model.TunState) error {
	if ts.Flags&unix.IFF_TAP != 0 {
		// struct sock_fprog (linux/filter.h): its len, a u16, first.
		var fprog [16]byte
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(c), unix.TUNGETFILTER, uintptr(unsafe.Pointer(&fprog[0]))); e != 0 {
			return fmt.Errorf("TUNGETFILTER: %w", e)
		}
		if n := le.Uint16(fprog[:]); n != 0 {
			return fmt.Errorf("a socket filter of %d instructions was attached (TUNATTACHFILTER): not supported", n)
		}
	}
	vle, err := ioctlGetInt32(c, unix.TUNGETVNETLE)
	if err != nil {
		return fmt.Errorf("TUNGETVNETLE: %w", err)
	}
	if vle != 0 {
		return errors.New("virtio header is little-endian (TUNSETVNETLE): not supported")
	}
	// EINVAL: a kernel without CONFIG_TUN_VNET_CROSS_LE, where it cannot be set.
	switch be, err := ioctlGetInt32(c, unix.TUNGETVNETBE); {
	case errors.Is(err, unix.EINVAL):
	case err != nil:
		return fmt.Errorf("TUNGETVNETBE: %w", err)
	case be != 0:
		return errors.New("virtio header is big-endian (TUNSETVNETBE): not supported")
	}
	return nil
}

func ioctlGetInt32(fd int, req uint) (int32, error) {
	var v int32
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(&v)))
	if e != 0 {
		return 0, e
	}
	return v, nil
}

func (tunKind) open(rs *restoreFDs, what string, f *model.File) (uint64, error) {
	ts := f.Tun
	if ts == nil {
		return 0, fmt.Errorf("%s: tun without its state", what)
	}
	flags := int(f.Flags) &^ (unix.O_CREAT | unix.O_TRUNC | unix.O_EXCL | unix.O_CLOEXEC)
	tfd, err := rs.s.Openat(what, "/dev/net/tun", flags|unix.O_NOCTTY)
	if err != nil {
		return 0, err
	}
	if ts.Name == "" {
		return tfd, nil
	}
	what = fmt.Sprintf("%s: tun device %s", what, ts.Name)
	pid := rs.s.Pid()
	nl, err := netnsRoute(pid)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	defer unix.Close(nl)
	_, err = tunLink(nl, ts.Name)
	existed := err == nil
	if err != nil && !errors.Is(err, unix.ENODEV) {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	// struct ifreq: the name, then ifr_flags.
	var ifr [unix.IFNAMSIZ + 24]byte
	copy(ifr[:unix.IFNAMSIZ-1], ts.Name)
	le.PutUint16(ifr[unix.IFNAMSIZ:], ts.Flags&^unix.IFF_PERSIST)
	a, err := rs.s.Put(scratchTunIfreq, ifr[:])
	if err != nil {
		return 0, err
	}
	if _, err := rs.s.Call(what+": TUNSETIFF", unix.SYS_IOCTL, tfd, unix.TUNSETIFF, a); err != nil {
		return 0, err
	}
	c, err := grabFD(pid, int(tfd))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	defer unix.Close(c)
	persist := int32(0)
	if ts.Flags&unix.IFF_PERSIST != 0 {
		persist = 1
	}
	// Owner and group go by value (-1, none, is every new device's and
	// cannot be set); the send buffer and header size by pointer.
	if ts.Owner >= 0 {
		if err := unix.IoctlSetInt(c, unix.TUNSETOWNER, int(ts.Owner)); err != nil {
			return 0, fmt.Errorf("%s: TUNSETOWNER %d: %w", what, ts.Owner, err)
		}
	}
	if ts.Group >= 0 {
		if err := unix.IoctlSetInt(c, unix.TUNSETGROUP, int(ts.Group)); err != nil {
			return 0, fmt.Errorf("%s: TUNSETGROUP %d: %w", what, ts.Group, err)
		}
	}
	if err := unix.IoctlSetPointerInt(c, unix.TUNSETSNDBUF, int(ts.SndBuf)); err != nil {
		return 0, fmt.Errorf("%s: TUNSETSNDBUF %d: %w", what, ts.SndBuf, err)
	}
	if err := unix.IoctlSetPointerInt(c, unix.TUNSETVNETHDRSZ, int(ts.VnetHdr)); err != nil {
		return 0, fmt.Errorf("%s: TUNSETVNETHDRSZ %d: %w", what, ts.VnetHdr, err)
	}
	if err := unix.IoctlSetInt(c, unix.TUNSETPERSIST, int(persist)); err != nil {
		return 0, fmt.Errorf("%s: TUNSETPERSIST: %w", what, err)
	}
	if !existed {
		if err := tunConfigure(nl, ts); err != nil {
			return 0, fmt.Errorf("%s: made again: %w", what, err)
		}
	}
	got, err := tunLink(nl, ts.Name)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	if err := got.same(ts); err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	return tfd, nil
}

// netnsRoute opens a NETLINK_ROUTE socket in the netns of pid: made by a
// thread that joins that netns for the call and leaves it again (a
// thread that cannot leave it is never given back to the runtime).
func netnsRoute(pid int) (int, error) {
	type res struct {
		fd  int
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		fd, back, err := inNetns(pid)
		if back { // else the thread ends with the goroutine
			runtime.UnlockOSThread()
		}
		ch <- res{fd, err}
	}()
	r := <-ch
	return r.fd, r.err
}

func inNetns(pid int) (fd int, back bool, err error) {
	own, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, true, fmt.Errorf("own netns: %w", err)
	}
	defer unix.Close(own)
	target, err := unix.Open(procfs.Path(pid, "ns/net"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, true, fmt.Errorf("netns of %d: %w", pid, err)
	}
	defer unix.Close(target)
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		return -1, true, fmt.Errorf("join the netns of %d: %w", pid, err)
	}
	fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if serr := unix.Setns(own, unix.CLONE_NEWNET); serr != nil {
		if err == nil {
			unix.Close(fd)
		}
		return -1, false, fmt.Errorf("leave the netns of %d: %w", pid, serr)
	}
	if err != nil {
		return -1, true, fmt.Errorf("netlink socket in the netns of %d: %w", pid, err)
	}
	return fd, true, nil
}

// nlRequest sends a rtnetlink request (body after the header) and
// returns the messages of the answer; an error answer is its errno.
func nlRequest(fd int, typ, flags uint16, body []byte) ([]syscall.NetlinkMessage, error) {
	hdr := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(body))
	b := append(hdr, body...)
	le.PutUint32(b[0:], uint32(len(b)))
	le.PutUint16(b[4:], typ)
	le.PutUint16(b[6:], flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	le.PutUint32(b[8:], 1)
	if err := unix.Sendto(fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, err
	}
	var out []syscall.NetlinkMessage
	for {
		// A buffer per read: the messages kept point into it.
		buf := make([]byte, 64<<10)
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return nil, err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) < 4 {
					return nil, fmt.Errorf("short netlink error")
				}
				if e := int32(le.Uint32(m.Data)); e != 0 {
					return nil, unix.Errno(-e)
				}
				return out, nil // the ack
			}
			out = append(out, m)
		}
	}
}

func nlAttr(typ uint16, data []byte) []byte {
	l := unix.SizeofRtAttr + len(data)
	b := make([]byte, (l+3)&^3)
	le.PutUint16(b, uint16(l))
	le.PutUint16(b[2:], typ)
	copy(b[unix.SizeofRtAttr:], data)
	return b
}

// link is what tunLink read of a link.
type link struct {
	index        int32
	up           bool
	mtu          uint32
	hwaddr       []byte
	carrier      bool // IFLA_CARRIER (true when the kernel omits it)
	owner, group int64
	addrs        []model.TunAddr
}

// tunLink reads the link name: ENODEV when there is none.
func tunLink(nl int, name string) (*link, error) {
	body := make([]byte, unix.SizeofIfInfomsg)
	body = append(body, nlAttr(unix.IFLA_IFNAME, append([]byte(name), 0))...)
	msgs, err := nlRequest(nl, unix.RTM_GETLINK, 0, body)
	if err != nil {
		return nil, err
	}
	if len(msgs) != 1 || len(msgs[0].Data) < unix.SizeofIfInfomsg {
		return nil, fmt.Errorf("RTM_GETLINK: %d answers", len(msgs))
	}
	m := msgs[0]
	l := &link{index: int32(le.Uint32(m.Data[4:])), up: le.Uint32(m.Data[8:])&unix.IFF_UP != 0, carrier: true, owner: -1, group: -1}
	kind := ""
	for _, a := range nested(m.Data[unix.SizeofIfInfomsg:]) {
		switch a.typ {
		case unix.IFLA_MTU:
			if len(a.val) >= 4 {
				l.mtu = le.Uint32(a.val)
			}
		case unix.IFLA_ADDRESS:
			l.hwaddr = bytes.Clone(a.val)
		case unix.IFLA_CARRIER:
			if len(a.val) >= 1 {
				l.carrier = a.val[0] != 0
			}
		case unix.IFLA_LINKINFO:
			for _, in := range nested(a.val) {
				switch in.typ {
				case unix.IFLA_INFO_KIND:
					kind = string(bytes.TrimRight(in.val, "\x00"))
				case unix.IFLA_INFO_DATA:
					for _, d := range nested(in.val) {
						switch {
						case d.typ == unix.IFLA_TUN_OWNER && len(d.val) >= 4:
							l.owner = int64(int32(le.Uint32(d.val)))
						case d.typ == unix.IFLA_TUN_GROUP && len(d.val) >= 4:
							l.group = int64(int32(le.Uint32(d.val)))
						}
					}
				}
			}
		}
	}
	if kind != "tun" {
		return nil, fmt.Errorf("link %s is of kind %q, not a tun device", name, kind)
	}
	if l.addrs, err = linkAddrs(nl, l.index); err != nil {
		return nil, err
	}
	return l, nil
}

type nlAttrVal struct {
	typ uint16
	val []byte
}

// nested splits attributes (a message's, after its fixed header, or a
// nested attribute's payload); a malformed tail is left out.
func nested(b []byte) []nlAttrVal {
	var out []nlAttrVal
	for len(b) >= unix.SizeofRtAttr {
		l := int(le.Uint16(b))
		if l < unix.SizeofRtAttr || l > len(b) {
			break
		}
		out = append(out, nlAttrVal{le.Uint16(b[2:]) &^ unix.NLA_F_NESTED, b[unix.SizeofRtAttr:l]})
		b = b[min((l+3)&^3, len(b)):]
	}
	return out
}

// linkAddrs lists the addresses of link index, IPv4 then IPv6.
func linkAddrs(nl int, index int32) ([]model.TunAddr, error) {
	var out []model.TunAddr
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		body := make([]byte, unix.SizeofIfAddrmsg)
		body[0] = fam
		msgs, err := nlRequest(nl, unix.RTM_GETADDR, unix.NLM_F_DUMP, body)
		if err != nil {
			return nil, fmt.Errorf("RTM_GETADDR: %w", err)
		}
		for i := range msgs {
			m := &msgs[i]
			if m.Header.Type != unix.RTM_NEWADDR || len(m.Data) < unix.SizeofIfAddrmsg || int32(le.Uint32(m.Data[4:])) != index {
				continue
			}
			a := model.TunAddr{Family: m.Data[0], Prefixlen: m.Data[1], Flags: uint32(m.Data[2]), Scope: m.Data[3]}
			for _, at := range nested(m.Data[unix.SizeofIfAddrmsg:]) {
				switch at.typ {
				case unix.IFA_LOCAL:
					a.Local = bytes.Clone(at.val)
				case unix.IFA_ADDRESS:
					a.Address = bytes.Clone(at.val)
				case unix.IFA_FLAGS:
					if len(at.val) >= 4 {
						a.Flags = le.Uint32(at.val)
					}
				}
			}
			out = append(out, a)
		}
	}
	return out, nil
}

// checkRoutes refuses routes through the link but the kernel's own.
func (l *link) checkRoutes(nl int) error {
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		body := make([]byte, unix.SizeofRtMsg)
		body[0] = fam
		msgs, err := nlRequest(nl, unix.RTM_GETROUTE, unix.NLM_F_DUMP, body)
		if err != nil {
			return fmt.Errorf("RTM_GETROUTE: %w", err)
		}
		for i := range msgs {
			m := &msgs[i]
			if m.Header.Type != unix.RTM_NEWROUTE || len(m.Data) < unix.SizeofRtMsg {
				continue
			}
			proto := m.Data[5]
			for _, at := range nested(m.Data[unix.SizeofRtMsg:]) {
				if at.typ == unix.RTA_OIF && len(at.val) >= 4 && int32(le.Uint32(at.val)) == l.index && proto != unix.RTPROT_KERNEL {
					return fmt.Errorf("a route through it (protocol %d) that godwit does not dump: not supported", proto)
				}
			}
		}
	}
	return nil
}

// tunConfigure gives a tun link made again the dumped hardware address,
// MTU and addresses, then brings it up as it was.
func tunConfigure(nl int, ts *model.TunState) error {
	l, err := tunLink(nl, ts.Name)
	if err != nil {
		return err
	}
	ifi := func(flags, change uint32) []byte {
		b := make([]byte, unix.SizeofIfInfomsg)
		le.PutUint32(b[4:], uint32(l.index))
		le.PutUint32(b[8:], flags)
		le.PutUint32(b[12:], change)
		return b
	}
	body := append(ifi(0, 0), nlAttr(unix.IFLA_MTU, le.AppendUint32(nil, ts.MTU))...)
	if len(ts.HwAddr) > 0 {
		body = append(body, nlAttr(unix.IFLA_ADDRESS, ts.HwAddr)...)
	}
	if _, err := nlRequest(nl, unix.RTM_NEWLINK, 0, body); err != nil {
		return fmt.Errorf("set MTU %d: %w", ts.MTU, err)
	}
	for _, a := range ts.Addrs {
		body := make([]byte, unix.SizeofIfAddrmsg)
		body[0], body[1], body[2], body[3] = a.Family, a.Prefixlen, uint8(a.Flags), a.Scope
		le.PutUint32(body[4:], uint32(l.index))
		if a.Local != nil {
			body = append(body, nlAttr(unix.IFA_LOCAL, a.Local)...)
		}
		if a.Address != nil {
			body = append(body, nlAttr(unix.IFA_ADDRESS, a.Address)...)
		}
		body = append(body, nlAttr(unix.IFA_FLAGS, le.AppendUint32(nil, a.Flags))...)
		if _, err := nlRequest(nl, unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, body); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add address %x/%d: %w", a.Local, a.Prefixlen, err)
		}
	}
	if ts.Up {
		if _, err := nlRequest(nl, unix.RTM_NEWLINK, 0, ifi(unix.IFF_UP, unix.IFF_UP)); err != nil {
			return fmt.Errorf("bring up: %w", err)
		}
	}
	return nil
}

// same refuses a link whose state differs from the dumped one: up, MTU,
// owner, group, a tap's hardware address, and every dumped address (the
// kernel may add an IPv6 link-local one of its own).
func (l *link) same(ts *model.TunState) error {
	switch {
	case l.up != ts.Up:
		return fmt.Errorf("up %v here, %v as dumped", l.up, ts.Up)
	case l.mtu != ts.MTU:
		return fmt.Errorf("MTU %d here, %d as dumped", l.mtu, ts.MTU)
	case l.owner != ts.Owner || l.group != ts.Group:
		return fmt.Errorf("owner %d group %d here, %d %d as dumped", l.owner, l.group, ts.Owner, ts.Group)
	case len(ts.HwAddr) > 0 && !bytes.Equal(l.hwaddr, ts.HwAddr):
		return fmt.Errorf("hardware address %x here, %x as dumped", l.hwaddr, ts.HwAddr)
	}
	for _, a := range ts.Addrs {
		if !slices.ContainsFunc(l.addrs, func(b model.TunAddr) bool {
			return a.Family == b.Family && a.Prefixlen == b.Prefixlen && bytes.Equal(a.Local, b.Local) && bytes.Equal(a.Address, b.Address)
		}) {
			return fmt.Errorf("address %x/%d missing", a.Address, a.Prefixlen)
		}
	}
	for _, b := range l.addrs {
		if b.Family == unix.AF_INET6 && b.Scope == unix.RT_SCOPE_LINK {
			continue
		}
		if !slices.ContainsFunc(ts.Addrs, func(a model.TunAddr) bool {
			return a.Family == b.Family && a.Prefixlen == b.Prefixlen && bytes.Equal(a.Local, b.Local) && bytes.Equal(a.Address, b.Address)
		}) {
			return fmt.Errorf("address %x/%d not in the dump", b.Address, b.Prefixlen)
		}
	}
	return nil
}
