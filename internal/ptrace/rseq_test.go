package ptrace

import (
	"fmt"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A thread frozen inside an rseq critical section must abort it when it
// resumes, injection or not: the first abort after the thaw must see the
// iteration count of the freeze.
func TestRseqAbortAfterInjection(t *testing.T) {
	needRoot(t)
	tr := New()
	c := startChild(t, tr, buildC(t, "rseq"))
	var insideA, abortsA, ringA uint64
	if _, err := fmt.Sscanf(c.first, "%v %v %v", &insideA, &abortsA, &ringA); err != nil {
		t.Fatalf("child line %q: %v", c.first, err)
	}
	for readU64(t, c.pid, insideA) == 0 {
		time.Sleep(time.Millisecond)
	}
	for round, tries := 0, 0; round < 5; tries++ {
		if tries > 100 {
			t.Fatal("never froze the thread inside its critical section")
		}
		if _, err := tr.FreezeProcess(c.pid, 0); err != nil {
			t.Fatal(err)
		}
		if !inRseqCS(t, tr, c.pid) {
			// Caught between sections (a few instructions): again.
			if err := tr.ThawProcess(c.pid, false); err != nil {
				t.Fatal(err)
			}
			continue
		}
		round++
		a0 := readU64(t, c.pid, abortsA)
		i0 := readU64(t, c.pid, insideA)
		if _, err := tr.InjectSyscall(c.pid, unix.SYS_GETPID); err != nil {
			t.Fatal(err)
		}
		if err := tr.ThawProcess(c.pid, false); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for readU64(t, c.pid, abortsA) == a0 {
			if time.Now().After(deadline) {
				t.Fatal("no abort after the thaw")
			}
			time.Sleep(time.Millisecond)
		}
		if got := readU64(t, c.pid, ringA+8*((a0+1)%4096)); got != i0 {
			t.Fatalf("round %d: first abort after thaw saw %d iterations, frozen at %d: the section ran on after the stop", round, got, i0)
		}
	}
}

// inRseqCS tells whether stopped thread tid's rip lies in the rseq critical
// section its rseq area points to.
func inRseqCS(t *testing.T, tr *Tracer, tid int) bool {
	t.Helper()
	cfg, err := tr.GetRseqConfig(tid)
	if err != nil || cfg.AbiPointer == 0 {
		t.Fatalf("rseq config %+v %v", cfg, err)
	}
	cs := readU64(t, tid, cfg.AbiPointer+8)
	if cs == 0 {
		return false
	}
	r, err := tr.GetRegs(tid)
	if err != nil {
		t.Fatal(err)
	}
	start, length := readU64(t, tid, cs+8), readU64(t, tid, cs+16)
	return r.Rip >= start && r.Rip-start < length
}
