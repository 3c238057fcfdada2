package e2e

import (
	"context"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// mptcpClient is python3 holding one MPTCP connection to 127.0.0.1:port
// (IPPROTO_MPTCP is 262), in n.
const mptcpClient = `import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
s.connect(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"x")
open(sys.argv[2], "w").write("ready %d\n" % s.getsockname()[1])
time.sleep(600)
`

// A connected MPTCP socket cannot be restored (a new MPTCP socket
// refuses TCP_REPAIR): the dump refuses it in one line naming the socket
// and saying which kind it is, with subflows (an MPTCP server) or fallen
// back to plain TCP (a TCP server), and leaves the program running.
func TestNetMPTCPConnectedRefused(t *testing.T) {
	needRoot(t)
	n := newNetns(t)
	for _, c := range []struct {
		name  string
		mptcp bool
		want  string
	}{
		{"subflows", true, "connected MPTCP socket with subflows (ESTABLISHED): not supported"},
		{"fallback", false, "connected MPTCP socket fallen back to plain TCP (ESTABLISHED): not supported"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var l net.Listener
			var err error
			n.do(func() {
				var lc net.ListenConfig
				lc.SetMultipathTCP(c.mptcp)
				l, err = lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
			})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			go func() {
				for {
					conn, err := l.Accept()
					if err != nil {
						return
					}
					t.Cleanup(func() { conn.Close() })
				}
			}()
			port := l.Addr().(*net.TCPAddr).Port
			log := filepath.Join(t.TempDir(), "log")
			cmd := exec.Command("python3", "-c", mptcpClient, strconv.Itoa(port), log)
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			n.do(func() { err = cmd.Start() })
			if err != nil {
				t.Fatal(err)
			}
			pid := cmd.Process.Pid
			go cmd.Wait()
			t.Cleanup(func() { killAndForget(pid) })
			waitFor(t, "the MPTCP client to connect", func() bool { return strings.HasPrefix(readAll(log), "ready ") })
			local := strings.TrimSpace(strings.TrimPrefix(readAll(log), "ready "))
			dir := t.TempDir()
			code, out := n.godwit(t, "dump", "-t", strconv.Itoa(pid), "-D", dir, "-o", "dump.log", "--tcp-established")
			out = strings.TrimSpace(out)
			if code == 0 {
				t.Fatalf("dump of a connected MPTCP socket succeeded")
			}
			sock := "MPTCP socket 127.0.0.1:" + local + " -> 127.0.0.1:" + strconv.Itoa(port)
			if strings.Contains(out, "\n") || !strings.Contains(out, sock) || !strings.Contains(out, c.want) {
				t.Fatalf("refusal %q: want one line naming %q and saying %q", out, sock, c.want)
			}
			if !alive(pid) || tracerOf(pid) != 0 {
				t.Fatalf("pid %d not left running after the failed dump", pid)
			}
			if err := unix.Kill(pid, 0); err != nil {
				t.Fatal(err)
			}
		})
	}
}
