package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"godwit/internal/lab"
	"godwit/migrate"
)

// serviceLab is a migration lab with a third host for the clients and a
// service address on host A that moves to B with the server.
type serviceLab struct {
	*migLab
	c   *lab.Host
	vip netip.Addr
	res *migrate.Result // the last migrate's
}

func newServiceLab(t *testing.T) *serviceLab {
	t.Helper()
	s := newServiceLabNoAgent(t)
	s.startAgent()
	return s
}

// newServiceLabNoAgent is newServiceLab before its agent starts.
func newServiceLabNoAgent(t *testing.T) *serviceLab {
	t.Helper()
	m := newMigLabOf(t, "hosta", "hostb", "clients")
	s := &serviceLab{migLab: m, c: m.lab.Host(2), vip: netip.MustParseAddr("10.77.0.100")}
	if err := m.a.AddAddress(s.vip); err != nil {
		t.Fatal(err)
	}
	return s
}

// dial connects from the clients host.
func (s *serviceLab) dial(port int) (net.Conn, error) {
	var c net.Conn
	err := s.c.InNet(func() (err error) {
		c, err = net.DialTimeout("tcp", netip.AddrPortFrom(s.vip, uint16(port)).String(), 5*time.Second)
		return err
	})
	return c, err
}

// startServer starts argv on host A in a session of its own (output to a
// file) and waits until the clients host reaches it on port.
func (s *serviceLab) startServer(port int, argv ...string) *labWorkload {
	t := s.t
	t.Helper()
	dir := t.TempDir()
	w := &workload{t: t, log: filepath.Join(dir, "log"), output: filepath.Join(dir, "output"), waited: make(chan error, 1)}
	out, err := os.Create(w.output)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if out, err := s.a.Command("sh", "-c", "echo $((20000 + $$ % 9000)) >/proc/sys/kernel/ns_last_pid").CombinedOutput(); err != nil {
		t.Fatalf("ns_last_pid: %v: %s", err, out)
	}
	w.cmd = s.a.Command("setsid", argv...)
	w.cmd.Stdout, w.cmd.Stderr = out, out
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { w.waited <- w.cmd.Wait() }()
	lw := &labWorkload{workload: w, host: s.a}
	if lw.hostPID, lw.rootPID, err = s.a.PID(w.cmd); err != nil {
		t.Fatal(err)
	}
	w.pid = lw.rootPID
	t.Cleanup(func() { killAndForget(lw.rootPID) })
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := s.dial(port)
		if err == nil {
			c.Close()
			return lw
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not accept on %v:%d: %v\n%s", argv[0], s.vip, port, err, readFile(w.output))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// migrate moves w to host B with its connections, the service address
// moved by the lab's action script, and checks the switch-over: the
// program on B with its PID, the address on B only, and no network lock
// left on either host.
func (s *serviceLab) migrate(w *labWorkload, conns int, extra ...string) int {
	t := s.t
	t.Helper()
	code, res, stderr := s.send(w, append([]string{"--tcp-established", "--action-script", s.script("")}, extra...)...)
	if code != 0 {
		t.Fatalf("migrate send: exit %d: %s\n%s", code, res.Error, stderr)
	}
	s.res = res
	if res.Connections != conns {
		t.Errorf("%d connections moved, want %d", res.Connections, conns)
	}
	rp := s.moved(w)
	s.settled(s.b)
	t.Logf("downtime %v (%+v), %d connections", res.Downtime, res.Switchover, res.Connections)
	return rp
}

// script writes the lab's service-address script, plus extra shell lines
// after it, and returns the --action-script command that runs it.
func (s *serviceLab) script(extra string) string {
	p := filepath.Join(s.t.TempDir(), "move-address.sh")
	if err := os.WriteFile(p, []byte(lab.MoveAddressScript(s.vip, s.a, s.b, s.c)+"\n"+extra+"\n"), 0o755); err != nil {
		s.t.Fatal(err)
	}
	return "sh -e " + p
}

// settled checks the service address is on host h only and no network
// lock is left on A or B.
func (s *serviceLab) settled(h *lab.Host) {
	t := s.t
	t.Helper()
	for _, x := range []*lab.Host{s.a, s.b} {
		has, err := x.HasAddress(s.vip)
		if err != nil {
			t.Fatal(err)
		}
		if has != (x == h) {
			t.Errorf("service address on %s: %v", x.Name(), has)
		}
		if tables := nftTables(t, x); strings.Contains(tables, "godwit") {
			t.Errorf("network lock left on %s: %s", x.Name(), tables)
		}
	}
}

func nftTables(t *testing.T, h *lab.Host) string {
	t.Helper()
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(h.InitPID()), "-n", "--", "nft", "list", "tables").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list tables on %s: %v: %s", h.Name(), err, out)
	}
	return string(out)
}

