package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"godwit/migrate"
)

// TestMigrateLayoutChurn migrates a program that changes its memory layout
// every millisecond (mmap, mremap grow and move, shrink, munmap, mprotect,
// MADV_DONTNEED, rewrites) through several pre-copy rounds, restored lazily
// and filled whole, and has it check every page it keeps on the
// destination: each round's layout must be followed, and the final one
// restored exactly.
func TestMigrateLayoutChurn(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "churn")
	if out, err := exec.Command("gcc", "-O2", "-Wall", "-o", bin, "workloads/churn.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	m := newMigLab(t)
	m.startAgent()
	for _, c := range []struct {
		name string
		args []string
	}{
		{"lazy", nil},
		{"full", []string{"--no-lazy-restore"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := startOn(t, m.a, bin)
			// Rounds that cannot converge: several of them, then the
			// overrun's stop-and-copy. The budget is 1ns, since the
			// policy cannot see the layout churn: on an idle machine
			// round 0 is so short that a 1ms budget predicts a fit.
			code, res, stderr := m.send(w, append([]string{"--max-rounds", "4", "--downtime-budget", "1ns"}, c.args...)...)
			if code != 0 {
				t.Fatalf("migrate send: exit %d: %s", code, stderr)
			}
			if len(res.Rounds) < 3 {
				t.Errorf("%d rounds, want pre-copy rounds and the final one: %+v", len(res.Rounds), res.Rounds)
			}
			// The frozen dump named the VMAs' flags without smaps' walk.
			if so := res.Switchover; so == nil || so.VMAFlags != "kernel" {
				t.Errorf("switch-over %+v: VMA flags not read from the kernel's VMAs", so)
			}
			for _, r := range res.Rounds {
				t.Logf("round %d: %d pages in %v", r.N, r.Pages, r.Duration)
			}
			// The agent made the task from the first round and followed
			// each round's layout: the restore overlapped with the rounds.
			if ov := res.Overlap; ov == nil || ov.State != migrate.OverlapPrepared || ov.PreparedPages == 0 {
				t.Errorf("overlap %+v: want the task prepared during the rounds", ov)
			} else {
				t.Logf("overlap: %d pages before the freeze, %d at the switch-over", ov.PreparedPages, ov.FinalPages)
			}
			rp := m.moved(w)
			w.waitTicks(3)
			if err := syscall.Kill(rp, syscall.SIGUSR1); err != nil {
				t.Fatal(err)
			}
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				log := readFile(w.log)
				if strings.Contains(log, "bad ") {
					t.Fatalf("memory wrong on the destination\n%s", w.tail())
				}
				if strings.Contains(log, "done ") {
					t.Log(log[strings.LastIndex(log, "done "):])
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("moved program did not finish\n%s", w.tail())
				}
			}
		})
	}
}

// TestMigrateReprotect migrates a program whose region, mapped read-write
// when the pre-copy rounds prepared the task on B, is made executable as a
// whole just before the final dump (its pre-dump action script): same
// bounds and flags, so the prepared mapping is kept, and it must still get
// the final protection: the program runs code there on B.
func TestMigrateReprotect(t *testing.T) {
	m := newMigLab(t)
	m.startAgent()
	w := startOn(t, m.a, cWorkload(t, "reprot"))
	script := filepath.Join(t.TempDir(), "rwx.sh")
	body := `[ "$CRTOOLS_SCRIPT_ACTION" = pre-dump ] || exit 0
kill -USR2 "$CRTOOLS_INIT_PID"
i=0
while [ $i -lt 3000 ]; do grep -q '^rwx$' ` + w.log + ` && exit 0; sleep 0.01; i=$((i+1)); done
exit 1
`
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	code, res, stderr := m.send(w, "--max-rounds", "2", "--action-script", "sh -e "+script)
	if code != 0 {
		t.Fatalf("migrate send: exit %d: %s", code, stderr)
	}
	if !strings.Contains(readFile(w.log), "\nrwx\n") {
		t.Fatalf("the region was not made executable before the final dump\n%s", w.tail())
	}
	if ov := res.Overlap; ov == nil || ov.State != migrate.OverlapPrepared || ov.PreparedPages == 0 {
		t.Fatalf("overlap %+v: want the task prepared during the rounds", ov)
	}
	rp := m.moved(w)
	w.waitTicks(3)
	if err := syscall.Kill(rp, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if strings.Contains(readFile(w.log), "done ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("moved program did not finish\n%s", w.tail())
		}
	}
}
