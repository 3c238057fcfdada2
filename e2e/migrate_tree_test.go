package e2e

import (
	"bufio"
	"io"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"godwit/migrate"
)

// startTreeShare starts workloads/treeshare.c on host A (a root and two
// children, private memory each, one shared anonymous mapping) and
// returns it and its children's PIDs on host A; the children are killed
// at the end if still there (a failed migration leaves them running).
func startTreeShare(t *testing.T, m *migLab) (*labWorkload, []int) {
	t.Helper()
	w := startOn(t, m.a, cWorkload(t, "treeshare"))
	mm := regexp.MustCompile(`(?m)^ready (\d+) (\d+) (\d+)$`).FindStringSubmatch(readFile(w.log))
	if mm == nil {
		t.Fatalf("no ready line\n%s", w.tail())
	}
	var kids []int
	for _, s := range mm[2:] {
		n, _ := strconv.Atoi(s)
		kids = append(kids, n)
	}
	t.Cleanup(func() {
		for _, k := range kids {
			if p, err := m.a.RootPID(k); err == nil {
				killAndForget(p)
			}
		}
	})
	return w, kids
}

// TestMigrateTreeOverlap migrates a tree of three processes (private
// memory rewritten all the time, so between the rounds; one shared
// anonymous mapping) in pre-copy with the restore overlapped with the
// rounds: --json says the three tasks were prepared and pages written
// into them before the freeze; on B every task checks each of its pages,
// and the children answer the root through the shared mapping (one
// object in all three).
func TestMigrateTreeOverlap(t *testing.T) {
	m := newMigLab(t)
	m.startAgent()
	w, kids := startTreeShare(t, m)
	code, res, stderr := m.send(w, "--max-rounds", "3")
	if code != 0 {
		t.Fatalf("migrate send: exit %d: %s", code, stderr)
	}
	if res.Tasks != 3 {
		t.Errorf("%d tasks migrated, want 3", res.Tasks)
	}
	ov := res.Overlap
	if ov == nil || ov.State != migrate.OverlapPrepared || ov.Tasks != 3 || ov.PreparedPages < 3*2048 {
		t.Fatalf("overlap %+v: want the three tasks prepared during the rounds, their memory written", ov)
	}
	t.Logf("overlap: %d pages before the freeze, %d at the switch-over; %d rounds", ov.PreparedPages, ov.FinalPages, len(res.Rounds))
	rp := m.moved(w)
	for _, k := range kids {
		if p, err := m.a.RootPID(k); err == nil && alive(p) {
			t.Fatalf("child %d still alive on the source host", k)
		}
		if _, err := m.b.RootPID(k); err != nil {
			t.Fatalf("child %d not on the destination: %v", k, err)
		}
	}
	mark := len(readFile(w.log))
	w.waitTicks(3)
	if err := syscall.Kill(rp, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		after := readFile(w.log)[mark:]
		if strings.Contains(after, "bad ") {
			t.Fatalf("memory wrong on the destination\n%s", after)
		}
		if strings.Contains(after, "done ") {
			for _, want := range []string{"ok 0 ", "ok 1 ", "ok 2 ", "shared ok ", "done 1"} {
				if !strings.Contains(after, want) {
					t.Fatalf("no %q on the destination\n%s", want, after)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("moved tree did not finish\n%s", w.tail())
		}
	}
}

// TestMigrateTreeFailureCleansUp: a migration of a tree that fails while
// the agent holds the tree it prepared (send killed, interrupted and
// aborting, or the agent killed) leaves the source tree running as it was and no prepared
// task on the destination.
func TestMigrateTreeFailureCleansUp(t *testing.T) {
	for _, victim := range []string{"send", "interrupt", "agent"} {
		t.Run(victim, func(t *testing.T) {
			m := newMigLab(t)
			m.startAgent()
			w, kids := startTreeShare(t, m)
			args := append([]string{"migrate", "send", "--to", m.b.Addr(), "-t", strconv.Itoa(w.hostPID), "--max-rounds", "50", "--downtime-budget", "1ns"}, m.tlsArgs(m.a, "client")...)
			cmd := m.a.Command(godwitBin, args...)
			pr, err := cmd.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			_, sendP, err := m.a.PID(cmd)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { killAndForget(sendP) })
			sc := bufio.NewScanner(pr)
			for sc.Scan() && !strings.HasPrefix(sc.Text(), "round 0") {
			}
			go func() { _, _ = io.Copy(io.Discard, pr) }()
			// Every task of the tree prepared on B, held traced.
			var prep []int
			for _, hp := range append([]int{w.hostPID}, kids...) {
				var p int
				for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
					if p, err = m.b.RootPID(hp); err == nil {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("task %d not prepared on the destination after a pre-copy round: %v", hp, err)
					}
				}
				if state, tracer := procState(t, p); tracer == 0 {
					t.Fatalf("prepared task %d in state %s, tracer %d: want traced", p, state, tracer)
				}
				prep = append(prep, p)
			}
			switch victim {
			case "send":
				killAndForget(sendP)
			case "interrupt":
				if err := syscall.Kill(sendP, syscall.SIGINT); err != nil {
					t.Fatal(err)
				}
			case "agent":
				// Its tasks die with it (the stub's lifeline).
				killAndForget(m.agentP)
			}
			waited := make(chan error, 1)
			go func() { waited <- cmd.Wait() }()
			select {
			case err := <-waited:
				if err == nil {
					t.Fatalf("migrate send succeeded with its %s gone", victim)
				}
			case <-time.After(2 * time.Minute):
				t.Fatalf("migrate send still running 2 minutes after its %s", victim)
			}
			for _, p := range prep {
				gone(t, p, "prepared task on the destination")
			}
			// The source tree runs on: untraced, unstopped, and its
			// children still answer the root through the shared page.
			deadline := time.Now().Add(10 * time.Second)
			for _, hp := range append([]int{w.hostPID}, kids...) {
				p, err := m.a.RootPID(hp)
				if err != nil || !alive(p) {
					t.Fatalf("source task %d gone: %v", hp, err)
				}
				for {
					state, tracer := procState(t, p)
					if tracer == 0 && state != "t" && state != "T" && len(trackHolders(p)) == 0 {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("source task %d left in state %s, tracer %d, holders %v", p, state, tracer, trackHolders(p))
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
			intact(t, w)
			mark := len(readFile(w.log))
			if err := syscall.Kill(w.rootPID, syscall.SIGUSR1); err != nil {
				t.Fatal(err)
			}
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				after := readFile(w.log)[mark:]
				if strings.Contains(after, "bad ") || strings.Contains(after, "shared bad") {
					t.Fatalf("source tree's memory wrong after the failed migration\n%s", after)
				}
				if strings.Contains(after, "done 1") {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("source tree did not answer\n%s", w.tail())
				}
			}
		})
	}
}
