package restorer

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"godwit/dumper"
	"godwit/internal/testutil"
)

// BenchmarkTree dumps and restores fan-out trees (a root and N-1 sleeping
// children) of 1, 10, 100 and 1000 tasks, and reports per-task medians of
// each, with the restore's phases, next to a floor measured in the same
// run: the time the workload itself took to fork as many tasks of its
// size. Each iteration dumps the tree (which kills it), waits until every
// PID is free (untimed: init reaps the orphans), and restores it.
func BenchmarkTree(b *testing.B) {
	needRoot(b)
	for _, n := range []int{1, 10, 100, 1000} {
		b.Run(fmt.Sprintf("tasks=%d", n), func(b *testing.B) { benchTree(b, n) })
	}
}

func benchTree(b *testing.B, n int) {
	// Images on tmpfs: the figure is godwit's, not the disk's (an
	// ext4 image file costs ~0.1-1 ms to create on these VMs).
	dir := benchDir(b)
	log := filepath.Join(dir, "log")
	w := startWorkload(b, log, "ready ", testutil.FanoutBin(b), strconv.Itoa(n), log)
	line, _ := os.ReadFile(log)
	forkNs, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimPrefix(string(line), "ready ")), 10, 64)
	floor := time.Duration(forkNs) / time.Duration(n)
	pid := w.Pid
	var dumps, restores, create, layout, fill, final, resume, freezing, dumpInj []time.Duration
	var dumpCalls, restoreCalls, dumpStops, restoreStops int
	var r *Restorer
	defer func() {
		if r != nil {
			r.Abort()
		}
	}()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		imgs := filepath.Join(dir, fmt.Sprintf("img%d", i))
		t0 := time.Now()
		res, err := dumper.Dump(dumper.Options{Pid: pid, ImagesDir: imgs}, nil)
		if err != nil {
			b.Fatal(err)
		}
		dumps = append(dumps, time.Since(t0)/time.Duration(n))
		dumpCalls, dumpStops = res.InjectedCalls/n, res.InjectionStops/n
		dumpInj = append(dumpInj, res.Injecting/time.Duration(n))
		freezing = append(freezing, time.Duration(res.Stats.GetFreezingTime())*time.Microsecond/time.Duration(n))
		if len(res.Pids) != n {
			b.Fatalf("dumped %d tasks, want %d", len(res.Pids), n)
		}
		if r == nil {
			w.Reaped(b)
		} else {
			r.Wait()
		}
		for _, p := range res.Pids {
			waitGone(b, p)
		}
		t0 = time.Now()
		r, err = New(Options{ImagesDir: imgs}, nil)
		if err != nil {
			b.Fatal(err)
		}
		step := func(d *[]time.Duration, f func() error) {
			s := time.Now()
			if err := f(); err != nil {
				b.Fatal(err)
			}
			*d = append(*d, time.Since(s)/time.Duration(n))
		}
		step(&layout, r.Layout)
		create = append(create, r.forkTime/time.Duration(n))
		step(&fill, func() error { return r.fillAll(b.Context()) })
		step(&final, r.Finalize)
		restoreCalls = r.InjectedCalls() / n
		restoreStops = r.InjectionStops() / n
		step(&resume, r.Resume)
		restores = append(restores, time.Since(t0)/time.Duration(n))
	}
	b.StopTimer()
	med := testutil.Median
	b.ReportMetric(float64(med(dumps).Microseconds()), "dump-µs/task")
	b.ReportMetric(float64(med(restores).Microseconds()), "restore-µs/task")
	b.Logf("%d tasks, per task: dump %v (freeze %v, injection sessions %v, %d injected calls, %d ptrace stops), restore %v = layout %v (of it making the tasks %v) + fill %v + finalize %v + resume %v, %d injected calls, %d ptrace stops; floor (fork) %v: dump %.0fx, restore %.0fx",
		n, med(dumps), med(freezing), med(dumpInj), dumpCalls, dumpStops, med(restores), med(layout), med(create), med(fill), med(final), med(resume), restoreCalls, restoreStops, floor,
		float64(med(dumps))/float64(floor), float64(med(restores))/float64(floor))
	// The last restored tree: killed by Abort (deferred), its children
	// by the group kill below.
	syscall.Kill(-pid, syscall.SIGKILL)
}

// waitGone waits until /proc/PID is gone (a reaped task).
func waitGone(t testing.TB, pid int) {
	for i := 0; i < 3000; i++ {
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err != nil {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("pid %d not gone", pid)
}
