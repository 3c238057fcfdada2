package restorer

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"godwit/dumper"
	"godwit/internal/ptrace"
	"godwit/internal/testutil"
)

// BenchmarkTree dumps and restores fan-out trees (a root and N-1 sleeping
// children) of 10, 100 and 1000 tasks, and reports per-task medians of
// each, with the restore's phases, next to floors measured in the same
// run: the time the workload itself took to fork as many tasks of its
// size, and a ptrace seize+interrupt+detach of every task of the tree.
// Each iteration dumps the tree (which kills it), waits until every PID
// is free (untimed: init reaps the orphans), and restores it. With a CRIU
// binary ($GODWIT_CRIU, else criu in $PATH) the same sizes are dumped and
// restored by CRIU too (criu dump / criu restore -d, each a command run:
// its exec is in its figure), on a fresh tree of the workload.
func BenchmarkTree(b *testing.B) {
	needRoot(b)
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("tasks=%d", n), func(b *testing.B) { benchTree(b, n) })
	}
}

func benchTree(b *testing.B, n int) {
	// Images on tmpfs: the figure is godwit's, not the disk's (an
	// ext4 image file costs ~0.1-1 ms to create on these VMs).
	dir := benchDir(b)
	log := filepath.Join(dir, "log")
	w := startWorkload(b, log, "ready ", testutil.FanoutBin(b), strconv.Itoa(n), log)
	forkFloor := readyFloor(b, log, n)
	pid := w.Pid
	attachFloor := attachDetach(b, treePids(b, pid))
	var dumps, restores, create, layout, fill, final, resume, freezing, dumpInj []time.Duration
	var dumpCalls, restoreCalls, dumpStops, restoreStops int
	var phaseStops [3]int
	var byNr, dumpByNr map[uintptr]int
	var dumpSessions int
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
		dumpByNr, dumpSessions = res.InjectedByNr, res.InjectionSessions
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
		phaseStops[0] = r.InjectionStops()
		step(&fill, func() error { return r.fillAll(b.Context()) })
		phaseStops[1] = r.InjectionStops()
		step(&final, r.Finalize)
		restoreCalls = r.InjectedCalls() / n
		restoreStops = r.InjectionStops() / n
		phaseStops[2] = r.InjectionStops()
		_, _, byNr = r.injectionStats()
		step(&resume, r.Resume)
		restores = append(restores, time.Since(t0)/time.Duration(n))
	}
	b.StopTimer()
	// The last restored tree: the root killed by Abort, the children by
	// the group kill, every PID waited for (the CRIU runs reuse them).
	pids := treePids(b, pid)
	r.Abort()
	r = nil
	syscall.Kill(-pid, syscall.SIGKILL)
	for _, p := range pids {
		waitGone(b, p)
	}
	med := testutil.Median
	b.ReportMetric(float64(med(dumps).Microseconds()), "dump-µs/task")
	b.ReportMetric(float64(med(restores).Microseconds()), "restore-µs/task")
	b.Logf("%d tasks, per task: dump %v (freeze %v, injection sessions %v, %d injected calls, %d ptrace stops), restore %v = layout %v (of it making the tasks %v) + fill %v + finalize %v + resume %v, %d injected calls, %d ptrace stops",
		n, med(dumps), med(freezing), med(dumpInj), dumpCalls, dumpStops, med(restores), med(layout), med(create), med(fill), med(final), med(resume), restoreCalls, restoreStops)
	b.Logf("%d tasks, dump injection sessions per task %.1f; injected calls per task by syscall: %s",
		n, float64(dumpSessions)/float64(n), perTask(dumpByNr, n))
	b.Logf("%d tasks, restore stops per task: layout %.1f, fill %.1f, finalize %.1f; injected calls per task by syscall: %s",
		n, float64(phaseStops[0])/float64(n), float64(phaseStops[1]-phaseStops[0])/float64(n), float64(phaseStops[2]-phaseStops[1])/float64(n), perTask(byNr, n))
	b.Logf("%d tasks, floors per task: fork %v, ptrace seize+interrupt+detach %v; dump %.0fx the attach floor, restore %.0fx the fork floor",
		n, forkFloor, attachFloor, float64(med(dumps))/float64(attachFloor), float64(med(restores))/float64(forkFloor))
	criuDump, criuRestore, err := criuTree(b, dir, n)
	switch {
	case err != nil:
		b.Fatalf("criu: %v", err)
	case criuDump == nil:
		b.Logf("%d tasks: no CRIU binary ($GODWIT_CRIU or criu in $PATH): no CRIU column", n)
	default:
		b.ReportMetric(float64(med(criuDump).Microseconds()), "criu-dump-µs/task")
		b.ReportMetric(float64(med(criuRestore).Microseconds()), "criu-restore-µs/task")
		b.Logf("%d tasks, per task: CRIU dump %v, restore %v; godwit/CRIU: dump %.2fx, restore %.2fx",
			n, med(criuDump), med(criuRestore), float64(med(dumps))/float64(med(criuDump)), float64(med(restores))/float64(med(criuRestore)))
	}
}

