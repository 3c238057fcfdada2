package tcprepair

import (
	"encoding/binary"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Restore makes a TCP socket of family (AF_INET, AF_INET6) and protocol
// (IPPROTO_TCP, or IPPROTO_MPTCP for a connection that fell back to
// TCP), hands it to prepare (socket options; may be nil), binds it to
// local and rebuilds st on it as a connection to remote, without a
// packet sent until it leaves repair mode. A connection dumped in a
// closing state is restored established and its shutdowns replayed: our
// FIN sent again (the peer acknowledges a duplicate), the peer's FIN
// delivered to the socket (finReceived) from a raw socket. The socket
// returned is out of repair mode.
func Restore(family, proto int, local, remote unix.Sockaddr, st *Stream, prepare func(int) error) (_ int, err error) {
	if err := Supported(st.State); err != nil {
		return -1, err
	}
	ourFin, peerFin := uint32(0), uint32(0)
	if finSent(st.State) {
		ourFin = 1
	}
	if finReceived(st.State) {
		peerFin = 1
	}
	if st.Unsent > uint32(len(st.OutQ)) {
		return -1, fmt.Errorf("%d bytes unsent of a send queue of %d", st.Unsent, len(st.OutQ))
	}
	s, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	defer func() {
		if err != nil {
			// Still in repair mode where it failed: closes silently.
			unix.Close(s)
		}
	}()
	// In repair mode bind takes the port even from a listener or
	// another connection holding it (SK_FORCE_REUSE).
	if err := On(s); err != nil {
		return -1, err
	}
	if prepare != nil {
		if err := prepare(s); err != nil {
			return -1, err
		}
	}
	if err := unix.Bind(s, local); err != nil {
		return -1, fmt.Errorf("bind: %w", err)
	}
	for _, q := range []struct {
		queue int
		seq   uint32
	}{{tcpRecvQueue, st.InSeq - uint32(len(st.InQ)) - peerFin}, {tcpSendQueue, st.OutSeq - uint32(len(st.OutQ)) - ourFin}} {
		if err := setQueue(s, q.queue); err != nil {
			return -1, err
		}
		if err := unix.SetsockoptInt(s, unix.SOL_TCP, unix.TCP_QUEUE_SEQ, int(int32(q.seq))); err != nil {
			return -1, fmt.Errorf("TCP_QUEUE_SEQ: %w", err)
		}
	}
	if st.Options&OptTimestamps != 0 {
		if err := unix.SetsockoptInt(s, unix.SOL_TCP, unix.TCP_TIMESTAMP, int(int32(st.Timestamp))); err != nil {
			return -1, fmt.Errorf("TCP_TIMESTAMP: %w", err)
		}
	}
	// In repair mode connect sends no SYN: the socket is established.
	if err := unix.Connect(s, remote); err != nil {
		return -1, fmt.Errorf("connect (repair): %w", err)
	}
	opts := []unix.TCPRepairOpt{{Code: unix.TCPOPT_MAXSEG, Val: st.MSSClamp}}
	if st.Options&OptWscale != 0 {
		opts = append(opts, unix.TCPRepairOpt{Code: unix.TCPOPT_WINDOW, Val: st.SndWscale | st.RcvWscale<<16})
	}
	if st.Options&OptSACK != 0 {
		opts = append(opts, unix.TCPRepairOpt{Code: unix.TCPOPT_SACK_PERMITTED})
	}
	if st.Options&OptTimestamps != 0 {
		opts = append(opts, unix.TCPRepairOpt{Code: unix.TCPOPT_TIMESTAMP})
	}
	if err := unix.SetsockoptTCPRepairOpt(s, unix.SOL_TCP, unix.TCP_REPAIR_OPTIONS, opts); err != nil {
		return -1, fmt.Errorf("TCP_REPAIR_OPTIONS: %w", err)
	}
	if err := fill(s, tcpRecvQueue, st.InQ); err != nil {
		return -1, fmt.Errorf("receive queue: %w", err)
	}
	sent := st.OutQ[:uint32(len(st.OutQ))-st.Unsent]
	unsent := st.OutQ[len(sent):]
	// Refilling a send queue larger than the buffer would block: the
	// buffer is forced up for the refill (and the unsent writes) and
	// put back after. An empty queue needs neither.
	if len(st.OutQ) > 0 {
		oldSnd, gerr := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUF)
		if gerr != nil {
			return -1, fmt.Errorf("SO_SNDBUF: %w", gerr)
		}
		if need := 2*len(st.OutQ) + 64<<10; need > oldSnd {
			if err := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, need); err != nil {
				return -1, fmt.Errorf("SO_SNDBUFFORCE %d: %w", need, err)
			}
			defer func() {
				if e := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, oldSnd/2); e != nil && err == nil {
					err = fmt.Errorf("SO_SNDBUFFORCE %d: %w", oldSnd/2, e)
				}
			}()
		}
	}
	if err := fill(s, tcpSendQueue, sent); err != nil {
		return -1, fmt.Errorf("send queue: %w", err)
	}
	if w := st.Window; w != nil {
		var b [sizeofRepairWindow]byte
		ne := binary.NativeEndian
		ne.PutUint32(b[0:], w.SndWl1)
		ne.PutUint32(b[4:], w.SndWnd)
		ne.PutUint32(b[8:], w.MaxWindow)
		ne.PutUint32(b[12:], w.RcvWnd)
		rcvWup := w.RcvWup
		if rcvNxt := st.InSeq - peerFin; int32(rcvWup-rcvNxt) > 0 {
			// Advertised after the peer's FIN, not replayed yet.
			rcvWup = rcvNxt
		}
		ne.PutUint32(b[16:], rcvWup)
		if _, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(s), unix.SOL_TCP, unix.TCP_REPAIR_WINDOW, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0); e != 0 {
			return -1, fmt.Errorf("TCP_REPAIR_WINDOW: %w", e)
		}
	}
	if err := setQueue(s, tcpNoQueue); err != nil {
		return -1, err
	}
	if err := Off(s); err != nil {
		return -1, err
	}
	// What was never sent goes out as the program's own writes would.
	if err := fill(s, -1, unsent); err != nil {
		return -1, fmt.Errorf("unsent data: %w", err)
	}
	if peerFin != 0 && ourFin != 0 && st.State != StateLastAck {
		// CLOSING: our FIN left before the peer's arrived.
		if err := unix.Shutdown(s, unix.SHUT_WR); err != nil {
			return -1, fmt.Errorf("replay shutdown: %w", err)
		}
	}
	if peerFin != 0 {
		if err := injectFIN(family, local, remote, st, s); err != nil {
			return -1, fmt.Errorf("replay the peer's FIN: %w", err)
		}
	}
	if ourFin != 0 && !(peerFin != 0 && st.State != StateLastAck) {
		if err := unix.Shutdown(s, unix.SHUT_WR); err != nil {
			return -1, fmt.Errorf("replay shutdown: %w", err)
		}
	}
	return s, nil
}

// fill writes b to s: into queue q in repair mode, or (q < 0) as plain
// writes.
func fill(s, q int, b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if q >= 0 {
		if err := setQueue(s, q); err != nil {
			return err
		}
	}
	for len(b) > 0 {
		n, err := unix.SendmsgN(s, b, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("%d bytes left: %w", len(b), err)
		}
		b = b[n:]
	}
	return nil
}
