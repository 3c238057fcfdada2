package tcprepair

import (
	"encoding/binary"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/netlock"
)

// injectFIN delivers to the restored socket (at local) the FIN its peer
// (remote) had sent before the dump, as a segment from the peer's
// address built on a raw socket: TCP has no call that makes a socket
// take a FIN. The segment acknowledges what the peer had acknowledged
// (snd_una), so it is accepted and changes nothing else. It waits until
// the socket has taken it: a FIN lost here (dropped by a firewall or a
// network lock) would leave the connection in the wrong state.
func injectFIN(family int, local, remote unix.Sockaddr, st *Stream, s int) error {
	ourFin := uint32(0)
	if finSent(st.State) {
		ourFin = 1
	}
	seq := st.InSeq - 1
	ack := st.OutSeq - uint32(len(st.OutQ)) - ourFin
	win := uint32(0xffff)
	if st.Window != nil {
		win = st.Window.SndWnd >> st.SndWscale
		if win > 0xffff {
			win = 0xffff
		}
	}
	tcp := make([]byte, 20)
	be := binary.BigEndian
	var pkt []byte
	var dst unix.Sockaddr
	var src, dstIP []byte
	switch family {
	case unix.AF_INET:
		l, ok1 := local.(*unix.SockaddrInet4)
		r, ok2 := remote.(*unix.SockaddrInet4)
		if !ok1 || !ok2 {
			return fmt.Errorf("AF_INET connection with addresses %T, %T", local, remote)
		}
		be.PutUint16(tcp[0:], uint16(r.Port))
		be.PutUint16(tcp[2:], uint16(l.Port))
		src, dstIP = r.Addr[:], l.Addr[:]
		dst = &unix.SockaddrInet4{Addr: l.Addr}
	case unix.AF_INET6:
		l, ok1 := local.(*unix.SockaddrInet6)
		r, ok2 := remote.(*unix.SockaddrInet6)
		if !ok1 || !ok2 {
			return fmt.Errorf("AF_INET6 connection with addresses %T, %T", local, remote)
		}
		be.PutUint16(tcp[0:], uint16(r.Port))
		be.PutUint16(tcp[2:], uint16(l.Port))
		src, dstIP = r.Addr[:], l.Addr[:]
		dst = &unix.SockaddrInet6{Addr: l.Addr, ZoneId: l.ZoneId}
	default:
		return fmt.Errorf("family %d", family)
	}
	be.PutUint32(tcp[4:], seq)
	be.PutUint32(tcp[8:], ack)
	tcp[12] = 5 << 4
	tcp[13] = 0x11 // FIN|ACK
	be.PutUint16(tcp[14:], uint16(win))
	be.PutUint16(tcp[16:], checksum(src, dstIP, tcp))
	var rs int
	var err error
	if family == unix.AF_INET {
		// IP_HDRINCL: the source is the peer's address, local or not.
		rs, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		ip := make([]byte, 20)
		ip[0] = 0x45
		be.PutUint16(ip[2:], uint16(20+len(tcp)))
		ip[8] = 64
		ip[9] = unix.IPPROTO_TCP
		copy(ip[12:], src)
		copy(ip[16:], dstIP)
		pkt = append(ip, tcp...)
	} else {
		rs, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		ip := make([]byte, 40)
		ip[0] = 6 << 4
		be.PutUint16(ip[4:], uint16(len(tcp)))
		ip[6] = unix.IPPROTO_TCP
		ip[7] = 64
		copy(ip[8:], src)
		copy(ip[24:], dstIP)
		pkt = append(ip, tcp...)
	}
	if err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(rs)
	// The network lock holds the connection's packets until the tree
	// runs: this one must pass it.
	if err := unix.SetsockoptInt(rs, unix.SOL_SOCKET, unix.SO_MARK, netlock.Mark); err != nil {
		return fmt.Errorf("raw socket: SO_MARK: %w", err)
	}
	if err := unix.Sendto(rs, pkt, 0, dst); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	for deadline := time.Now().Add(time.Second); ; {
		in, err := GetInfo(s)
		if err != nil {
			return err
		}
		switch in.State {
		case StateCloseWait, StateClosing, StateLastAck, StateTimeWait, StateClose:
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still %s: the segment was not taken (dropped by a firewall or a network lock?)", StateName(in.State))
		}
		time.Sleep(time.Millisecond)
	}
}

// checksum is TCP's over the pseudo-header of src and dst (4 or 16
// bytes each) and the segment.
func checksum(src, dst, seg []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(src)
	add(dst)
	sum += unix.IPPROTO_TCP + uint32(len(seg))
	add(seg)
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
