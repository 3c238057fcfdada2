package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The network lock as dump and restore use it, for a tree in a network
// namespace of its own (the whole namespace is locked, between the
// network-lock and network-unlock action scripts, as CRIU does). The rules
// themselves (connections' packets dropped, no reset seen) are tested in
// internal/netlock.

// testNetns is a named network namespace (ip netns) the test made.
type testNetns struct{ name string }

func makeNetns(t testing.TB) *testNetns {
	t.Helper()
	n := &testNetns{name: "godwit-e2e-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(time.Now().UnixNano()%1e6, 10)}
	if out, err := exec.Command("ip", "netns", "add", n.name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", n.name).Run() })
	if out, err := n.command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	return n
}

// command runs argv in the namespace: only the network namespace changes
// (ip netns exec would also make a mount namespace).
func (n *testNetns) command(argv ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=/run/netns/" + n.name, "--"}, argv...)...)
}

// ruleset is the namespace's whole firewall (nft shows iptables-nft's
// chains too).
func (n *testNetns) ruleset(t testing.TB) string {
	t.Helper()
	out, err := n.command("nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list ruleset: %v: %s", err, out)
	}
	return string(out)
}

// waitUnlocked waits (bounded) until no rule of lock name is left.
func (n *testNetns) waitUnlocked(t testing.TB, name, what string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for strings.Contains(n.ruleset(t), name) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: lock %s still there:\n%s", what, name, n.ruleset(t))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startInNetns starts the counter workload in n.
func startInNetns(t *testing.T, n *testNetns) *workload {
	// nsenter execs the program in place: the workload's PID is its.
	return startWorkload(t, "nsenter", "--net=/run/netns/"+n.name, "--", workloads["counter"])
}

// restoreInNetns runs godwit restore (no -d) of pid from dir inside n, and
// returns once the program runs untraced and ready() holds.
func restoreInNetns(t testing.TB, n *testNetns, pid int, dir string, ready func() bool, args ...string) *restoring {
	t.Helper()
	r := &restoring{done: make(chan error, 1)}
	r.cmd = n.command(append([]string{godwitBin, "restore", "-D", dir, "-v4", "-o", "restore.log"}, args...)...)
	r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.out
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.done <- r.cmd.Wait() }()
	t.Cleanup(func() {
		killTree(pid) // a restored server has workers

		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			r.cmd.Process.Kill()
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !(alive(pid) && tracerOf(pid) == 0 && ready()) {
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

// actionLog is an --action-script that appends each action to a file.
func actionLog(t *testing.T) (script, file string) {
	file = filepath.Join(t.TempDir(), "actions")
	return `echo $CRTOOLS_SCRIPT_ACTION >> ` + file, file
}

func actions(file string) string {
	b, _ := os.ReadFile(file)
	return strings.Join(strings.Fields(string(b)), " ")
}

// TestNetlockNetnsDumpRestore: a dump of a tree in its own namespace
// locks the namespace and keeps it locked after the tree is gone; the
// restore, in that namespace, unlocks it before the tree runs.
func TestNetlockNetnsDumpRestore(t *testing.T) {
	needRoot(t)
	for _, method := range []string{"nftables", "iptables"} {
		t.Run(method, func(t *testing.T) {
			n := makeNetns(t)
			w := startInNetns(t, n)
			script, alog := actionLog(t)
			lock := "godwit-" + strconv.Itoa(w.pid)
			dir := w.dump(t, "--network-lock", method, "--action-script", script)
			w.reapKilled(t)
			if got, want := actions(alog), "pre-dump network-lock post-dump"; got != want {
				t.Fatalf("dump actions %q, want %q", got, want)
			}
			if !strings.Contains(n.ruleset(t), lock) {
				t.Fatalf("no lock %s in the namespace after the dump:\n%s", lock, n.ruleset(t))
			}
			os.Remove(alog)
			r := restoreInNetns(t, n, w.pid, dir, func() bool { return strings.Contains(actions(alog), "post-restore") }, "--action-script", script)
			if got, want := actions(alog), "pre-restore pre-resume network-unlock post-restore"; got != want {
				t.Fatalf("restore actions %q, want %q", got, want)
			}
			if strings.Contains(n.ruleset(t), lock) {
				t.Fatalf("lock %s still there after the restore:\n%s", lock, n.ruleset(t))
			}
			w.waitTicks(2)
			if code := r.finish(t, w); code != 0 {
				t.Fatalf("restored program exited %d\n%s", code, w.tail())
			}
			w.checkLog(0)
		})
	}
}

// TestNetlockFailedDumpUnlocks: a dump that fails after locking removes
// the lock (network-unlock runs) and leaves the tree running.
func TestNetlockFailedDumpUnlocks(t *testing.T) {
	needRoot(t)
	for _, method := range []string{"nftables", "iptables"} {
		t.Run(method, func(t *testing.T) {
			n := makeNetns(t)
			w := startInNetns(t, n)
			script, alog := actionLog(t)
			fail := `[ "$CRTOOLS_SCRIPT_ACTION" != post-dump ]`
			dir := t.TempDir()
			code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", dir, "--network-lock", method,
				"--action-script", script, "--action-script", fail)
			if code == 0 {
				t.Fatalf("dump with a failing post-dump script succeeded: %s", out)
			}
			if got, want := actions(alog), "pre-dump network-lock post-dump network-unlock"; got != want {
				t.Fatalf("actions %q, want %q", got, want)
			}
			n.waitUnlocked(t, "godwit-"+strconv.Itoa(w.pid), "after the failed dump")
			if tracerOf(w.pid) != 0 {
				t.Fatalf("pid %d still traced after the failed dump", w.pid)
			}
			w.waitTicks(3)
			w.finishOriginal(t, "after the failed dump")
		})
	}
}

// TestNetlockGodwitKilled: godwit killed (SIGKILL) while it holds the lock:
// the guard removes the lock, and the tree runs on.
func TestNetlockGodwitKilled(t *testing.T) {
	needRoot(t)
	n := makeNetns(t)
	w := startInNetns(t, n)
	tmp := t.TempDir()
	pidfile := filepath.Join(tmp, "script.pid")
	// Holds the dump in its post-dump script: the tree frozen, the lock
	// on.
	hold := `if [ "$CRTOOLS_SCRIPT_ACTION" = post-dump ]; then echo $$ > ` + pidfile + `.tmp; mv ` + pidfile + `.tmp ` + pidfile + `; exec sleep 60; fi`
	cmd := exec.Command(godwitBin, "dump", "-t", strconv.Itoa(w.pid), "-D", filepath.Join(tmp), "--action-script", hold)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	var scriptPid int
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		killAndForget(scriptPid)
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(pidfile)
		if err == nil {
			scriptPid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the dump did not reach its post-dump script")
		}
		time.Sleep(10 * time.Millisecond)
	}
	lock := "godwit-" + strconv.Itoa(w.pid)
	if !strings.Contains(n.ruleset(t), lock) {
		t.Fatalf("no lock %s while the dump runs:\n%s", lock, n.ruleset(t))
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-done
	killAndForget(scriptPid)
	n.waitUnlocked(t, lock, "after godwit was killed")
	w.waitTicks(3)
	w.finishOriginal(t, "after godwit was killed")
}

// TestNetlockRestoreKilled: a restore killed (SIGKILL) after it took over
// the lock the dump kept leaves no lock behind either.
func TestNetlockRestoreKilled(t *testing.T) {
	needRoot(t)
	n := makeNetns(t)
	w := startInNetns(t, n)
	lock := "godwit-" + strconv.Itoa(w.pid)
	dir := w.dump(t)
	w.reapKilled(t)
	if !strings.Contains(n.ruleset(t), lock) {
		t.Fatalf("no lock %s after the dump:\n%s", lock, n.ruleset(t))
	}
	pidfile := filepath.Join(t.TempDir(), "script.pid")
	hold := `if [ "$CRTOOLS_SCRIPT_ACTION" = pre-restore ]; then echo $$ > ` + pidfile + `.tmp; mv ` + pidfile + `.tmp ` + pidfile + `; exec sleep 60; fi`
	cmd := n.command(godwitBin, "restore", "-D", dir, "--action-script", hold)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	var scriptPid int
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		killAndForget(scriptPid)
		killAndForget(w.pid)
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if b, err := os.ReadFile(pidfile); err == nil {
			scriptPid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the restore did not reach its pre-restore script")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(n.ruleset(t), lock) {
		t.Fatalf("lock %s gone before the restore was killed:\n%s", lock, n.ruleset(t))
	}
	// nsenter execs godwit in place: this is godwit's PID.
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-done
	killAndForget(scriptPid)
	n.waitUnlocked(t, lock, "after the restore was killed")
	if pidExists(w.pid) {
		t.Fatalf("pid %d exists: the killed restore had not made it yet", w.pid)
	}
}
