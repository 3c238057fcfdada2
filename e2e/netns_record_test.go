package e2e

import (
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// startListenerIn starts netconn listening on 127.0.0.1:port in n, in a
// session of its own, and waits until it listens; it returns its PID and
// a channel its exit status arrives on.
func startListenerIn(t *testing.T, n *testNetns, port int) (int, chan error) {
	t.Helper()
	log := filepath.Join(t.TempDir(), "log")
	w := n.command(cWorkload(t, "netconn"), "server", "127.0.0.1", strconv.Itoa(port), log)
	w.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	pid := w.Process.Pid // nsenter execs netconn in place
	waited := make(chan error, 1)
	go func() { waited <- w.Wait() }()
	t.Cleanup(func() { killAndForget(pid) })
	waitFor(t, "netconn to listen", func() bool { return strings.HasPrefix(readAll(log), "ready\n") })
	return pid, waited
}

// dumpFromOutside dumps pid from the test's namespace and waits until
// the tree is gone.
func dumpFromOutside(t *testing.T, pid int, waited chan error) string {
	t.Helper()
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
	return dir
}

// A tree in a network namespace of its own, dumped from outside, is not
// restored into godwit's namespace (its loopback listener would bind
// there without complaint): the restore refuses, naming --join-ns, and
// leaves no task behind.
func TestNetnsOwnRefusedInGodwits(t *testing.T) {
	needRoot(t)
	x := makeNetns(t)
	pid, waited := startListenerIn(t, x, 7801)
	dir := dumpFromOutside(t, pid, waited)
	code, msg := godwit(t, "restore", "-D", dir, "-d", "-o", "restore-here.log")
	if code == 0 || !strings.Contains(msg, "network namespace of its own") || !strings.Contains(msg, "--join-ns net:") {
		killAndForget(pid)
		t.Fatalf("restore into godwit's namespace: exit %d: %s", code, msg)
	}
	if n := strings.Count(strings.TrimSpace(msg), "\n"); n != 0 {
		t.Errorf("refusal is %d lines, want one: %s", n+1, msg)
	}
	if pidExists(pid) {
		t.Fatalf("refused restore left pid %d", pid)
	}
	// Where it was, it restores.
	restoreHere(t, pid, dir, "--join-ns", "net:/run/netns/"+x.name)
}

// The whole-namespace lock of X, kept by a dump of a tree in X made from
// outside, is removed in X by a restore that runs in Y (--join-ns): not
// looked for in Y and left in X.
func TestNetnsLockRemovedInLockedNetns(t *testing.T) {
	needRoot(t)
	x, y := makeNetns(t), makeNetns(t)
	pid, waited := startListenerIn(t, x, 7802)
	lock := "godwit-" + strconv.Itoa(pid) + "-"
	dir := dumpFromOutside(t, pid, waited)
	if !strings.Contains(x.ruleset(t), lock) {
		t.Fatalf("no lock %s in X after the dump:\n%s", lock, x.ruleset(t))
	}
	restoreHere(t, pid, dir, "--join-ns", "net:/run/netns/"+y.name)
	var a, b unix.Stat_t
	if err := unix.Stat("/run/netns/"+y.name, &a); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat("/proc/"+strconv.Itoa(pid)+"/ns/net", &b); err != nil {
		t.Fatalf("restored pid %d: %v", pid, err)
	}
	if a.Ino != b.Ino {
		t.Fatalf("restored pid %d is in network namespace %d, not Y's %d", pid, b.Ino, a.Ino)
	}
	// The restore unlocks once the tree resumed (restoreHere returns
	// as it runs untraced).
	x.waitUnlocked(t, lock, "X after the restore in Y")
	if s := y.ruleset(t); strings.Contains(s, lock) {
		t.Fatalf("lock %s in Y:\n%s", lock, s)
	}
}
