package e2e

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// allowPing lets every group open ping sockets in the test's namespace
// (net.ipv4.ping_group_range is per namespace; /proc/sys/net follows the
// opener's).
func allowPing(t *testing.T, n *netns) {
	t.Helper()
	var err error
	n.do(func() { err = os.WriteFile("/proc/sys/net/ipv4/ping_group_range", []byte("0 2147483647"), 0) })
	if err != nil {
		t.Fatal(err)
	}
}

// Ping sockets (bound with an identifier, unbound) and raw sockets (an
// ICMP one with an ICMP_FILTER and IP_TTL, one of protocol 253 with
// IP_HDRINCL and IP_NODEFRAG bound, connected and bound to lo, an ICMPv6
// one connected with an ICMPV6_FILTER) come back as they were: the
// workload compares every address and option, its ping sockets get the
// replies to their echoes with their identifiers, and its raw sockets
// receive the echo replies and none of the requests their filters block.
func TestNetPingRaw(t *testing.T) {
	needRoot(t)
	n := newNetns(t)
	allowPing(t, n)
	w := startNetProg(t, n, "icmpsock")
	dir := t.TempDir()
	sent := outPackets(t, n)
	code, out := n.godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", dir, "-v4", "-o", "dump.log")
	if code != 0 {
		t.Fatalf("dump: exit %d: %s\n%s", code, out, readFile(filepath.Join(dir, "dump.log")))
	}
	// The probes for a send-side shutdown send nothing.
	if now := outPackets(t, n); now != sent {
		t.Fatalf("the dump sent packets: IPv4 and IPv6 OutRequests %s, then %s", sent, now)
	}
	select {
	case <-w.waited:
	case <-time.After(10 * time.Second):
		t.Fatalf("pid %d still alive after dump", w.pid)
	}
	waitFor(t, "the dumped pid to go", func() bool { return !pidExists(w.pid) })
	r := restoreNet(t, n, w, dir)
	if line := r.finish(t, w, nil); !strings.HasPrefix(line, "done ") {
		t.Fatalf("workload: %s\n%s", line, readAll(w.log))
	}
	if strings.Contains(readAll(w.log), "FAIL") {
		t.Fatalf("workload:\n%s", readAll(w.log))
	}
}

// outPackets is the namespace's count of packets sent (IPv4 and IPv6
// OutRequests, which ICMP and raw packets count in).
func outPackets(t *testing.T, n *netns) string {
	t.Helper()
	var snmp, snmp6 string
	n.do(func() {
		snmp, snmp6 = readAll("/proc/thread-self/net/snmp"), readAll("/proc/thread-self/net/snmp6")
	})
	var v4 string
	lines := strings.Split(snmp, "\n")
	for i := 0; i+1 < len(lines); i++ {
		names, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) > 0 && names[0] == "Ip:" && len(vals) == len(names) && vals[0] == "Ip:" {
			for j, name := range names {
				if name == "OutRequests" {
					v4 = vals[j]
				}
			}
		}
	}
	v6 := regexp.MustCompile(`(?m)^Ip6OutRequests\s+(\d+)`).FindStringSubmatch(snmp6)
	if v4 == "" || v6 == nil {
		t.Fatalf("no OutRequests in /proc/net/snmp or snmp6:\n%s\n%s", snmp, snmp6)
	}
	return v4 + "/" + v6[1]
}

// A raw socket with a packet queued to be read, a ping or raw socket
// shut down for sending: each is refused in one line naming it, and the
// dump leaves the workload running as it was.
func TestNetRawQueuedRefused(t *testing.T) {
	needRoot(t)
	for _, c := range []struct{ mode, sock, why string }{
		{"queued", "raw socket (protocol 1)", "packets queued to be read"},
		{"shut-ping", "ICMP ping socket 127.0.0.1 id 4242", "shut down for sending"},
		{"shut-raw", "raw socket (protocol 253) 127.0.0.1 -> 127.0.0.2", "shut down for sending"},
	} {
		t.Run(c.mode, func(t *testing.T) { rawRefused(t, c.mode, c.sock, c.why) })
	}
}

