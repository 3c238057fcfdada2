// Package tcprepair reads and rebuilds established TCP connections with
// the kernel's TCP_REPAIR mode: sequence numbers, both queues, the
// options negotiated at the handshake, the window and the timestamp
// clock. A socket in repair mode sends nothing: closing it sends no FIN
// or RST, so a connection dumped in repair mode and then closed is not
// torn down at its peer, and one rebuilt in repair mode is not
// announced (no SYN) — the peer sees only delay.
package tcprepair

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Stream is one connection's state, the fields of CRIU's
// tcp_stream_entry. The sequence numbers are the kernel's: InSeq is
// rcv_nxt (counting a FIN received), OutSeq is write_seq (counting a FIN
// sent).
type Stream struct {
	State     uint8 // the kernel TCP state at the dump
	InSeq     uint32
	OutSeq    uint32
	InQ       []byte // received, not read by the program
	OutQ      []byte // written by the program, not acknowledged by the peer
	Unsent    uint32 // of OutQ's tail, never sent
	Options   uint32 // OptTimestamps, OptSACK, OptWscale
	SndWscale uint32
	RcvWscale uint32
	MSSClamp  uint32
	Timestamp uint32 // TCP_TIMESTAMP: the connection's timestamp clock
	Window    *Window
}

// Window is struct tcp_repair_window.
type Window struct {
	SndWl1, SndWnd, MaxWindow, RcvWnd, RcvWup uint32
}

// Supported reports whether a connection in state s can be dumped and
// restored, and why not.
func Supported(s uint8) error {
	switch s {
	case StateEstablished, StateCloseWait, StateFinWait1, StateFinWait2, StateClosing, StateLastAck:
		return nil
	case StateSynSent, StateSynRecv:
		return fmt.Errorf("connection in %s (not established yet): not supported (--skip-in-flight skips it)", StateName(s))
	}
	return fmt.Errorf("connection in %s: not supported", StateName(s))
}

// finSent: our FIN is in OutSeq (queued or sent, perhaps acknowledged).
func finSent(s uint8) bool {
	return s == StateFinWait1 || s == StateFinWait2 || s == StateClosing || s == StateLastAck
}

// finReceived: the peer's FIN is in InSeq.
func finReceived(s uint8) bool {
	return s == StateCloseWait || s == StateClosing || s == StateLastAck
}

// On puts s in repair mode.
func On(s int) error {
	if err := unix.SetsockoptInt(s, unix.SOL_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_ON); err != nil {
		return fmt.Errorf("TCP_REPAIR on: %w", err)
	}
	return nil
}

// Off takes s out of repair mode (the kernel then sends a window probe,
// which tells the peer the connection is alive).
func Off(s int) error {
	if err := unix.SetsockoptInt(s, unix.SOL_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_OFF); err != nil {
		return fmt.Errorf("TCP_REPAIR off: %w", err)
	}
	return nil
}

// Info is what TCP_INFO tells that repair needs.
type Info struct {
	State                uint8
	Options              uint8
	SndWscale, RcvWscale uint8
}

// GetInfo reads TCP_INFO. x/sys/unix's TCPInfo lacks the window-scale
// bitfield (byte 6 of struct tcp_info: snd_wscale low nibble,
// rcv_wscale high), so the bytes are read raw.
func GetInfo(s int) (Info, error) {
	var b [256]byte
	l := uint32(len(b))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(s), unix.SOL_TCP, unix.TCP_INFO, uintptr(unsafe.Pointer(&b[0])), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
		return Info{}, fmt.Errorf("getsockopt TCP_INFO: %w", e)
	}
	if l < 8 {
		return Info{}, fmt.Errorf("TCP_INFO of %d bytes", l)
	}
	return Info{State: b[0], Options: b[5], SndWscale: b[6] & 0xf, RcvWscale: b[6] >> 4}, nil
}

func ioctlInt(s int, req uint) (int, error) {
	v, err := unix.IoctlGetInt(s, req)
	if err != nil {
		return 0, err
	}
	return v, nil
}

func setQueue(s, q int) error {
	if err := unix.SetsockoptInt(s, unix.SOL_TCP, unix.TCP_REPAIR_QUEUE, q); err != nil {
		return fmt.Errorf("TCP_REPAIR_QUEUE %d: %w", q, err)
	}
	return nil
}

