package drivers

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseProcNetlink(t *testing.T) {
	tab := []byte(`sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode
0000000000000000 0   4242       00000011 512      0        0     2        0        9001
0000000000000000 16  0          00000000 0        0        1     2        0        9002
`)
	p, ok, err := parseProcNetlink(tab, 9001)
	if err != nil || !ok || p != (netlinkProc{Protocol: 0, PortID: 4242, Rmem: 512}) {
		t.Fatalf("9001: %+v %v %v", p, ok, err)
	}
	p, ok, err = parseProcNetlink(tab, 9002)
	if err != nil || !ok || p != (netlinkProc{Protocol: 16, Dump: true}) {
		t.Fatalf("9002: %+v %v %v", p, ok, err)
	}
	if _, ok, err := parseProcNetlink(tab, 1); ok || err != nil {
		t.Fatalf("missing socket: %v %v", ok, err)
	}
	for _, bad := range []string{"", "nonsense\n", "sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode\n0 0 x 0 0 0 0 0 0 5\n",
		"sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode\n0 0\n"} {
		if _, ok, err := parseProcNetlink([]byte(bad), 5); ok || (err == nil && bad != "") {
			t.Errorf("%q: ok %v err %v", bad, ok, err)
		}
	}
}

// The kernel's own table: a socket of ours is found with its port id.
func TestProcNetlinkLive(t *testing.T) {
	s, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(s)
	if err := unix.Bind(s, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(s)
	var st unix.Stat_t
	if err := unix.Fstat(s, &st); err != nil {
		t.Fatal(err)
	}
	p, err := procNetlink(os.Getpid(), st.Ino)
	if err != nil {
		t.Fatal(err)
	}
	if p.PortID != sa.(*unix.SockaddrNetlink).Pid || p.Protocol != unix.NETLINK_ROUTE || p.Rmem != 0 || p.Dump {
		t.Fatalf("got %+v, port id %d", p, sa.(*unix.SockaddrNetlink).Pid)
	}
	if err := unix.SetsockoptInt(s, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, 33); err != nil {
		t.Fatal(err)
	}
	g, err := netlinkGroups(s)
	if err != nil || len(g) != 2 || g[0] != 0 || g[1] != 1 {
		t.Fatalf("groups %#x, %v; want group 33 (word 1 bit 0)", g, err)
	}
}

func FuzzParseProcNetlink(f *testing.F) {
	f.Add([]byte("sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode\n0 0 1 0 0 0 0 2 0 5\n"), uint64(5))
	f.Fuzz(func(t *testing.T, b []byte, ino uint64) {
		p, ok, err := parseProcNetlink(b, ino)
		if err != nil && ok {
			t.Fatalf("ok with an error: %+v %v", p, err)
		}
	})
}