func rawRefused(t *testing.T, mode, sock, why string) {
	n := newNetns(t)
	allowPing(t, n)
	w := startNetProg(t, n, "icmpsock", mode)
	dir := t.TempDir()
	code, out := n.godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", dir, "-o", "dump.log")
	out = strings.TrimSpace(out)
	if code == 0 {
		t.Fatalf("dump succeeded: %s", out)
	}
	if strings.Count(out, "\n") != 0 || !strings.Contains(out, sock) || !strings.Contains(out, why) {
		t.Fatalf("refusal is not one line naming %q and %q: %q", sock, why, out)
	}
	ticks := w.ticks()
	waitFor(t, "the workload to tick on", func() bool { return w.ticks() > ticks })
	if err := unix.Kill(w.pid, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-w.waited:
		if err != nil {
			t.Fatalf("workload after the failed dump: %v\n%s", err, readAll(w.log))
		}
	case <-time.After(20 * time.Second):
		t.Fatal("workload did not finish")
	}
}

// dialIn connects to addr from network namespace file ns: the socket is
// made on a thread that joined it (never unlocked, so it ends with the
// goroutine).
func dialIn(t *testing.T, ns, addr string) net.Conn {
	t.Helper()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	var dial func()
	dial = func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			// Not the main thread, which Go keeps when its goroutine
			// ends: hold it while another thread joins.
			done := make(chan struct{})
			go func() { defer close(done); dial() }()
			<-done
			runtime.UnlockOSThread()
			return
		}
		fd, err := unix.Open(ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- res{nil, err}
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			ch <- res{nil, err}
			return
		}
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		ch <- res{c, err}
	}
	go dial()
	r := <-ch
	if r.err != nil {
		t.Fatalf("connect to %s from %s: %v", addr, ns, r.err)
	}
	return r.c
}

// restore --join-ns net:FILE restores a tree dumped in network namespace
// X, deleted since, into namespace Y that has the same address: the
// listener is made in Y (not in the test's namespace, where the address
// is not local: a restore without --join-ns fails naming it), the task
// lives in Y, and a client in Y is served.
func TestNetJoinNS(t *testing.T) {
	needRoot(t)
	const addr, port = "10.77.9.1", 7740
	x := makeNetns(t)
	if out, err := x.command("ip", "addr", "add", addr+"/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("ip addr add: %v: %s", err, out)
	}
	log := filepath.Join(t.TempDir(), "log")
	w := x.command(cWorkload(t, "netconn"), "server", addr, strconv.Itoa(port), log)
	w.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	pid := w.Process.Pid // nsenter execs netconn in place
	waited := make(chan error, 1)
	go func() { waited <- w.Wait() }()
	t.Cleanup(func() { killAndForget(pid) })
	waitFor(t, "netconn to listen", func() bool { return strings.HasPrefix(readAll(log), "ready\n") })
	dir := t.TempDir()
	out, err := x.command(godwitBin, "dump", "-t", strconv.Itoa(pid), "-D", dir, "-o", "dump.log").CombinedOutput()
	if err != nil {
		t.Fatalf("dump in X: %v: %s\n%s", err, out, readFile(filepath.Join(dir, "dump.log")))
	}
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Fatalf("pid %d alive after the dump", pid)
	}
	waitFor(t, "the dumped pid to go", func() bool { return !pidExists(pid) })
	if out, err := exec.Command("ip", "netns", "del", x.name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns del: %v: %s", err, out)
	}

	// Here (the test's namespace) the address is not local.
	code, msg := godwit(t, "restore", "-D", dir, "-d", "-o", "restore-here.log")
	if code == 0 || !strings.Contains(msg, "address "+addr+" is not local here") {
		t.Fatalf("restore outside Y: exit %d: %s", code, msg)
	}
	if pidExists(pid) {
		t.Fatalf("failed restore left pid %d", pid)
	}

	y := makeNetns(t)
	if out, err := y.command("ip", "addr", "add", addr+"/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("ip addr add: %v: %s", err, out)
	}
	ns := "/run/netns/" + y.name
	r := restoreHere(t, pid, dir, "--join-ns", "net:"+ns)
	var a, b unix.Stat_t
	if err := unix.Stat(ns, &a); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat("/proc/"+strconv.Itoa(pid)+"/ns/net", &b); err != nil {
		t.Fatalf("restored pid %d: %v", pid, err)
	}
	if a.Ino != b.Ino {
		t.Fatalf("restored pid %d is in network namespace %d, not Y's %d", pid, b.Ino, a.Ino)
	}
	c := dialIn(t, ns, net.JoinHostPort(addr, strconv.Itoa(port)))
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 256)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read from the restored server: %v", err)
	}
	g := gen(1)
	for i, v := range buf {
		if want := g.next(); v != want {
			t.Fatalf("byte %d from the restored server: %d, want %d", i, v, want)
		}
	}
	finishRestored(t, r, pid, log) // the client still connected: netconn counts a reset as a failure
}

