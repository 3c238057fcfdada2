package sockdiag

import (
	"testing"

	"golang.org/x/sys/unix"
)

// An MPTCP listener is found among the MPTCP sockets (protocol 262, past
// the request's byte: INET_DIAG_REQ_PROTOCOL), by its inode.
func TestDumpInetMPTCP(t *testing.T) {
	l, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_MPTCP)
	if err != nil {
		t.Fatalf("MPTCP socket: %v", err)
	}
	defer unix.Close(l)
	if err := unix.Bind(l, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(l, 5); err != nil {
		t.Fatal(err)
	}
	socks, err := DumpInet(unix.AF_INET, unix.IPPROTO_MPTCP)
	if err != nil {
		t.Fatal(err)
	}
	s := socks[ino(t, l)]
	if s == nil || s.State != 10 || s.Wqueue != 5 {
		t.Fatalf("listener %d: %+v", ino(t, l), s)
	}
}
