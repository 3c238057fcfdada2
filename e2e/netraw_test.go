package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
