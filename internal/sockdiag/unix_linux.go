// Package sockdiag asks the kernel (NETLINK_SOCK_DIAG) about sockets:
// a unix socket's type, state, bound name, peer, pending connections,
// queue lengths and shutdown state, and every inet socket's addresses,
// state, backlog and shutdown state, which no socket option tells.
package sockdiag

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// From include/uapi/linux/unix_diag.h.
const (
	udiagShowName     = 0x01
	udiagShowVFS      = 0x02
	udiagShowPeer     = 0x04
	udiagShowIcons    = 0x08
	udiagShowRqlen    = 0x10
	unixDiagName      = 0
	unixDiagVFS       = 1
	unixDiagPeer      = 2
	unixDiagIcons     = 3
	unixDiagRqlen     = 4
	unixDiagShutdown  = 6
	sizeofUnixDiagReq = 24 // struct unix_diag_req
	sizeofUnixDiagMsg = 16 // struct unix_diag_msg
)

// Unix is what sock_diag tells of a unix socket.
type Unix struct {
	Type, State uint8  // SOCK_*, and TCP_ESTABLISHED / TCP_LISTEN / TCP_CLOSE …
	Ino         uint32 // the socket's inode
	Name        []byte // bound name; abstract names start with NUL; nil when unbound
	HasVFS      bool   // bound to a path: the inode of the socket file
	VFSIno      uint32
	VFSDev      uint32
	Peer        uint32   // the peer's inode, 0 when none
	Icons       []uint32 // a listener's connections not accepted yet
	Rqueue      uint32   // a listener's backlog length, else bytes (stream) queued
	Wqueue      uint32   // a listener's max backlog, else bytes being sent
	Shutdown    uint8    // sk_shutdown: 1 receive, 2 send
}

// QueryUnix asks about the unix socket with inode ino.
func QueryUnix(ino uint32) (*Unix, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("socket(NETLINK_SOCK_DIAG): %w", err)
	}
	defer unix.Close(fd)
	const seq = 0x756e // "un"
	msg := make([]byte, unix.SizeofNlMsghdr+sizeofUnixDiagReq)
	ne := binary.NativeEndian
	ne.PutUint32(msg[0:], uint32(len(msg)))
	ne.PutUint16(msg[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(msg[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(msg[8:], seq)
	req := msg[unix.SizeofNlMsghdr:]
	req[0] = unix.AF_UNIX
	ne.PutUint32(req[4:], ^uint32(0)) // every state
	ne.PutUint32(req[8:], ino)
	ne.PutUint32(req[12:], udiagShowName|udiagShowVFS|udiagShowPeer|udiagShowIcons|udiagShowRqlen)
	ne.PutUint32(req[16:], ^uint32(0)) // INET_DIAG_NOCOOKIE: look up by inode alone
	ne.PutUint32(req[20:], ^uint32(0))
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("send sock_diag request: %w", err)
	}
	buf := make([]byte, 64<<10)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("receive sock_diag reply: %w", err)
		}
		u, err := ParseReply(buf[:n], seq)
		if err != nil {
			return nil, fmt.Errorf("sock_diag unix socket %d: %w", ino, err)
		}
		if u != nil {
			if u.Ino != ino {
				return nil, fmt.Errorf("sock_diag: asked for socket %d, told of %d", ino, u.Ino)
			}
			return u, nil
		}
	}
}

// ParseReply parses netlink messages holding the reply to request seq: a
// unix_diag_msg with its attributes, or an error. It returns nil, nil
// when the messages hold neither (read on).
func ParseReply(b []byte, seq uint32) (*Unix, error) {
	ne := binary.NativeEndian
	for len(b) > 0 {
		if len(b) < unix.SizeofNlMsghdr {
			return nil, fmt.Errorf("short netlink header (%d bytes)", len(b))
		}
		l := ne.Uint32(b)
		if l < unix.SizeofNlMsghdr || uint64(l) > uint64(len(b)) {
			return nil, fmt.Errorf("netlink message of %d bytes in %d", l, len(b))
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
		case unix.NLMSG_ERROR:
			if len(payload) < 4 {
				return nil, errors.New("short NLMSG_ERROR")
			}
			if e := -int32(ne.Uint32(payload)); e > 0 {
				return nil, unix.Errno(e)
			}
			return nil, errors.New("no such socket")
		case unix.SOCK_DIAG_BY_FAMILY:
			return parseUnixMsg(payload)
		}
	}
	return nil, nil
}

func parseUnixMsg(p []byte) (*Unix, error) {
	ne := binary.NativeEndian
	if len(p) < sizeofUnixDiagMsg {
		return nil, fmt.Errorf("short unix_diag_msg (%d bytes)", len(p))
	}
	if p[0] != unix.AF_UNIX {
		return nil, fmt.Errorf("reply of family %d", p[0])
	}
	u := &Unix{Type: p[1], State: p[2], Ino: ne.Uint32(p[4:])}
	a := p[sizeofUnixDiagMsg:]
	for len(a) >= 4 {
		l, typ := ne.Uint16(a), ne.Uint16(a[2:])
		if l < 4 || int(l) > len(a) {
			return nil, fmt.Errorf("attribute %d of %d bytes in %d", typ, l, len(a))
		}
		v := a[4:l]
		short := func(n int) error { return fmt.Errorf("attribute %d: %d bytes, want %d", typ, len(v), n) }
		switch typ &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER) {
		case unixDiagName:
			u.Name = append([]byte{}, v...)
		case unixDiagVFS:
			if len(v) < 8 {
				return nil, short(8)
			}
			u.HasVFS, u.VFSIno, u.VFSDev = true, ne.Uint32(v), ne.Uint32(v[4:])
		case unixDiagPeer:
			if len(v) < 4 {
				return nil, short(4)
			}
			u.Peer = ne.Uint32(v)
		case unixDiagIcons:
			for i := 0; i+4 <= len(v); i += 4 {
				u.Icons = append(u.Icons, ne.Uint32(v[i:]))
			}
		case unixDiagRqlen:
			if len(v) < 8 {
				return nil, short(8)
			}
			u.Rqueue, u.Wqueue = ne.Uint32(v), ne.Uint32(v[4:])
		case unixDiagShutdown:
			if len(v) < 1 {
				return nil, short(1)
			}
			u.Shutdown = v[0]
		}
		n := (int(l) + 3) &^ 3
		if n > len(a) {
			n = len(a)
		}
		a = a[n:]
	}
	return u, nil
}
