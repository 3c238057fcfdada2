package kerndat

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Each sock_diag probe makes a socket of the family, dumps the family with
// a real SOCK_DIAG_BY_FAMILY request and looks for that socket's inode in
// the reply: the dump must not only succeed but see real sockets.

func sockIno(fd int) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("fstat socket: %w", err)
	}
	return uint32(st.Ino), nil
}

func findIno(replies [][]byte, off int, ino uint32) bool {
	for _, r := range replies {
		if len(r) >= off+4 && binary.NativeEndian.Uint32(r[off:]) == ino {
			return true
		}
	}
	return false
}

func diagFind(what string, fd int, req []byte, inoOff int) error {
	ino, err := sockIno(fd)
	if err != nil {
		return err
	}
	replies, err := sockDiagDump(req)
	if errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("%s: the kernel has no diag handler for it (its *_DIAG config option is off or its module is not loaded): %w", what, err)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if !findIno(replies, inoOff, ino) {
		return fmt.Errorf("%s: dump of %d sockets lacks socket inode %d", what, len(replies), ino)
	}
	return nil
}

func probeDiagUnix() error {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket(AF_UNIX): %w", err)
	}
	defer unix.Close(fd)
	// An abstract, auto-bound listener: nothing on the file system.
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: ""}); err != nil {
		return fmt.Errorf("autobind unix socket: %w", err)
	}
	if err := unix.Listen(fd, 1); err != nil {
		return fmt.Errorf("listen unix socket: %w", err)
	}
	req := make([]byte, sizeofUnixDiagReq)
	req[0] = unix.AF_UNIX
	binary.NativeEndian.PutUint32(req[4:], ^uint32(0)) // all states
	return diagFind("unix_diag", fd, req, unixDiagMsgInoOff)
}

func inetDiagReq(family, proto, rawProto uint8) []byte {
	req := make([]byte, sizeofInetDiagReqV2)
	req[0], req[1], req[3] = family, proto, rawProto
	binary.NativeEndian.PutUint32(req[4:], ^uint32(0)) // all states
	return req
}

func probeDiagInet() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket(AF_INET): %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return fmt.Errorf("bind 127.0.0.1:0: %w", err)
	}
	if err := unix.Listen(fd, 1); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	return diagFind("inet_diag tcp", fd, inetDiagReq(unix.AF_INET, unix.IPPROTO_TCP, 0), inetDiagMsgInoOff)
}

func probeDiagInet6() error {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket(AF_INET6): %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet6{Addr: [16]byte{15: 1}}); err != nil {
		return fmt.Errorf("bind [::1]:0: %w", err)
	}
	if err := unix.Listen(fd, 1); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	return diagFind("inet_diag tcp6", fd, inetDiagReq(unix.AF_INET6, unix.IPPROTO_TCP, 0), inetDiagMsgInoOff)
}

func probeDiagNetlink() error {
	// The diag socket itself is a netlink socket: look for one made here.
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("socket(NETLINK_ROUTE): %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("bind netlink socket: %w", err)
	}
	req := make([]byte, sizeofNetlinkDiagReq)
	req[0], req[1] = unix.AF_NETLINK, ndiagProtoAll
	return diagFind("netlink_diag", fd, req, netlinkDiagMsgInoOff)
}

func probeDiagPacket() error {
	// Protocol 0: the socket receives nothing until bound to a protocol.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket(AF_PACKET): %w", err)
	}
	defer unix.Close(fd)
	req := make([]byte, sizeofPacketDiagReq)
	req[0] = unix.AF_PACKET
	return diagFind("packet_diag", fd, req, packetDiagMsgInoOff)
}

// probeDiagRaw is CRIU's net_diag_raw: raw IPv4 and IPv6 sockets.
func probeDiagRaw() error {
	for _, fam := range []struct {
		af   int
		name string
	}{{unix.AF_INET, "AF_INET"}, {unix.AF_INET6, "AF_INET6"}} {
		fd, err := unix.Socket(fam.af, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			return fmt.Errorf("socket(%s, SOCK_RAW): %w", fam.name, err)
		}
		err = diagFind("raw_diag "+fam.name, fd, inetDiagReq(uint8(fam.af), unix.IPPROTO_RAW, unix.IPPROTO_RAW), inetDiagMsgInoOff)
		unix.Close(fd)
		if err != nil {
			return err
		}
	}
	return nil
}
