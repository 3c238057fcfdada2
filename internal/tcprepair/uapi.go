package tcprepair

import "strconv"

// What golang.org/x/sys/unix lacks of include/uapi/linux/tcp.h and
// include/net/tcp_states.h.
const (
	// TCP_REPAIR_QUEUE values: which queue TCP_QUEUE_SEQ, send and
	// MSG_PEEK act on in repair mode.
	tcpNoQueue   = 0
	tcpRecvQueue = 1
	tcpSendQueue = 2

	// tcpi_options bits of struct tcp_info.
	OptTimestamps = 1
	OptSACK       = 2
	OptWscale     = 4

	// sizeofRepairWindow is struct tcp_repair_window: snd_wl1, snd_wnd,
	// max_window, rcv_wnd, rcv_wup, each a __u32.
	sizeofRepairWindow = 20
)

// The kernel's TCP states (include/net/tcp_states.h).
const (
	StateEstablished = 1
	StateSynSent     = 2
	StateSynRecv     = 3
	StateFinWait1    = 4
	StateFinWait2    = 5
	StateTimeWait    = 6
	StateClose       = 7
	StateCloseWait   = 8
	StateLastAck     = 9
	StateListen      = 10
	StateClosing     = 11
)

// StateName names a kernel TCP state.
func StateName(s uint8) string {
	names := [...]string{1: "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING"}
	if int(s) < len(names) && names[s] != "" {
		return names[s]
	}
	return "state " + strconv.Itoa(int(s))
}
