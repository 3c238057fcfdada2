package sockdiag

import (
	"testing"

	"golang.org/x/sys/unix"
)

// A listener tells its address, backlog and the connection waiting in
// its accept queue; the connection its ends and a shutdown.
func TestDumpInet(t *testing.T) {
	l, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(l)
	if err := unix.Bind(l, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(l, 9); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(l)
	c, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(c)
	if err := unix.Connect(c, sa); err != nil {
		t.Fatal(err)
	}
	if err := unix.Shutdown(c, unix.SHUT_RD); err != nil {
		t.Fatal(err)
	}
	socks, err := DumpInet(unix.AF_INET, unix.IPPROTO_TCP)
	if err != nil {
		t.Fatal(err)
	}
	ls := socks[ino(t, l)]
	if ls == nil || ls.State != 10 || ls.Wqueue != 9 || ls.Rqueue != 1 || ls.Src.Port() != uint16(sa.(*unix.SockaddrInet4).Port) || ls.Src.Addr().String() != "127.0.0.1" {
		t.Errorf("listener: %+v", ls)
	}
	cs := socks[ino(t, c)]
	if cs == nil || cs.State != 1 || cs.Dst.Port() != ls.Src.Port() || cs.Shutdown != 1 {
		t.Errorf("connection: %+v", cs)
	}
}

func FuzzParseInetDump(f *testing.F) {
	f.Add([]byte{})
	f.Add(make([]byte, 16+72+8))
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseInetDump(b, 0)
		ParseInetDump(b, 0x696e)
	})
}
