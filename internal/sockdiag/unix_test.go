package sockdiag

import (
	"bytes"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func ino(t *testing.T, fd int) uint32 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	return uint32(st.Ino)
}

// A socketpair's ends name each other; a listener tells its name, backlog
// and the connection waiting in it; a shut-down end says so.
func TestQueryUnix(t *testing.T) {
	p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if err := unix.Shutdown(p[0], unix.SHUT_WR); err != nil {
		t.Fatal(err)
	}
	a, b := ino(t, p[0]), ino(t, p[1])
	u, err := QueryUnix(a)
	if err != nil {
		t.Fatal(err)
	}
	if u.Ino != a || u.Peer != b || u.Type != unix.SOCK_SEQPACKET || u.State != 1 || u.Name != nil {
		t.Errorf("pair end: %+v (peer want %d)", u, b)
	}

	l, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(l)
	name := "\x00godwit-sockdiag-test-" + string(rune('a'+os.Getpid()%26))
	if err := unix.Bind(l, &unix.SockaddrUnix{Name: "@" + name[1:]}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(l, 7); err != nil {
		t.Fatal(err)
	}
	c, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(c)
	if err := unix.Connect(c, &unix.SockaddrUnix{Name: "@" + name[1:]}); err != nil {
		t.Fatal(err)
	}
	u, err = QueryUnix(ino(t, l))
	if err != nil {
		t.Fatal(err)
	}
	if u.State != 10 || !bytes.Equal(u.Name, []byte(name)) || u.Wqueue != 7 || u.Rqueue != 1 || len(u.Icons) != 1 {
		t.Errorf("listener: %+v", u)
	}
	if _, err := QueryUnix(1); err == nil {
		t.Error("inode 1: no error")
	}
}

// FuzzParseReply: any bytes give a socket, nothing, or an error.
func FuzzParseReply(f *testing.F) {
	f.Add([]byte{36, 0, 0, 0, 20, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 2, 0, 9, 0, 0, 0}, uint32(1))
	f.Add([]byte{20, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 254, 255, 255, 255}, uint32(1))
	f.Fuzz(func(t *testing.T, b []byte, seq uint32) {
		ParseReply(b, seq)
	})
}
