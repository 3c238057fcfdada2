package e2e

import (
	"fmt"
	"io"
	"net"
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

// newLazyServiceLab is a service lab whose agent can also fetch lazy
// pages from the source (post-copy, hybrid).
func newLazyServiceLab(t *testing.T, agentArgs ...string) *serviceLab {
	t.Helper()
	s := newServiceLabNoAgent(t)
	client := filepath.Join(s.certs, s.b.Addr(), "client")
	s.startAgent(append([]string{"--tls-client-cert", filepath.Join(client, "cert.pem"), "--tls-client-key", filepath.Join(client, "key.pem")}, agentArgs...)...)
	return s
}

// lazyArgs are the source's arguments for mode (postcopy or hybrid).
func (s *serviceLab) lazyArgs(mode string) []string {
	server := filepath.Join(s.certs, s.a.Addr(), "server")
	args := []string{"--mode", mode, "--tls-server-cert", filepath.Join(server, "cert.pem"), "--tls-server-key", filepath.Join(server, "key.pem")}
	if mode == string(migrate.ModeHybrid) {
		args = append(args, "--max-rounds", "2", "--downtime-budget", "1ms")
	}
	return args
}

// A redis server with live clients moves with --mode postcopy and
// --tcp-established: its connections are locked on A at the freeze,
// restored on B with the tree, which runs while its pages still come from
// the frozen source; no client sees an error, their counters go on, and
// the keys, the server's data and a client's identity are the same on B.
func TestMigrateRedisWithClientsPostcopy(t *testing.T) {
	s := newLazyServiceLab(t)
	migrateRedisWithClients(t, s, s.lazyArgs(string(migrate.ModePostcopy))...)
	checkLazyResult(t, s.res, migrate.ModePostcopy)
}

// TestMigrateRedisWithClientsHybrid: the same after two pre-copy rounds,
// the last dirty pages fetched lazily.
func TestMigrateRedisWithClientsHybrid(t *testing.T) {
	s := newLazyServiceLab(t)
	migrateRedisWithClients(t, s, s.lazyArgs(string(migrate.ModeHybrid))...)
	checkLazyResult(t, s.res, migrate.ModeHybrid)
	if len(s.res.Rounds) != 3 {
		t.Errorf("rounds %+v: want 2 pre-copy rounds and the final one", s.res.Rounds)
	}
}

func checkLazyResult(t *testing.T, res *migrate.Result, mode migrate.Mode) {
	t.Helper()
	if res.Mode != mode || res.Downtime <= 0 || res.FailedPhase != "" {
		t.Errorf("result %+v", res)
	}
	if pc := res.Postcopy; pc == nil || pc.Pages == 0 {
		t.Errorf("postcopy %+v: want the lazy pages filled after the resume", pc)
	}
}

// A post-copy (and a hybrid) migration that fails after the freeze, with
// the connections locked on both hosts and the service address moved to
// B (the user's pre-restore script moves it, then fails), leaves the
// server on A with its clients: connections out of repair mode and
// unlocked, the address back (migrate-abort), no lock on either host; a
// second migration in the same mode then succeeds.
func TestMigrateLazyFailureKeepsClients(t *testing.T) {
	for _, mode := range []migrate.Mode{migrate.ModePostcopy, migrate.ModeHybrid} {
		t.Run(string(mode), func(t *testing.T) {
			s := newLazyServiceLab(t)
			const port = 7009
			prog := filepath.Join(t.TempDir(), "echo.py")
			if err := os.WriteFile(prog, []byte(echoServer), 0o644); err != nil {
				t.Fatal(err)
			}
			w := s.startServer(port, "python3", prog, s.vip.String(), strconv.Itoa(port))
			const k = 2
			cs := startClientsDial(t, func() (net.Conn, error) { return s.dial(port) }, k, echoExchange)
			cs.waitProgress(t, make([]int, k), 20, "before the migration")
			args := append([]string{"--tcp-established", "--action-script", s.script(`[ "$CRTOOLS_SCRIPT_ACTION" != pre-restore ]`)}, s.lazyArgs(string(mode))...)
			code, res, stderr := s.send(w, args...)
			if code == 0 || res.FailedPhase != migrate.PhaseFreeze || !strings.Contains(res.Error, "pre-restore") {
				t.Fatalf("failing pre-restore script: exit %d, phase %q, error %q\n%s", code, res.FailedPhase, res.Error, stderr)
			}
			if res.Connections != k {
				t.Errorf("%d connections locked on B before the failure, want %d", res.Connections, k)
			}
			if !alive(w.rootPID) {
				t.Fatalf("server died on the source")
			}
			if state, tracer := procState(t, w.rootPID); tracer != 0 || state == "T" || state == "t" {
				t.Fatalf("server left in state %s, tracer %d", state, tracer)
			}
			s.settled(s.a)
			cs.waitProgress(t, cs.snapshot(), 20, "after the failed migration")
			s.migrate(w, k, s.lazyArgs(string(mode))...)
			checkLazyResult(t, s.res, mode)
			cs.waitProgress(t, cs.snapshot(), 20, "after the migration")
			cs.finish(t)
		})
	}
}

// A post-copy (and a hybrid) migration whose agent dies right after the
// user's post-dump script took the service address off A, before the
// images reached B: the dump rolls back in the freeze phase, migrate-abort
// puts the address back on A, no lock is left, the clients go on.
func TestMigrateLazyFailureAtPostDump(t *testing.T) {
	for _, mode := range []migrate.Mode{migrate.ModePostcopy, migrate.ModeHybrid} {
		t.Run(string(mode), func(t *testing.T) {
			s := newLazyServiceLab(t)
			const port = 7014
			prog := filepath.Join(t.TempDir(), "echo.py")
			if err := os.WriteFile(prog, []byte(echoServer), 0o644); err != nil {
				t.Fatal(err)
			}
			w := s.startServer(port, "python3", prog, s.vip.String(), strconv.Itoa(port))
			const k = 2
			cs := startClientsDial(t, func() (net.Conn, error) { return s.dial(port) }, k, echoExchange)
			cs.waitProgress(t, make([]int, k), 20, "before the migration")
			sync := t.TempDir()
			extra := fmt.Sprintf(`if [ "$CRTOOLS_SCRIPT_ACTION" = post-dump ]; then touch %[1]s/post-dump; while [ ! -e %[1]s/killed ]; do sleep 0.02; done; fi`, sync)
			killed := false
			done := make(chan struct{})
			go func() {
				defer close(done)
				deadline := time.Now().Add(2 * time.Minute)
				for !fileExists(filepath.Join(sync, "post-dump")) {
					if time.Now().After(deadline) {
						return
					}
					time.Sleep(10 * time.Millisecond)
				}
				killAndForget(s.agentP)
				s.agentP = 0
				killed = true
				// The source sees the link's end before it goes on.
				time.Sleep(time.Second)
				_ = os.WriteFile(filepath.Join(sync, "killed"), nil, 0o644)
			}()
			args := append([]string{"--tcp-established", "--action-script", s.script(extra)}, s.lazyArgs(string(mode))...)
			code, res, stderr := s.send(w, args...)
			<-done
			if !killed {
				t.Fatalf("post-dump never reached: exit %d, %+v\n%s", code, res, stderr)
			}
			if code == 0 || res.FailedPhase != migrate.PhaseFreeze {
				t.Fatalf("agent killed at post-dump: exit %d, phase %q, error %q\n%s", code, res.FailedPhase, res.Error, stderr)
			}
			t.Logf("send: %s", res.Error)
			if !alive(w.rootPID) {
				t.Fatalf("server died on the source")
			}
			if state, tracer := procState(t, w.rootPID); tracer != 0 || state == "T" || state == "t" {
				t.Fatalf("server left in state %s, tracer %d", state, tracer)
			}
			s.settled(s.a)
			cs.waitProgress(t, cs.snapshot(), 20, "after the failed migration")
			cs.finish(t)
		})
	}
}

// The agent honours --network-lock iptables, as dump and restore do: a
// post-copy migration of a server with clients, both hosts locking with
// iptables chains (seen by the pre-restore script, when both hold their
// lock) and no nftables table, none left afterwards, no client error.
func TestMigrateAgentNetworkLockIptables(t *testing.T) {
	s := newLazyServiceLab(t, "--network-lock", "iptables")
	const port = 7010
	prog := filepath.Join(t.TempDir(), "echo.py")
	if err := os.WriteFile(prog, []byte(echoServer), 0o644); err != nil {
		t.Fatal(err)
	}
	w := s.startServer(port, "python3", prog, s.vip.String(), strconv.Itoa(port))
	const k = 2
	cs := startClientsDial(t, func() (net.Conn, error) { return s.dial(port) }, k, echoExchange)
	cs.waitProgress(t, make([]int, k), 20, "before the migration")
	seen := t.TempDir()
	list := func(h *lab.Host, name string) string {
		return fmt.Sprintf("nsenter --net=%s -- iptables -S >%s/%s.ipt && nsenter --net=%s -- nft list tables >%s/%s.nft",
			h.NetnsPath(), seen, name, h.NetnsPath(), seen, name)
	}
	extra := fmt.Sprintf(`if [ "$CRTOOLS_SCRIPT_ACTION" = pre-restore ]; then %s && %s; fi`, list(s.a, "a"), list(s.b, "b"))
	args := append([]string{"--tcp-established", "--network-lock", "iptables", "--action-script", s.script(extra)}, s.lazyArgs(string(migrate.ModePostcopy))...)
	code, res, stderr := s.send(w, args...)
	if code != 0 {
		t.Fatalf("migrate send: exit %d: %s\n%s", code, res.Error, stderr)
	}
	for _, h := range []string{"a", "b"} {
		ipt, nft := readFile(filepath.Join(seen, h+".ipt")), readFile(filepath.Join(seen, h+".nft"))
		// One DROP rule per connection and direction, each naming the
		// server's port.
		if n := strings.Count(ipt, ":"+strconv.Itoa(port)) + strings.Count(ipt, "--sport "+strconv.Itoa(port)) + strings.Count(ipt, "--dport "+strconv.Itoa(port)); !strings.Contains(ipt, "-N godwit-") || n < 2*k {
			t.Errorf("host %s at pre-restore: no iptables lock of the %d connections:\n%s", h, k, ipt)
		}
		if strings.Contains(nft, "godwit") {
			t.Errorf("host %s at pre-restore: an nftables lock with --network-lock iptables:\n%s", h, nft)
		}
	}
	s.moved(w)
	s.settled(s.b)
	for _, h := range []*lab.Host{s.a, s.b} {
		out, err := exec.Command("nsenter", "-t", strconv.Itoa(h.InitPID()), "-n", "--", "iptables", "-S").CombinedOutput()
		if err != nil || strings.Contains(string(out), "godwit") {
			t.Errorf("iptables on %s after the migration: %v\n%s", h.Name(), err, out)
		}
	}
	cs.waitProgress(t, cs.snapshot(), 20, "after the migration")
	cs.finish(t)
}

// The agent killed (SIGKILL) right after the pre-restore script moved the
// service address to B, while B holds its lock of the connections: the
// source runs on with its connections and takes the address back
// (migrate-abort), and no client sees a reset meanwhile: B's lock, left
// to its guard, stays while the address is on B and goes once it left.
func TestMigrateAgentKilledAfterPreRestore(t *testing.T) {
	for _, mode := range []migrate.Mode{migrate.ModePrecopy, migrate.ModePostcopy, migrate.ModeHybrid} {
		t.Run(string(mode), func(t *testing.T) {
			s := newLazyServiceLab(t)
			const port = 7011
			prog := filepath.Join(t.TempDir(), "echo.py")
			if err := os.WriteFile(prog, []byte(echoServer), 0o644); err != nil {
				t.Fatal(err)
			}
			w := s.startServer(port, "python3", prog, s.vip.String(), strconv.Itoa(port))
			const k = 3
			cs := startClientsDial(t, func() (net.Conn, error) { return s.dial(port) }, k, echoExchange)
			cs.waitProgress(t, make([]int, k), 20, "before the migration")
			sync := t.TempDir()
			// At pre-restore (the address on B, B locked) the script
			// waits until the test has killed the agent and let the
			// clients send to B for a while.
			extra := fmt.Sprintf(`if [ "$CRTOOLS_SCRIPT_ACTION" = pre-restore ]; then touch %[1]s/pre-restore; while [ ! -e %[1]s/killed ]; do sleep 0.02; done; fi`, sync)
			killed := false // read after done
			done := make(chan struct{})
			go func() {
				defer close(done)
				deadline := time.Now().Add(2 * time.Minute)
				for !fileExists(filepath.Join(sync, "pre-restore")) {
					if time.Now().After(deadline) {
						return
					}
					time.Sleep(10 * time.Millisecond)
				}
				killAndForget(s.agentP)
				s.agentP = 0
				killed = true
				// The clients' retransmissions reach B meanwhile
				// (their backoff: some within 3 s).
				time.Sleep(3 * time.Second)
				_ = os.WriteFile(filepath.Join(sync, "killed"), nil, 0o644)
			}()
			args := []string{"--tcp-established", "--action-script", s.script(extra)}
			if mode != migrate.ModePrecopy {
				args = append(args, s.lazyArgs(string(mode))...)
			}
			code, res, stderr := s.send(w, args...)
			<-done
			if code == 0 {
				t.Fatalf("migrate send succeeded with its agent killed: %+v\n%s", res, stderr)
			}
			// The failure must be the agent's death at pre-restore, B
			// holding its lock of every connection: not an earlier one.
			if !fileExists(filepath.Join(sync, "pre-restore")) || !killed {
				t.Fatalf("failed before pre-restore (agent not killed): phase %s: %s\n%s", res.FailedPhase, res.Error, stderr)
			}
			if res.Connections != k {
				t.Errorf("%d connections locked on B at pre-restore, want %d", res.Connections, k)
			}
			t.Logf("send: phase %s: %s", res.FailedPhase, res.Error)
			if !alive(w.rootPID) {
				t.Fatalf("server died on the source")
			}
			if state, tracer := procState(t, w.rootPID); tracer != 0 || state == "T" || state == "t" {
				t.Fatalf("server left in state %s, tracer %d", state, tracer)
			}
			// B's lock goes once the address left B (its guard polls).
			deadline := time.Now().Add(10 * time.Second)
			for strings.Contains(nftTables(t, s.b), "godwit") && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			s.settled(s.a)
			cs.waitProgress(t, cs.snapshot(), 20, "after the failed migration")
			cs.finish(t)
		})
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// echoServerBig is echoServer holding sys.argv[3] MiB of non-zero data.
const echoServerBig = "import sys\nblob = bytes(range(256)) * (int(sys.argv[3]) << 12)\n" + echoServer

// B's lock goes as soon as the moved tree runs, not when its last lazy
// page is in: a server holding 512 MiB moves with --mode postcopy and its
// clients exchange again on B while `migrate send` still waits for the
// pages to be in.
func TestMigratePostcopyUnlocksAtResume(t *testing.T) {
	s := newLazyServiceLab(t)
	const port = 7012
	prog := filepath.Join(t.TempDir(), "echo.py")
	if err := os.WriteFile(prog, []byte(echoServerBig), 0o644); err != nil {
		t.Fatal(err)
	}
	w := s.startServer(port, "python3", prog, s.vip.String(), strconv.Itoa(port), "512")
	const k = 2
	cs := startClientsDial(t, func() (net.Conn, error) { return s.dial(port) }, k, echoExchange)
	cs.waitProgress(t, make([]int, k), 20, "before the migration")
	type sent struct {
		code   int
		res    *migrate.Result
		stderr string
	}
	done := make(chan sent, 1)
	go func() {
		args := append([]string{"--tcp-established", "--action-script", s.script("")}, s.lazyArgs(string(migrate.ModePostcopy))...)
		code, res, stderr := s.send(w, args...)
		done <- sent{code, res, stderr}
	}()
	// The program on B: its clients' progress from then on.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if p, err := s.b.RootPID(w.hostPID); err == nil && alive(p) {
			break
		}
		select {
		case r := <-done:
			t.Fatalf("migrate send ended (exit %d, %+v) before the program ran on B: %s", r.code, r.res, r.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("program not on B")
		}
		time.Sleep(5 * time.Millisecond)
	}
	base := cs.snapshot()
	progressed := make(chan struct{})
	go func() {
		defer close(progressed)
		for {
			now := cs.snapshot()
			if now[0] >= base[0]+5 && now[1] >= base[1]+5 {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	var r sent
	select {
	case <-progressed:
		r = <-done
	case r = <-done:
		t.Errorf("migrate send ended (every page in after %v) before the clients exchanged on B: the lock stayed until then",
			r.res.Postcopy)
	}
	if r.code != 0 {
		t.Fatalf("migrate send: exit %d: %s\n%s", r.code, r.res.Error, r.stderr)
	}
	checkLazyResult(t, r.res, migrate.ModePostcopy)
	s.moved(w)
	s.settled(s.b)
	cs.waitProgress(t, cs.snapshot(), 20, "after the migration")
	cs.finish(t)
	t.Logf("post-copy %+v", r.res.Postcopy)
}

// A post-copy (and a hybrid) migration whose service address is not
// moved (no action script) fails before the commit: the agent's check
// finds the connections' address is not local on B, the source rolls
// back and runs on with its client connected, no lock on either host.
func TestMigratePostcopyAddressNotMoved(t *testing.T) {
	for _, mode := range []migrate.Mode{migrate.ModePostcopy, migrate.ModeHybrid} {
		t.Run(string(mode), func(t *testing.T) {
			s := newLazyServiceLab(t)
			const port = 7013
			prog := filepath.Join(t.TempDir(), "echo.py")
			if err := os.WriteFile(prog, []byte(echoServer), 0o644); err != nil {
				t.Fatal(err)
			}
			w := s.startServer(port, "python3", prog, s.vip.String(), strconv.Itoa(port))
			c, err := s.dial(port)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			echo := func(when string) {
				t.Helper()
				msg := []byte("ping " + when)
				_ = c.SetDeadline(time.Now().Add(20 * time.Second))
				if _, err := c.Write(msg); err != nil {
					t.Fatalf("client %s: %v", when, err)
				}
				got := make([]byte, len(msg))
				if _, err := io.ReadFull(c, got); err != nil || string(got) != string(msg) {
					t.Fatalf("client %s: echo %q, %v", when, got, err)
				}
			}
			echo("before")
			code, res, stderr := s.send(w, append([]string{"--tcp-established"}, s.lazyArgs(string(mode))...)...)
			if code == 0 || res.FailedPhase != migrate.PhaseFreeze || !strings.Contains(res.Error, "not local") {
				t.Fatalf("exit %d, %+v: want the check's refusal of the address before the commit\n%s", code, res, stderr)
			}
			t.Logf("send: %s", res.Error)
			if !alive(w.rootPID) {
				t.Fatalf("server died on the source")
			}
			if state, tracer := procState(t, w.rootPID); tracer != 0 || state == "T" || state == "t" {
				t.Fatalf("server left in state %s, tracer %d", state, tracer)
			}
			if p, err := s.b.RootPID(w.hostPID); err == nil && alive(p) {
				t.Errorf("a copy runs on B")
			}
			// The agent drops its lock once it has the Abort.
			deadline := time.Now().Add(10 * time.Second)
			for strings.Contains(nftTables(t, s.b), "godwit") && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			s.settled(s.a)
			echo("after")
		})
	}
}

// In post-copy the source's lock goes with the source tree, killed once
// every page was fetched, even if `migrate send` is killed before the
// agent's end of the migration reaches it: no table is left on A. The
// agent's messages to A are dropped from the commit on (a table on A
// named without "godwit"; the tree holds 128 MiB, so that its pages are
// still coming then), so send waits on them when it is killed.
func TestMigratePostcopySourceUnlockedWithTree(t *testing.T) {
	s := newLazyServiceLab(t)
	const port = 7015
	prog := filepath.Join(t.TempDir(), "echo.py")
	if err := os.WriteFile(prog, []byte(echoServerBig), 0o644); err != nil {
		t.Fatal(err)
	}
	w := s.startServer(port, "python3", prog, s.vip.String(), strconv.Itoa(port), "128")
	c, err := s.dial(port)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	nftA := fmt.Sprintf("nsenter -t %d -n -- nft", s.a.InitPID())
	t.Cleanup(func() { _ = exec.Command("sh", "-c", nftA+" delete table inet droplink").Run() })
	args := append([]string{"--tcp-established", "--action-script", s.script("")}, s.lazyArgs(string(migrate.ModePostcopy))...)
	ss := s.startSend(w, []string{"GODWIT_TEST_SWITCHOVER=notice"}, args...)
	ss.await(t, "committed (post-copy)")
	drop := fmt.Sprintf(`%s add table inet droplink && %[1]s 'add chain inet droplink in { type filter hook input priority -300; }' && %[1]s add rule inet droplink in ip saddr %s tcp sport 7355 drop`,
		nftA, s.b.Addr())
	if out, err := exec.Command("sh", "-c", drop).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for alive(w.rootPID) {
		if time.Now().After(deadline) {
			_, e := ss.output()
			t.Fatalf("source tree not killed after the pages went:\n%s", e)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if p, err := s.b.RootPID(w.hostPID); err != nil || !alive(p) {
		t.Fatalf("program not running on B: %v", err)
	}
	// The dump ends (its lock released or kept) right after the kill.
	time.Sleep(2 * time.Second)
	select {
	case err := <-ss.waited:
		_, e := ss.output()
		t.Fatalf("migrate send ended (%v) with the agent's messages dropped:\n%s", err, e)
	default:
	}
	killAndForget(ss.pid)
	deadline = time.Now().Add(5 * time.Second)
	for strings.Contains(nftTables(t, s.a), "godwit") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if tables := nftTables(t, s.a); strings.Contains(tables, "godwit") {
		t.Errorf("network lock left on A after migrate send was killed: %s", tables)
	}
}
