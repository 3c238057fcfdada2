package e2e

import (
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
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
	code, out := n.godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", dir, "-v4", "-o", "dump.log")
	if code != 0 {
		t.Fatalf("dump: exit %d: %s\n%s", code, out, readFile(filepath.Join(dir, "dump.log")))
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

// A raw socket with a packet queued to be read is refused in one line
// naming it, and the dump leaves the workload running as it was.
func TestNetRawQueuedRefused(t *testing.T) {
	needRoot(t)
	n := newNetns(t)
	allowPing(t, n)
	w := startNetProg(t, n, "icmpsock", "queued")
	dir := t.TempDir()
	code, out := n.godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", dir, "-o", "dump.log")
	out = strings.TrimSpace(out)
	if code == 0 {
		t.Fatalf("dump of a raw socket with a queued packet succeeded: %s", out)
	}
	if strings.Count(out, "\n") != 0 || !strings.Contains(out, "raw socket (protocol 1)") || !strings.Contains(out, "packets queued to be read") {
		t.Fatalf("refusal is not one line naming the raw socket and its queue: %q", out)
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
	go func() {
		runtime.LockOSThread()
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
	}()
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
	if code, msg := godwit(t, "restore", "-D", dir, "-d", "-o", "restore.log", "--join-ns", "net:"+ns); code != 0 {
		t.Fatalf("restore --join-ns: exit %d: %s\n%s", code, msg, readFile(filepath.Join(dir, "restore.log")))
	}
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
	c.Close()
	if err := unix.Kill(pid, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the restored server to finish", func() bool { return !pidExists(pid) })
	if tail := tailOf(log); !strings.HasPrefix(tail, "done ") {
		t.Fatalf("restored server: %s", tail)
	}
}