// redisCmd sends one command and reads its reply.
func redisCmd(c *clientConn, args ...string) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(c, b.String()); err != nil {
		return "", err
	}
	r, err := resp(c)
	if err == nil && strings.HasPrefix(r, ":") {
		r = r[1:]
	}
	return r, err
}

// A redis server bound to the service address moves from host A to B
// while clients on a third host keep writing and reading keys on their
// connections: no error, every key right, the same connections (the
// server's CLIENT ID for one of them is unchanged), the server's PID and
// data on B.
func TestMigrateRedisWithClients(t *testing.T) { migrateRedisWithClients(t, newServiceLab(t)) }

// migrateRedisWithClients is TestMigrateRedisWithClients in lab s, with
// these more arguments to migrate send.
func migrateRedisWithClients(t *testing.T, s *serviceLab, sendArgs ...string) {
	const port = 6379
	w := s.startServer(port, "redis-server", "--port", strconv.Itoa(port), "--bind", s.vip.String(),
		"--save", "", "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no", "--logfile", "")
	const k = 3
	cs := startClientsDial(t, func() (net.Conn, error) { return s.dial(port) }, k, redisExchange)
	nc, err := s.dial(port)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	idc := &clientConn{Conn: nc, r: bufio.NewReader(nc)}
	_ = nc.SetDeadline(time.Now().Add(2 * time.Minute))
	id, err := redisCmd(idc, "CLIENT", "ID")
	if err != nil {
		t.Fatal(err)
	}
	cs.waitProgress(t, make([]int, k), 20, "before the migration")
	s.migrate(w, k+1, sendArgs...)
	cs.waitProgress(t, cs.snapshot(), 20, "after the migration")
	cs.finish(t)
	if got, err := redisCmd(idc, "CLIENT", "ID"); err != nil || got != id {
		t.Errorf("CLIENT ID after the migration: %q %v, want %q (the same connection)", got, err, id)
	}
	// The data, read on a new connection to the server now on B.
	ops := cs.snapshot()
	nc2, err := s.dial(port)
	if err != nil {
		t.Fatal(err)
	}
	defer nc2.Close()
	c2 := &clientConn{Conn: nc2, r: bufio.NewReader(nc2)}
	_ = nc2.SetDeadline(time.Now().Add(time.Minute))
	for i := 0; i < k; i++ {
		for _, iter := range []int{0, ops[i] / 2, ops[i] - 1} {
			key := fmt.Sprintf("c%d:k%d", i, iter)
			want := fmt.Sprintf("v%d-%d-%s", i, iter, strings.Repeat("x", iter%100))
			if got, err := redisCmd(c2, "GET", key); err != nil || got != want {
				t.Errorf("GET %s on B: %q %v, want %q", key, got, err, want)
			}
		}
	}
	if got, err := redisCmd(c2, "DBSIZE"); err != nil {
		t.Error(err)
	} else if n, _ := strconv.Atoi(got); n < ops[0]+ops[1]+ops[2] {
		t.Errorf("DBSIZE on B %d, want at least %d", n, ops[0]+ops[1]+ops[2])
	}
	t.Logf("exchanges per client %v, longest %v", ops, cs.maxWait)
}

// echoServer echoes, on each connection it accepts, every byte back.
const echoServer = `
import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(8)
def echo(c):
    while True:
        b = c.recv(65536)
        if not b:
            return
        c.sendall(b)
while True:
    c, _ = s.accept()
    threading.Thread(target=echo, args=(c,), daemon=True).start()
`

// echoExchange sends a chunk of the client's stream and reads the same
// bytes back.
func echoExchange(c *clientConn, id, iter int) error {
	buf := make([]byte, 1024+iter%4096)
	for i := range buf {
		buf[i] = byte(id*31 + iter*7 + i)
	}
	if _, err := c.Write(buf); err != nil {
		return err
	}
	got := make([]byte, len(buf))
	if _, err := io.ReadFull(c.r, got); err != nil {
		return err
	}
	if !bytes.Equal(got, buf) {
		return fmt.Errorf("echo of %d bytes differs", len(buf))
	}
	return nil
}