// netnsSockets is python3 holding, in its network namespace: a TCP
// listener with IP_TTL set to argv[2], one with the default TTL, a ping
// socket with identifier 4244, and a raw ICMP socket connected to
// 127.0.0.1; it logs "ready FD FD FD FD".
const netnsSockets = `import socket, sys, time
a = socket.socket(); a.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, int(sys.argv[2])); a.bind(("127.0.0.1", 7770)); a.listen(3)
b = socket.socket(); b.bind(("127.0.0.1", 7771)); b.listen(3)
p = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP); p.bind(("127.0.0.1", 4244))
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); r.connect(("127.0.0.1", 0))
open(sys.argv[1], "w").write("ready %d %d %d %d\n" % (a.fileno(), b.fileno(), p.fileno(), r.fileno()))
time.sleep(600)
`

// A tree in a network namespace of its own, dumped from outside it: its
// sockets are read in their namespace (sock_diag, /proc/net, the fresh
// sockets giving the defaults, and the sysctls: the namespace's default
// TTL differs from godwit's, and a TTL set to godwit's default stays
// set while one left to the default still follows it), and restore
// --join-ns puts them back there.
func TestNetDumpFromOutsideNetns(t *testing.T) {
	needRoot(t)
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_default_ttl")
	if err != nil {
		t.Fatal(err)
	}
	hereTTL := strings.TrimSpace(string(b))
	x := makeNetns(t)
	for _, sh := range []string{"echo 99 > /proc/sys/net/ipv4/ip_default_ttl", "echo 0 2147483647 > /proc/sys/net/ipv4/ping_group_range"} {
		if out, err := x.command("sh", "-c", sh).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", sh, err, out)
		}
	}
	log := filepath.Join(t.TempDir(), "log")
	w := x.command("python3", "-c", netnsSockets, log, hereTTL)
	w.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	pid := w.Process.Pid
	waited := make(chan error, 1)
	go func() { waited <- w.Wait() }()
	t.Cleanup(func() { killAndForget(pid) })
	waitFor(t, "the sockets", func() bool { return strings.HasPrefix(readAll(log), "ready ") })
	var fds [4]int
	if _, err := fmt.Sscanf(readAll(log), "ready %d %d %d %d", &fds[0], &fds[1], &fds[2], &fds[3]); err != nil {
		t.Fatalf("log %q: %v", readAll(log), err)
	}
	dir := t.TempDir()
	if code, out := godwit(t, "dump", "-t", strconv.Itoa(pid), "-D", dir, "-v4", "-o", "dump.log"); code != 0 {
		t.Fatalf("dump from outside: exit %d: %s\n%s", code, out, readFile(filepath.Join(dir, "dump.log")))
	}
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Fatalf("pid %d alive after the dump", pid)
	}
	waitFor(t, "the dumped pid to go", func() bool { return !pidExists(pid) })
	restoreHere(t, pid, dir, "--join-ns", "net:/run/netns/"+x.name)
	pfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatalf("restored pid %d: %v", pid, err)
	}
	defer unix.Close(pfd)
	var s [4]int
	for i, fd := range fds {
		if s[i], err = unix.PidfdGetfd(pfd, fd, 0); err != nil {
			t.Fatalf("fd %d of the restored pid: %v", fd, err)
		}
		defer unix.Close(s[i])
	}
	ttl := func(s int) string {
		v, err := unix.GetsockoptInt(s, unix.IPPROTO_IP, unix.IP_TTL)
		if err != nil {
			t.Fatal(err)
		}
		return strconv.Itoa(v)
	}
	if a, b := ttl(s[0]), ttl(s[1]); a != hereTTL || b != "99" {
		t.Fatalf("after the restore: TTL %s (set to %s) and %s (the namespace's default, 99)", a, hereTTL, b)
	}
	if out, err := x.command("sh", "-c", "echo 98 > /proc/sys/net/ipv4/ip_default_ttl").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if a, b := ttl(s[0]), ttl(s[1]); a != hereTTL || b != "98" {
		t.Fatalf("default TTL changed to 98: TTL %s (set to %s) and %s (following the default)", a, hereTTL, b)
	}
	if sa, err := unix.Getsockname(s[2]); err != nil || sa.(*unix.SockaddrInet4).Port != 4244 {
		t.Fatalf("ping socket: %+v %v, want identifier 4244", sa, err)
	}
	raw := readAll("/proc/" + strconv.Itoa(pid) + "/net/raw")
	var rs unix.Stat_t
	unix.Fstat(s[3], &rs)
	if !regexp.MustCompile(`0100007F:\w+ 01 .* ` + strconv.FormatUint(rs.Ino, 10) + ` `).MatchString(raw) {
		t.Fatalf("raw socket %d not connected to 127.0.0.1 after the restore:\n%s", rs.Ino, raw)
	}
}

