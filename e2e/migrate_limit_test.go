package e2e

import (
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
