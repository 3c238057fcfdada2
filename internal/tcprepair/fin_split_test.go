package tcprepair

import (
	"bytes"
	"testing"

	"golang.org/x/sys/unix"

	"godwit/internal/netlock"
)

// A connection whose FIN waits behind data it has not sent, with data
// sent and not yet acknowledged before it, is dumped with the split of
// its send queue it has: SIOCOUTQNSD counts the unsent FIN too, and a
// dump that took it for data restored snd_nxt one byte short (a peer
// holding the whole sent part then saw its ACKs refused for good: the
// TestNetClosingStates stall). The connection is made with that split
// by a restore, under a network lock that keeps every packet of it in
// (so nothing is acknowledged, nothing reset), and dumped again.
func TestDumpFinBehindUnsent(t *testing.T) {
	for _, c := range []struct {
		state   uint8
		peerFin uint32
	}{{StateFinWait1, 0}, {StateLastAck, 1}} {
		t.Run(StateName(c.state), func(t *testing.T) {
			// A port nobody listens on: the lock answers for the peer.
			l, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := unix.Bind(l, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
				t.Fatal(err)
			}
			remote, _ := unix.Getsockname(l)
			unix.Close(l)
			local := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
			lock, err := netlock.New(netlock.Nftables, unix.Getpid(), "")
			if err != nil {
				t.Fatal(err)
			}
			defer lock.Unlock()
			// A free local port, so that the lock can name the
			// connection before it exists.
			p, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := unix.Bind(p, local); err != nil {
				t.Fatal(err)
			}
			la, _ := unix.Getsockname(p)
			unix.Close(p)
			local = la.(*unix.SockaddrInet4)
			if err := lock.Lock([]netlock.Conn{{Local: addrPort(local), Remote: addrPort(remote)}}); err != nil {
				t.Fatal(err)
			}
			const sent, unsent = 3000, 5000
			data := pattern("split", sent+unsent)
			in := uint32(1_000_000)
			out := uint32(7_000_000) // snd_una
			st := &Stream{
				State: c.state, InSeq: in + c.peerFin, OutSeq: out + uint32(len(data)) + 1,
				OutQ: data, Unsent: unsent, MSSClamp: 1460,
				// The peer's window holds exactly the sent part: the
				// rest stays unsent, the FIN behind it.
				Window: &Window{SndWl1: in - 1, SndWnd: sent, MaxWindow: 65535, RcvWnd: 65535, RcvWup: in},
			}
			s, err := Restore(unix.AF_INET, unix.IPPROTO_TCP, local, remote, st, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(s)
			if got := state(t, s); got != c.state {
				t.Fatalf("restored in %s", StateName(got))
			}
			if err := On(s); err != nil {
				t.Fatal(err)
			}
			got, err := Dump(s)
			if err != nil {
				t.Fatal(err)
			}
			if got.Unsent != unsent || !bytes.Equal(got.OutQ, data) || got.OutSeq != st.OutSeq || got.InSeq != st.InSeq {
				t.Fatalf("dumped %d bytes unsent of %d (want %d of %d), out seq %d (want %d), in seq %d (want %d)",
					got.Unsent, len(got.OutQ), unsent, len(data), got.OutSeq, st.OutSeq, got.InSeq, st.InSeq)
			}
		})
	}
}
