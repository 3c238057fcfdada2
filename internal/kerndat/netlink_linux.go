package kerndat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// nlMessage is one netlink message: its type and payload.
type nlMessage struct {
	Type    uint16
	Flags   uint16
	Seq     uint32
	Payload []byte
}

// parseNetlink splits a datagram of netlink messages. It never panics on
// malformed input; it reports where the bytes stop making sense.
func parseNetlink(b []byte) ([]nlMessage, error) {
	var out []nlMessage
	off := 0
	for len(b)-off >= unix.SizeofNlMsghdr {
		l := int(binary.NativeEndian.Uint32(b[off:]))
		if l < unix.SizeofNlMsghdr || l > len(b)-off {
			return out, fmt.Errorf("netlink message at offset %d: bad length %d (%d bytes left)", off, l, len(b)-off)
		}
		out = append(out, nlMessage{
			Type:    binary.NativeEndian.Uint16(b[off+4:]),
			Flags:   binary.NativeEndian.Uint16(b[off+6:]),
			Seq:     binary.NativeEndian.Uint32(b[off+8:]),
			Payload: b[off+unix.SizeofNlMsghdr : off+l],
		})
		off += (l + 3) &^ 3 // NLMSG_ALIGN
	}
	if off < len(b) {
		return out, fmt.Errorf("netlink: %d trailing bytes at offset %d", len(b)-off, off)
	}
	return out, nil
}

// sockDiagDump sends one NETLINK_SOCK_DIAG dump request and returns the
// payloads of every SOCK_DIAG_BY_FAMILY reply.
func sockDiagDump(req []byte) ([][]byte, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("socket(NETLINK_SOCK_DIAG): %w", err)
	}
	defer unix.Close(fd)
	return sockDiagDumpOn(fd, req)
}

func sockDiagDumpOn(fd int, req []byte) ([][]byte, error) {
	if err := bounded(fd); err != nil {
		return nil, err
	}
	const seq = 0x6b64 // "kd"
	msg := make([]byte, unix.SizeofNlMsghdr+len(req))
	binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:], unix.SOCK_DIAG_BY_FAMILY)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(msg[8:], seq)
	copy(msg[unix.SizeofNlMsghdr:], req)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("send sock_diag request: %w", err)
	}
	var out [][]byte
	buf := make([]byte, 64<<10)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("receive sock_diag reply: %w", err)
		}
		msgs, err := parseNetlink(buf[:n])
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			if m.Seq != seq {
				continue
			}
			switch m.Type {
			case unix.NLMSG_DONE:
				// A dump that failed part-way ends with its error here.
				if len(m.Payload) >= 4 {
					if e := -int32(binary.NativeEndian.Uint32(m.Payload)); e > 0 {
						return nil, fmt.Errorf("sock_diag dump: %w", syscall.Errno(e))
					}
				}
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.Payload) < 4 {
					return nil, fmt.Errorf("sock_diag: short NLMSG_ERROR")
				}
				e := -int32(binary.NativeEndian.Uint32(m.Payload))
				if e == 0 {
					return out, nil
				}
				return nil, fmt.Errorf("sock_diag dump: %w", syscall.Errno(e))
			case unix.SOCK_DIAG_BY_FAMILY:
				out = append(out, append([]byte(nil), m.Payload...))
			}
		}
	}
}
