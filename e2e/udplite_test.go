package e2e

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A UDP-Lite socket and a SO_REUSEPORT group of two TCP listeners are
// dumped and restored: the program finds the protocol, the flag and the
// shared port as they were, the UDP-Lite socket echoes a datagram sent
// after the restore, and the group accepts connections. With UDP-Lite
// checksum coverage set (no image field carries it), the dump is refused
// naming it and the program runs on.
func TestNetUDPLiteReuseport(t *testing.T) {
	needRoot(t)
	t.Run("plain", func(t *testing.T) {
		w := startWorkload(t, cWorkload(t, "udplite"), "plain")
		lite, tcp := udplitePorts(t, w)
		dir := w.dump(t)
		w.reapKilled(t)
		r := restore(t, w, dir)
		if got := udpliteEcho(t, lite, "after the restore"); got != "after the restore" {
			t.Fatalf("UDP-Lite echo after the restore: %q", got)
		}
		for i := range 4 {
			s, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			err = unix.Connect(s, &unix.SockaddrInet4{Port: tcp, Addr: [4]byte{127, 0, 0, 1}})
			unix.Close(s)
			if err != nil {
				t.Fatalf("connection %d to the restored reuseport group: %v", i, err)
			}
		}
		if code := r.finish(t, w); code != 0 {
			t.Fatalf("restored program: exit %d\n%s", code, w.tail())
		}
		if !strings.Contains(readFile(w.log), "check ok") {
			t.Fatalf("restored sockets differ\n%s", w.tail())
		}
	})
	t.Run("cscov refused", func(t *testing.T) {
		w := startWorkload(t, cWorkload(t, "udplite"), "cscov")
		udplitePorts(t, w)
		code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir())
		oneLineError(t, code, out, "UDPLITE_SEND_CSCOV is 20")
		w.waitTicks(3)
		if err := syscall.Kill(w.pid, syscall.SIGUSR1); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(10 * time.Second); !strings.Contains(readFile(w.log), "check "); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no check\n%s", w.tail())
			}
		}
		if !strings.Contains(readFile(w.log), "check ok") {
			t.Fatalf("after the refused dump the sockets differ\n%s", w.tail())
		}
	})
}

func udplitePorts(t *testing.T, w *workload) (lite, tcp int) {
	t.Helper()
	m := regexp.MustCompile(`ports (\d+) (\d+)`).FindStringSubmatch(readFile(w.log))
	if m == nil {
		t.Fatalf("no ports\n%s", w.tail())
	}
	lite, _ = strconv.Atoi(m[1])
	tcp, _ = strconv.Atoi(m[2])
	return lite, tcp
}

// udpliteEcho sends msg to the UDP-Lite port and returns the reply.
func udpliteEcho(t *testing.T, port int, msg string) string {
	t.Helper()
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDPLITE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(s)
	if err := unix.SetsockoptTimeval(s, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 10}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Sendto(s, []byte(msg), 0, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 256)
	n, _, err := unix.Recvfrom(s, buf, 0)
	if err != nil {
		t.Fatal(fmt.Errorf("UDP-Lite reply: %w", err))
	}
	return string(buf[:n])
}