// Dump reads the connection of s, which must be in repair mode (On):
// nothing is taken from its queues.
func Dump(s int) (*Stream, error) {
	in, err := GetInfo(s)
	if err != nil {
		return nil, err
	}
	if err := Supported(in.State); err != nil {
		return nil, err
	}
	st := &Stream{State: in.State, Options: uint32(in.Options) & (OptTimestamps | OptSACK | OptWscale)}
	if st.Options&OptWscale != 0 {
		st.SndWscale, st.RcvWscale = uint32(in.SndWscale), uint32(in.RcvWscale)
	}
	inq, err := ioctlInt(s, unix.SIOCINQ)
	if err != nil {
		return nil, fmt.Errorf("SIOCINQ: %w", err)
	}
	outq, err := ioctlInt(s, unix.SIOCOUTQ)
	if err != nil {
		return nil, fmt.Errorf("SIOCOUTQ: %w", err)
	}
	unsent, err := ioctlInt(s, unix.SIOCOUTQNSD)
	if err != nil {
		return nil, fmt.Errorf("SIOCOUTQNSD: %w", err)
	}
	defer setQueue(s, tcpNoQueue)
	if err := setQueue(s, tcpRecvQueue); err != nil {
		return nil, err
	}
	v, err := unix.GetsockoptInt(s, unix.SOL_TCP, unix.TCP_QUEUE_SEQ)
	if err != nil {
		return nil, fmt.Errorf("TCP_QUEUE_SEQ (receive): %w", err)
	}
	st.InSeq = uint32(v)
	if st.InQ, err = peek(s, inq); err != nil {
		return nil, fmt.Errorf("receive queue: %w", err)
	}
	if len(st.InQ) != inq {
		return nil, fmt.Errorf("receive queue: %d bytes queued, %d read", inq, len(st.InQ))
	}
	if err := noUrgent(s); err != nil {
		return nil, err
	}
	if err := setQueue(s, tcpSendQueue); err != nil {
		return nil, err
	}
	if v, err = unix.GetsockoptInt(s, unix.SOL_TCP, unix.TCP_QUEUE_SEQ); err != nil {
		return nil, fmt.Errorf("TCP_QUEUE_SEQ (send): %w", err)
	}
	st.OutSeq = uint32(v)
	// SIOCOUTQ and SIOCOUTQNSD count a FIN not yet acknowledged (or
	// not yet sent) as a byte; the queue holds no byte for it.
	if st.OutQ, err = peek(s, outq); err != nil {
		return nil, fmt.Errorf("send queue: %w", err)
	}
	if d := outq - len(st.OutQ); d != 0 && !(d == 1 && finSent(st.State)) {
		return nil, fmt.Errorf("send queue: %d bytes queued, %d read", outq, len(st.OutQ))
	}
	// SIOCOUTQNSD (write_seq - snd_nxt) counts our FIN too while it is
	// not sent, and it is sent only after every byte before it: a
	// count past zero in a state with our FIN queued is one more than
	// the data not sent. Kept, that byte would make the restored
	// snd_nxt one short, and a peer that had the whole sent part (its
	// ACK held by the lock) would find every ACK it sends for it past
	// snd_nxt, refused: the connection would stall for good.
	if unsent > 0 && finSent(st.State) {
		unsent--
	}
	if unsent > len(st.OutQ) {
		return nil, fmt.Errorf("send queue: %d bytes not sent of %d queued", unsent, len(st.OutQ))
	}
	st.Unsent = uint32(unsent)
	if v, err = unix.GetsockoptInt(s, unix.SOL_TCP, unix.TCP_MAXSEG); err != nil {
		return nil, fmt.Errorf("TCP_MAXSEG: %w", err)
	}
	st.MSSClamp = uint32(v) // in repair mode: the clamp the handshake set
	if st.Options&OptTimestamps != 0 {
		if v, err = unix.GetsockoptInt(s, unix.SOL_TCP, unix.TCP_TIMESTAMP); err != nil {
			return nil, fmt.Errorf("TCP_TIMESTAMP: %w", err)
		}
		st.Timestamp = uint32(v)
	}
	var w [sizeofRepairWindow]byte
	l := uint32(len(w))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(s), unix.SOL_TCP, unix.TCP_REPAIR_WINDOW, uintptr(unsafe.Pointer(&w[0])), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
		return nil, fmt.Errorf("TCP_REPAIR_WINDOW: %w", e)
	}
	ne := binary.NativeEndian
	st.Window = &Window{SndWl1: ne.Uint32(w[0:]), SndWnd: ne.Uint32(w[4:]), MaxWindow: ne.Uint32(w[8:]), RcvWnd: ne.Uint32(w[12:]), RcvWup: ne.Uint32(w[16:])}
	return st, nil
}

// peek reads the queue TCP_REPAIR_QUEUE selects, up to n bytes,
// leaving it queued: one peek reads all the queue holds.
func peek(s, n int) ([]byte, error) {
	if n == 0 {
		return nil, nil
	}
	buf := make([]byte, n)
	for {
		r, _, err := unix.Recvfrom(s, buf, unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return nil, nil
		case err != nil:
			return nil, fmt.Errorf("peek: %w", err)
		}
		return buf[:r], nil
	}
}

// ErrUrgent refuses a connection whose receive side holds urgent
// (MSG_OOB) data: TCP_REPAIR can queue bytes but cannot set the urgent
// mark or byte (tcp_sock's urg_data and urg_seq), reads and SIOCINQ stop
// at the mark, and so a restore would lose the urgent byte and whatever
// follows it while the sequence numbers count them as received.
var ErrUrgent = errors.New("urgent (MSG_OOB) data not yet read: TCP_REPAIR cannot restore the urgent mark")

// noUrgent refuses s (in repair mode) when urgent data waits unread. A
// peek with MSG_OOB (which the kernel serves before any repair-mode
// check and which leaves the byte unread) answers 1 when the urgent byte
// is there, EAGAIN when it is announced but not yet received, and EINVAL
// when there is none, it was read, or SO_OOBINLINE keeps it inline;
// SIOCATMARK then says whether the next read is at an inline mark.
func noUrgent(s int) error {
	var b [1]byte
	for {
		_, _, err := unix.Recvfrom(s, b[:], unix.MSG_OOB|unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err == nil:
			return fmt.Errorf("receive queue: %w", ErrUrgent)
		case errors.Is(err, unix.EAGAIN):
			return fmt.Errorf("receive queue: urgent pointer received, its byte not yet: %w", ErrUrgent)
		case !errors.Is(err, unix.EINVAL):
			return fmt.Errorf("urgent data probe: %w", err)
		}
		break
	}
	mark, err := unix.IoctlGetInt(s, unix.SIOCATMARK)
	if err != nil {
		return fmt.Errorf("SIOCATMARK: %w", err)
	}
	if mark != 0 {
		return fmt.Errorf("receive queue at the urgent mark: %w", ErrUrgent)
	}
	return nil
}
