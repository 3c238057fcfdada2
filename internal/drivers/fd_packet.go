package drivers

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Packet sockets (AF_PACKET) are refused, naming what the socket is: its
// state (bound interface, protocol, rings, fanout group, filters,
// memberships) has no restore path here yet.

// refusePacket is the refusal of packet socket s (godwit's copy).
func refusePacket(s int) error {
	what := "AF_PACKET socket"
	if typ, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_TYPE); err == nil {
		switch typ {
		case unix.SOCK_RAW:
			what += " (SOCK_RAW"
		case unix.SOCK_DGRAM:
			what += " (SOCK_DGRAM"
		default:
			what += fmt.Sprintf(" (type %d", typ)
		}
		if sa, err := unix.Getsockname(s); err == nil {
			if ll, ok := sa.(*unix.SockaddrLinklayer); ok {
				// sll_protocol is in network byte order.
				what += fmt.Sprintf(", protocol %#04x, interface %d", ll.Protocol>>8|ll.Protocol<<8&0xff00, ll.Ifindex)
			}
		}
		what += ")"
	}
	return fmt.Errorf("%s: packet sockets are not supported yet", what)
}
