package e2e

import (
	"strconv"
	"strings"
	"testing"
)

// startNetlinkWorkload starts workloads/netlink.py in n.
func startNetlinkWorkload(t *testing.T, n *testNetns) *workload {
	return startWorkload(t, "nsenter", "--net=/run/netns/"+n.name, "--", "/usr/bin/python3", "workloads/netlink.py")
}

// TestNetlinkSockets: netlink sockets come back bound to their port ids, in
// their groups (one above 32), and working: a request is answered and a
// link made after the restore is announced to the group socket.
func TestNetlinkSockets(t *testing.T) {
	needRoot(t)
	n := makeNetns(t)
	w := startNetlinkWorkload(t, n)
	dir := w.dump(t)
	w.reapKilled(t)
	r := restoreInNetns(t, n, w.pid, dir, func() bool { return true })
	w.waitTicks(3)
	if out, err := n.command("ip", "link", "add", "gwdummy0", "type", "veth", "peer", "name", "gwdummy1").CombinedOutput(); err != nil {
		t.Fatalf("ip link add: %v: %s", err, out)
	}
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("restored program exited %d\n%s", code, w.tail())
	}
}

// TestNetlinkQueuedRefused: a notification the program has not read yet
// fails the dump, naming the socket, and the program runs on untouched
// (it reads the notification afterwards).
func TestNetlinkQueuedRefused(t *testing.T) {
	needRoot(t)
	n := makeNetns(t)
	w := startNetlinkWorkload(t, n)
	if out, err := n.command("ip", "link", "add", "gwdummy0", "type", "veth", "peer", "name", "gwdummy1").CombinedOutput(); err != nil {
		t.Fatalf("ip link add: %v: %s", err, out)
	}
	code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir())
	if code == 0 || !strings.Contains(out, "NETLINK_ROUTE socket") || !strings.Contains(out, "queued") {
		t.Fatalf("dump with a queued notification: exit %d: %s", code, out)
	}
	if strings.Count(strings.TrimSpace(out), "\n") > 0 {
		t.Errorf("want a one-line error, got %q", out)
	}
	w.waitTicks(3)
	w.finishOriginal(t, "after the refused dump")
}

// TestPacketSocketRefused: a packet socket fails the dump, named.
func TestPacketSocketRefused(t *testing.T) {
	needRoot(t)
	n := makeNetns(t)
	w := startWorkload(t, "nsenter", "--net=/run/netns/"+n.name, "--", "/usr/bin/python3", "-c",
		`import socket, sys, time, os
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind(("lo", 0x0806))
log = os.open(sys.argv[-1], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
i = 0
while True:
    i += 1
    os.write(log, b"tick %d\n" % i)
    time.sleep(0.01)
`)
	code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir())
	if code == 0 || !strings.Contains(out, "AF_PACKET socket (SOCK_RAW, protocol 0x0806, interface 1)") {
		t.Fatalf("dump of a packet socket: exit %d: %s", code, out)
	}
	w.waitTicks(3)
}
