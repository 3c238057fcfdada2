package drivers

import (
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
	"godwit/internal/sockdiag"
	"godwit/internal/tcprepair"
)

// A program that took the urgent byte with MSG_OOB but has not read up
// to its mark: tcprepair sees no urgent data and its peek stops at the
// mark, so the bytes after it are missing from the dump. sock_diag's
// rqueue counts them, and the dump is refused; a connection with plain
// unread data is not.
func TestUnreadBehindMarkRefused(t *testing.T) {
	for _, urgent := range []bool{true, false} {
		a, b := tcpPair(t)
		if _, err := unix.Write(b, []byte("abc")); err != nil {
			t.Fatal(err)
		}
		if urgent {
			if err := unix.Sendto(b, []byte("X"), unix.MSG_OOB, nil); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := unix.Write(b, []byte("def")); err != nil {
			t.Fatal(err)
		}
		want := 6
		if urgent {
			var x [1]byte
			var err error
			for range 500 {
				if _, _, err = unix.Recvfrom(a, x[:], unix.MSG_OOB|unix.MSG_DONTWAIT); err == nil {
					break
				}
				time.Sleep(2 * time.Millisecond)
			}
			if err != nil || x[0] != 'X' {
				t.Fatalf("urgent byte: %q %v", x, err)
			}
			want = 7
		}
		var st unix.Stat_t
		if err := unix.Fstat(a, &st); err != nil {
			t.Fatal(err)
		}
		var dg *sockdiag.Inet
		for range 500 {
			tab, err := sockdiag.DumpInetTable(unix.AF_INET, unix.IPPROTO_TCP)
			if err != nil {
				t.Fatal(err)
			}
			if dg = tab.ByIno[uint32(st.Ino)]; dg != nil && int(dg.Rqueue) == want {
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
		if dg == nil || int(dg.Rqueue) != want {
			t.Fatalf("sock_diag: %+v, want rqueue %d", dg, want)
		}
		if err := tcprepair.On(a); err != nil {
			t.Fatal(err)
		}
		rs, err := tcprepair.Dump(a)
		if err := tcprepair.Off(a); err != nil {
			t.Fatal(err)
		}
		if err != nil {
			t.Fatalf("urgent %v: tcprepair.Dump: %v", urgent, err)
		}
		ist := &model.InetSocketState{State: uint32(rs.State), Stream: &model.TCPStream{InQ: rs.InQ}}
		err = unreadBehindMark(dg, ist, "conn")
		if urgent && (!errors.Is(err, tcprepair.ErrUrgent) || string(rs.InQ) != "abc") {
			t.Errorf("urgent byte read, mark ahead: peeked %q, %v; want refused", rs.InQ, err)
		}
		if !urgent && (err != nil || string(rs.InQ) != "abcdef") {
			t.Errorf("plain data: peeked %q, %v; want accepted", rs.InQ, err)
		}
	}
}

// tcpPair is an accepted (a) and a connecting (b) TCP socket on
// 127.0.0.1, closed at the end of the test.
func tcpPair(t *testing.T) (a, b int) {
	t.Helper()
	l, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(l)
	if err := unix.Bind(l, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(l, 1); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(l)
	if err != nil {
		t.Fatal(err)
	}
	if b, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(b) })
	if err := unix.Connect(b, sa); err != nil {
		t.Fatal(err)
	}
	if a, _, err = unix.Accept4(l, unix.SOCK_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(a) })
	return a, b
}
