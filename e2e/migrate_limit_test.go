package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"godwit/migrate"
)

// A program that rewrites its memory faster than pre-copy can move it,
// under a small agent bound (--max-migration-bytes): the rounds stop while
// the final dump (at worst every page) still fits, and the migration ends
// by stop-and-copy with the reason in its result, instead of failing at
// the bound.
func TestMigrateByteLimitFallsBack(t *testing.T) {
	const mib = 32
	for _, c := range []struct {
		name   string
		limit  int64
		rounds int // pre-copy rounds before the final
	}{
		// Room for one full round and a full final, and for a second
		// round of at most about 1.8 MiB on top: the program rewrites
		// 512 MB/s, so the pages it wrote during the first round
		// (whose count sizes the second) never fit, even when a
		// loaded machine starves it.
		{"after one round", 70 << 20, 1},
		// Not even room for a full round and a full final: stop-and-copy.
		{"stop-and-copy", 50 << 20, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := newMigLab(t)
			m.startAgent("--max-migration-bytes", strconv.FormatInt(c.limit, 10))
			w := startOnHost(t, m.a, memtickerBin(t), "-m", strconv.Itoa(mib), "-w", "512")
			logLine(t, w.log, regexp.MustCompile(`^ready pid=`), 0, 60*time.Second)
			code, res, stderr := m.send(w, "--max-rounds", "8", "--downtime-budget", "1ms")
			if code != 0 {
				t.Fatalf("migrate send: exit %d: %s", code, stderr)
			}
			rootB := m.moved(w)
			defer killAndForget(rootB)
			if res.PrecopyStop != migrate.StopByteLimit || res.FailedPhase != "" {
				t.Errorf("result %+v: want pre-copy stopped at the byte limit", res)
			}
			if len(res.Rounds) != c.rounds+1 {
				t.Errorf("rounds %+v: want %d pre-copy rounds and the final", res.Rounds, c.rounds)
			}
			var sent uint64
			for _, r := range res.Rounds {
				sent += r.Bytes
			}
			if sent > uint64(c.limit) || res.Rounds[0].Bytes < mib<<20 {
				t.Errorf("rounds %+v: %d bytes sent, limit %d", res.Rounds, sent, c.limit)
			}
			off := logSize(w.log)
			if err := syscall.Kill(rootB, syscall.SIGUSR1); err != nil {
				t.Fatal(err)
			}
			if check := memtickerCheck(t, w.log, rootB, off, 60*time.Second); check[1] != "ok" {
				t.Fatalf("the migrated program found its memory wrong: %s", check[0])
			}
		})
	}
}

// A bound that cannot hold even one full copy of the program fails the
// migration at the check, before anything froze it: the source runs on as
// it was.
func TestMigrateByteLimitTooSmall(t *testing.T) {
	m := newMigLab(t)
	m.startAgent("--max-migration-bytes", strconv.Itoa(16<<20))
	w := startOn(t, m.a, workloads["counter"], "-m", "32")
	code, res, stderr := m.send(w, "--max-rounds", "4")
	if code == 0 {
		t.Fatalf("migrate send succeeded: %+v", res)
	}
	if res.FailedPhase != migrate.PhaseCheck || !strings.Contains(res.Error, "--max-migration-bytes") || len(res.Rounds) != 0 {
		t.Errorf("result %+v (stderr %s): want a check failure naming --max-migration-bytes, no round", res, stderr)
	}
	if _, err := m.b.RootPID(w.hostPID); err == nil {
		t.Errorf("pid %d exists on the destination", w.hostPID)
	}
	intact(t, w)
	finishMoved(t, w, w.rootPID)
}

// A program that writes little while the first round runs, then rewrites
// all its memory at once: the next round is sized from a count of its
// dirty pages taken just before it, not from the first round's rate, so
// pre-copy stops there (the bound leaves room for one more full copy, not
// two) and the final dump takes the burst. Sized from the first round, a
// second round took the burst, the final a second one, and the agent
// failed the migration at its bound.
func TestMigrateRoundSizedFromCount(t *testing.T) {
	const mib = 32
	m := newMigLab(t)
	// Room for a full first round, a full final and about 16 MiB more.
	const limit = 88 << 20
	m.startAgent("--max-migration-bytes", strconv.Itoa(limit))
	w := startOnHost(t, m.a, memtickerBin(t), "-m", strconv.Itoa(mib), "-w", "2")
	logLine(t, w.log, regexp.MustCompile(`^ready pid=`), 0, 60*time.Second)
	gate := t.TempDir()
	s := m.startSend(w, []string{"GODWIT_TEST_ROUND_WAIT=" + gate}, "--max-rounds", "8", "--downtime-budget", "1us")
	// After each round the send waits for gate/N: the program bursts
	// first.
	stop := make(chan struct{})
	defer close(stop)
	bursts := make(chan int, 8)
	burst := regexp.MustCompile(`^burst pages=`)
	go func() {
		for n := 1; ; {
			select {
			case l := <-s.lines:
				if !strings.Contains(l, "migrate: test: round") {
					continue
				}
				off := logSize(w.log)
				if err := syscall.Kill(w.rootPID, syscall.SIGHUP); err != nil {
					t.Error(err)
					return
				}
				for deadline := time.Now().Add(30 * time.Second); matchFrom(w.log, burst, off) == nil; time.Sleep(5 * time.Millisecond) {
					if time.Now().After(deadline) {
						t.Error("no burst logged")
						return
					}
				}
				bursts <- n
				if err := os.WriteFile(filepath.Join(gate, strconv.Itoa(n)), nil, 0o600); err != nil {
					t.Error(err)
					return
				}
				n++
			case <-stop:
				return
			}
		}
	}()
	code, res := s.wait(t)
	_, stderr := s.output()
	if code != 0 {
		t.Fatalf("migrate send: exit %d (%d bursts): %s\n%s", code, len(bursts), res.Error, stderr)
	}
	rootB := m.moved(w)
	defer killAndForget(rootB)
	if res.PrecopyStop != migrate.StopByteLimit || len(res.Rounds) != 2 || len(bursts) != 1 {
		t.Errorf("rounds %+v, stop %q, %d bursts: want one pre-copy round, stopped at the byte limit by the burst counted after it", res.Rounds, res.PrecopyStop, len(bursts))
	}
	if fin := res.Rounds[len(res.Rounds)-1]; fin.Bytes < mib<<20*9/10 {
		t.Errorf("final round %+v: want the burst (%d MiB) in it", fin, mib)
	}
	off := logSize(w.log)
	if err := syscall.Kill(rootB, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	if check := memtickerCheck(t, w.log, rootB, off, 60*time.Second); check[1] != "ok" {
		t.Fatalf("the migrated program found its memory wrong: %s", check[0])
	}
}
