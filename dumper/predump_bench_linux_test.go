package dumper

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"godwit/internal/logging"
	"godwit/internal/ptrace"
	"godwit/internal/testutil"
)

// Pre-dump benchmarks: a rewriter workload with 1 GiB (or 4 GiB) of
// written memory, rewriting a share of it every second, is pre-dumped
// round after round into tmpfs (/dev/shm).
//
// Frozen time: a round freezes the target only to create the tracking
// uffd (round 1, three injected calls); later rounds do not freeze it at
// all. The floor, measured in the same run, is a bare freeze and thaw of
// the same process (PTRACE_SEIZE+INTERRUPT of every thread, then detach).
//
// Round size and duration: each round's duration is set against the floor
// of copying as many bytes out of the target into a file
// (testutil.DumpFloor's readv+write).
//
//	go test ./dumper -run XXX -bench PreDump -benchtime 1x
//	DUMPER_BENCH_4G=1 go test ./dumper -run XXX -bench PreDumpFrozen4GiB -benchtime 1x

func BenchmarkPreDumpFrozen1GiB(b *testing.B) { benchPreDump(b, 1024, 0, 1) }

func BenchmarkPreDumpFrozen4GiB(b *testing.B) {
	if os.Getenv("DUMPER_BENCH_4G") == "" {
		b.Skip("set DUMPER_BENCH_4G=1 (needs ~9 GiB free RAM)")
	}
	benchPreDump(b, 4096, 0, 1)
}

func BenchmarkPreDumpRounds1GiB1Pct(b *testing.B)  { benchPreDump(b, 1024, 1, 4) }
func BenchmarkPreDumpRounds1GiB10Pct(b *testing.B) { benchPreDump(b, 1024, 10, 4) }

// bareFreeze is the floor of a freeze: seize and interrupt every thread
// of pid, then detach them.
func bareFreeze(b *testing.B, pid int) time.Duration {
	best := time.Duration(1 << 62)
	for i := 0; i < 5; i++ {
		tr := ptrace.New()
		if _, err := tr.FreezeProcess(pid, 0); err != nil {
			tr.Close()
			b.Fatal(err)
		}
		t0 := time.Now()
		err := tr.ThawProcess(pid, false)
		d := time.Since(t0)
		tr.Close()
		if err != nil {
			b.Fatal(err)
		}
		best = min(best, d)
	}
	return best
}

func benchPreDump(b *testing.B, mib, pct, later int) {
	needRoot(b)
	base, err := os.MkdirTemp("/dev/shm", "godwit-predump-bench")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(base)
	pages := mib << 8
	rate := pages * pct / 100
	warmMemory(b, base, int64(mib)<<21)
	b.Logf("warmed %d MiB of fresh memory first (first touch costs ~12 µs a page on these VMs)", mib*2)
	w := startRewriter(b, pages, rate)
	// The frozen part of a first round is the tracking's set-up: measured
	// alone several times (one sample on these shared VMs can catch a
	// scheduling delay of 100 ms), each against a bare freeze.
	var setups, bare []time.Duration
	for i := 0; i < 7; i++ {
		bare = append(bare, bareFreeze(b, w.p.Pid))
		tk, err := openTracking(w.p.Pid, nil, true, time.Minute, logging.Default(), true)
		if err != nil {
			b.Fatal(err)
		}
		setups = append(setups, tk.frozen)
		tk.end()
		tk.close()
	}
	b.Logf("%d MiB: tracking set-up froze the target %v (median of %d; min %v, max %v); bare freeze+thaw %v: %.1fx",
		mib, testutil.Median(setups), len(setups), slices.Min(setups), slices.Max(setups), testutil.Median(bare),
		testutil.MedianRatio(setups, bare))
	b.ReportMetric(testutil.Median(setups).Seconds()*1e3, "setup-frozen-median-ms")
	b.ReportMetric(testutil.MedianRatio(setups, bare), "setup-frozen-x-floor")
	// godwit's own peak RSS through the rounds: this process runs them
	// (the workload is a child); clear_refs 5 resets VmHWM.
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		dir := func(i int) string { return filepath.Join(base, strconv.Itoa(it), fmt.Sprintf("pre%d", i)) }
		b.Cleanup(func() {
			for i := 1; i <= later+1; i++ {
				killHolder(b, dir(i))
			}
		})
		var frozen, floors []time.Duration
		var ratios []float64
		for i := 1; i <= later+1; i++ {
			prev := ""
			if i > 1 {
				prev = fmt.Sprintf("../pre%d", i-1)
				time.Sleep(time.Second)
			}
			fl := bareFreeze(b, w.p.Pid)
			t0 := time.Now()
			res := preDump(b, PreDumpOptions{Pid: w.p.Pid, ImagesDir: dir(i), PrevImagesDir: prev})
			d := time.Since(t0)
			frozen, floors = append(frozen, res.Frozen), append(floors, fl)
			copyFloor, how, err := testutil.DumpFloor(w.p.Pid, w.a, w.a+min(res.Mem.Written, w.n)*pageSize, nil, base)
			if err != nil {
				b.Fatal(err)
			}
			r := d.Seconds() / copyFloor.Seconds()
			ratios = append(ratios, r)
			b.Logf("%d MiB rewriting %d%%/s, round %d: frozen %v (bare freeze+thaw floor %v, %.2fx); %d pages written (%.1f MiB), %d left to the parent, in %v; floor (%s of as much) %v: %.2fx",
				mib, pct, i, res.Frozen, fl, res.Frozen.Seconds()/fl.Seconds(), res.Mem.Written, float64(res.Mem.Written)/256, res.Parent, d, how, copyFloor, r)
		}
		b.ReportMetric(frozen[0].Seconds()*1e3, "round1-frozen-ms")
		b.ReportMetric(frozen[0].Seconds()/floors[0].Seconds(), "round1-frozen-x-floor")
		var laterFrozen time.Duration
		for _, f := range frozen[1:] {
			laterFrozen = max(laterFrozen, f)
		}
		b.ReportMetric(laterFrozen.Seconds()*1e3, "later-rounds-max-frozen-ms")
		b.ReportMetric(ratios[len(ratios)-1], "last-round-x-copy-floor")
		hwm := vmHWM()
		b.Logf("%d MiB rewriting %d%%/s: godwit peak RSS through the rounds %d MiB (goal <= 100)", mib, pct, hwm>>20)
		b.ReportMetric(float64(hwm>>20), "peak-RSS-MiB")
	}
}