// An established connection of a tree in its own network namespace,
// dumped from outside with --tcp-established and restored there with
// --join-ns: the peer (never dumped, in that namespace) reads on in the
// byte stream, with no reset.
func TestNetEstablishedFromOutsideNetns(t *testing.T) {
	needRoot(t)
	const port = 7790
	x := makeNetns(t)
	log := filepath.Join(t.TempDir(), "log")
	w := x.command(cWorkload(t, "netconn"), "server", "127.0.0.1", strconv.Itoa(port), log)
	w.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	pid := w.Process.Pid
	waited := make(chan error, 1)
	go func() { waited <- w.Wait() }()
	t.Cleanup(func() { killAndForget(pid) })
	waitFor(t, "netconn to listen", func() bool { return strings.HasPrefix(readAll(log), "ready\n") })
	ns := "/run/netns/" + x.name
	c := dialIn(t, ns, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	defer c.Close()
	g := gen(1)
	read := func(n int) {
		t.Helper()
		buf := make([]byte, n)
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatalf("read: %v", err)
		}
		for i, v := range buf {
			if want := g.next(); v != want {
				t.Fatalf("byte %d: %d, want %d", i, v, want)
			}
		}
	}
	read(4096)
	dir := t.TempDir()
	if code, out := godwit(t, "dump", "-t", strconv.Itoa(pid), "-D", dir, "-v4", "-o", "dump.log", "--tcp-established"); code != 0 {
		t.Fatalf("dump from outside: exit %d: %s\n%s", code, out, readFile(filepath.Join(dir, "dump.log")))
	}
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Fatalf("pid %d alive after the dump", pid)
	}
	waitFor(t, "the dumped pid to go", func() bool { return !pidExists(pid) })
	r := restoreHere(t, pid, dir, "--tcp-established", "--join-ns", "net:"+ns)
	read(1 << 20)                  // what was queued at the freeze, then what the restored server writes
	finishRestored(t, r, pid, log) // the client still connected: netconn counts a reset as a failure
}

// restoreHere runs godwit restore (no -d: godwit waits for the program and
// reaps it, also where the test's session leader is outside its pid
// namespace) from the test's namespace, and returns once pid runs
// untraced.
func restoreHere(t *testing.T, pid int, dir string, args ...string) *restoring {
	t.Helper()
	r := &restoring{done: make(chan error, 1)}
	r.cmd = exec.Command(godwitBin, append([]string{"restore", "-D", dir, "-v4", "-o", "restore.log"}, args...)...)
	r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.out
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.done <- r.cmd.Wait() }()
	t.Cleanup(func() {
		killAndForget(pid)
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			r.cmd.Process.Kill()
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !(alive(pid) && tracerOf(pid) == 0) {
		select {
		case err := <-r.done:
			t.Fatalf("restore exited early: %v: %s\n%s", err, r.out.String(), readFile(filepath.Join(dir, "restore.log")))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("restored pid %d did not resume\n%s", pid, readFile(filepath.Join(dir, "restore.log")))
		}
		time.Sleep(5 * time.Millisecond)
	}
	return r
}

// finishRestored asks the restored netconn to finish and checks that it
// exited 0 (godwit restore passes its status on) after "done".
func finishRestored(t *testing.T, r *restoring, pid int, log string) {
	t.Helper()
	if err := unix.Kill(pid, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-r.done:
		r.done <- err
		if err != nil {
			t.Fatalf("restored server: %v: %s\n%s", err, r.out.String(), tailOf(log))
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("restored pid %d did not finish", pid)
	}
	if tail := tailOf(log); !strings.HasPrefix(tail, "done ") {
		t.Fatalf("restored server: %s", tail)
	}
}