// perTask formats injected-call counts by syscall number, per task.
func perTask(byNr map[uintptr]int, n int) string {
	nrs := make([]uintptr, 0, len(byNr))
	for nr := range byNr {
		nrs = append(nrs, nr)
	}
	slices.Sort(nrs)
	var parts []string
	for _, nr := range nrs {
		parts = append(parts, fmt.Sprintf("%d:%.1f", nr, float64(byNr[nr])/float64(n)))
	}
	return strings.Join(parts, " ")
}

// readyFloor reads the fan-out workload's fork time from its log, per task.
func readyFloor(b *testing.B, log string, n int) time.Duration {
	line, err := os.ReadFile(log)
	if err != nil {
		b.Fatal(err)
	}
	ns, err := strconv.ParseInt(strings.TrimSpace(strings.TrimPrefix(string(line), "ready ")), 10, 64)
	if err != nil {
		b.Fatalf("fanout log %q: %v", line, err)
	}
	return time.Duration(ns) / time.Duration(n)
}

// treePids is pid and its children (a fan-out tree has no grandchildren).
func treePids(b *testing.B, pid int) []int {
	out := []int{pid}
	c, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, f := range strings.Fields(string(c)) {
		p, _ := strconv.Atoi(f)
		out = append(out, p)
	}
	return out
}

// attachDetach is the physical floor of a dump's freeze: a ptrace seize,
// interrupt (waited for) and detach of every task, per task.
func attachDetach(b *testing.B, pids []int) time.Duration {
	tr := ptrace.New()
	defer tr.Close()
	var took time.Duration
	err := tr.Do(func() error {
		t0 := time.Now()
		for _, p := range pids {
			if _, err := tr.Attach(p, 0); err != nil {
				return fmt.Errorf("attach %d: %w", p, err)
			}
			if err := tr.Detach(p, 0); err != nil {
				return fmt.Errorf("detach %d: %w", p, err)
			}
		}
		took = time.Since(t0)
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return took / time.Duration(len(pids))
}

// criuBin is the CRIU binary to compare with, or "".
func criuBin() string {
	if p := os.Getenv("GODWIT_CRIU"); p != "" {
		return p
	}
	p, _ := exec.LookPath("criu")
	return p
}

// criuIters is how many dump+restore rounds CRIU gets per size.
const criuIters = 3

// criuTree dumps and restores a fresh fan-out tree of n tasks with CRIU,
// criuIters times, and returns the per-task durations (nil, nil without
// a CRIU binary). The last restored tree is killed and waited for.
func criuTree(b *testing.B, dir string, n int) (dumps, restores []time.Duration, err error) {
	bin := criuBin()
	if bin == "" {
		return nil, nil, nil
	}
	log := filepath.Join(dir, "criu-log")
	w := startWorkload(b, log, "ready ", testutil.FanoutBin(b), strconv.Itoa(n), log)
	pid := w.Pid
	pids := treePids(b, pid)
	defer func() {
		syscall.Kill(-pid, syscall.SIGKILL)
		for _, p := range pids {
			waitGone(b, p)
		}
	}()
	run := func(args ...string) (time.Duration, error) {
		t0 := time.Now()
		out, err := exec.Command(bin, args...).CombinedOutput()
		d := time.Since(t0)
		if err != nil {
			return 0, fmt.Errorf("criu %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return d / time.Duration(n), nil
	}
	for i := 0; i < criuIters; i++ {
		imgs := filepath.Join(dir, fmt.Sprintf("criu%d", i))
		if err := os.Mkdir(imgs, 0o700); err != nil {
			return nil, nil, err
		}
		d, err := run("dump", "-t", strconv.Itoa(pid), "-D", imgs, "-o", "dump.log")
		if err != nil {
			if lb, rerr := os.ReadFile(filepath.Join(imgs, "dump.log")); rerr == nil {
				err = fmt.Errorf("%w\n%s", err, testutil.Tail(string(lb)))
			}
			return nil, nil, err
		}
		dumps = append(dumps, d)
		if i == 0 {
			w.Reaped(b)
		}
		for _, p := range pids {
			waitGone(b, p)
		}
		d, err = run("restore", "-D", imgs, "-d", "-o", "restore.log")
		if err != nil {
			if lb, rerr := os.ReadFile(filepath.Join(imgs, "restore.log")); rerr == nil {
				err = fmt.Errorf("%w\n%s", err, testutil.Tail(string(lb)))
			}
			return nil, nil, err
		}
		restores = append(restores, d)
	}
	return dumps, restores, nil
}

// waitGone waits until /proc/PID is gone (a reaped task): init reaps
// orphans late on a loaded host, so up to a minute.
func waitGone(t testing.TB, pid int) {
	t.Helper()
	for i := 0; i < 12000; i++ {
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err != nil {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	t.Fatalf("pid %d not gone: %s", pid, st)
}