// A small Python TCP echo server moves with established clients checking
// their byte streams.
func TestMigrateEchoServerWithClients(t *testing.T) {
	s := newServiceLab(t)
	const port = 7007
	prog := filepath.Join(t.TempDir(), "echo.py")
	if err := os.WriteFile(prog, []byte(echoServer), 0o644); err != nil {
		t.Fatal(err)
	}
	w := s.startServer(port, "python3", prog, s.vip.String(), strconv.Itoa(port))
	const k = 2
	cs := startClientsDial(t, func() (net.Conn, error) { return s.dial(port) }, k, echoExchange)
	cs.waitProgress(t, make([]int, k), 20, "before the migration")
	s.migrate(w, k)
	cs.waitProgress(t, cs.snapshot(), 20, "after the migration")
	cs.finish(t)
}

// A migration that fails after the connections were locked on both hosts
// and the service address moved (the user's script fails at pre-resume)
// leaves the server running on A with its clients: their connections out
// of repair mode and unlocked, the address back (migrate-abort), no lock
// on either host; a second migration then succeeds.
func TestMigrateEchoServerFailureKeepsClients(t *testing.T) {
	s := newServiceLab(t)
	const port = 7008
	prog := filepath.Join(t.TempDir(), "echo.py")
	if err := os.WriteFile(prog, []byte(echoServer), 0o644); err != nil {
		t.Fatal(err)
	}
	w := s.startServer(port, "python3", prog, s.vip.String(), strconv.Itoa(port))
	const k = 2
	cs := startClientsDial(t, func() (net.Conn, error) { return s.dial(port) }, k, echoExchange)
	cs.waitProgress(t, make([]int, k), 20, "before the migration")
	code, res, stderr := s.send(w, "--tcp-established", "--action-script", s.script(`[ "$CRTOOLS_SCRIPT_ACTION" != pre-resume ]`))
	if code == 0 || res.FailedPhase != migrate.PhaseSwitchover || !strings.Contains(res.Error, "pre-resume") {
		t.Fatalf("failing pre-resume script: exit %d, phase %q, error %q\n%s", code, res.FailedPhase, res.Error, stderr)
	}
	if !alive(w.rootPID) {
		t.Fatalf("server died on the source")
	}
	if state, tracer := procState(t, w.rootPID); tracer != 0 || state == "T" || state == "t" {
		t.Fatalf("server left in state %s, tracer %d", state, tracer)
	}
	s.settled(s.a)
	cs.waitProgress(t, cs.snapshot(), 20, "after the failed migration")
	s.migrate(w, k)
	cs.waitProgress(t, cs.snapshot(), 20, "after the migration")
	cs.finish(t)
}

// A program whose session leader is outside its tree (no setsid: a shell
// job) is refused without --shell-job and moves with it, into the agent's
// session on host B.
func TestMigrateShellJob(t *testing.T) {
	m := newMigLab(t)
	m.startAgent()
	dir := t.TempDir()
	w := &workload{t: t, log: filepath.Join(dir, "log"), output: filepath.Join(dir, "output"), waited: make(chan error, 1)}
	out, err := os.Create(w.output)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if out, err := m.a.Command("sh", "-c", "echo $((20000 + $$ % 9000)) >/proc/sys/kernel/ns_last_pid").CombinedOutput(); err != nil {
		t.Fatalf("ns_last_pid: %v: %s", err, out)
	}
	w.cmd = m.a.Command(workloads["counter"], w.log)
	w.cmd.Stdout, w.cmd.Stderr = out, out
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { w.waited <- w.cmd.Wait() }()
	lw := &labWorkload{workload: w, host: m.a}
	if lw.hostPID, lw.rootPID, err = m.a.PID(w.cmd); err != nil {
		t.Fatal(err)
	}
	w.pid = lw.rootPID
	t.Cleanup(func() { killAndForget(lw.rootPID) })
	w.waitTicks(3)
	if code, res, stderr := m.send(lw); code == 0 || !strings.Contains(res.Error, "shell") {
		t.Fatalf("without --shell-job: exit %d, %q\n%s", code, res.Error, stderr)
	}
	intact(t, lw)
	if code, res, stderr := m.send(lw, "--shell-job"); code != 0 {
		t.Fatalf("--shell-job: exit %d, %q\n%s", code, res.Error, stderr)
	}
	finishMoved(t, lw, m.moved(lw))
}
