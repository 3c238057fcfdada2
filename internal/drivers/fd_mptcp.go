package drivers

import (
	"fmt"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
	"godwit/internal/tcprepair"
)

// refuseMPTCPConn refuses a connected MPTCP socket. A connection an
// MPTCP listener accepted from a plain TCP client is a TCP socket (and
// restored as one); an MPTCP socket stays one, with subflows or fallen
// back to plain TCP (a client whose server has no MPTCP). The kernel
// passes the options of a fallen-back socket through to its TCP subflow,
// so it could be read in repair mode, but it cannot be rebuilt as MPTCP:
// a new MPTCP socket refuses TCP_REPAIR (ENOPROTOOPT), and a plain TCP
// socket in its place would answer SO_PROTOCOL differently.
func refuseMPTCPConn(s int, st *model.InetSocketState, what string) error {
	state := tcprepair.StateName(uint8(st.State))
	// Only a fallen-back socket answers TCP_REPAIR (its subflow's).
	if _, err := unix.GetsockoptInt(s, unix.SOL_TCP, unix.TCP_REPAIR); err == nil {
		return fmt.Errorf("%s: connected MPTCP socket fallen back to plain TCP (%s): not supported (a new MPTCP socket cannot enter TCP repair mode to rebuild it)", what, state)
	}
	return fmt.Errorf("%s: connected MPTCP socket with subflows (%s): not supported (the kernel has no repair mode for MPTCP)", what, state)
}
