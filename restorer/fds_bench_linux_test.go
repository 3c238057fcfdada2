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

// The fd benchmarks dump and restore one process holding 10,000 fds
// (regular files, pipe ends, eventfds; some seeked, some close-on-exec),
// images on tmpfs, and report µs per fd next to a floor measured in the
// same run: the program's own cost of making its fds and dup3-ing each
// once (manyfds.c).
//
//	go test ./restorer -run XXX -bench 'Fds' -benchtime 3x

const benchFDs = 10000

// startManyFDs starts the workload and returns it with the floor per fd.
func startManyFDs(b *testing.B, dir string) (*testutil.Proc, time.Duration) {
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, make([]byte, 64<<10), 0o644); err != nil {
		b.Fatal(err)
	}
	log := filepath.Join(dir, "log")
	w := startWorkload(b, log, "ready ", testutil.ManyFDsBin(b), strconv.Itoa(benchFDs), file, log)
	line, _ := os.ReadFile(log)
	ns, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimPrefix(string(line), "ready ")), 10, 64)
	return w, time.Duration(ns) / benchFDs
}

// fdKinds sums what /proc shows of pid's fds: a count of each link
// target, pipes and files by kind (inode numbers differ after restore).
func fdKinds(b *testing.B, pid int) map[string]int {
	d := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, err := os.ReadDir(d)
	if err != nil {
		b.Fatal(err)
	}
	out := map[string]int{}
	for _, e := range ents {
		l, err := os.Readlink(filepath.Join(d, e.Name()))
		if err != nil {
			b.Fatal(err)
		}
		if strings.HasPrefix(l, "pipe:") {
			l = "pipe"
		}
		out[l]++
	}
	return out
}

func sameKinds(b *testing.B, want, got map[string]int) {
	b.Helper()
	if len(want) != len(got) {
		b.Fatalf("fds after restore %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			b.Fatalf("%d fds on %s after restore, want %d", got[k], k, v)
		}
	}
}

func BenchmarkDumpFds(b *testing.B) {
	needRoot(b)
	dir := benchDir(b)
	w, floor := startManyFDs(b, dir)
	var per, cpu []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		imgs := filepath.Join(dir, fmt.Sprintf("img%d", i))
		t0, c0 := time.Now(), cpuTime(b)
		if _, err := dumper.Dump(dumper.Options{Pid: w.Pid, ImagesDir: imgs, LeaveRunning: true}, nil); err != nil {
			b.Fatal(err)
		}
		per = append(per, time.Since(t0)/benchFDs)
		cpu = append(cpu, (cpuTime(b)-c0)/benchFDs)
		os.RemoveAll(imgs)
	}
	b.StopTimer()
	med := testutil.Median(per)
	b.ReportMetric(float64(med.Nanoseconds())/1e3, "µs/fd")
	b.ReportMetric(float64(testutil.Median(cpu).Nanoseconds())/1e3, "cpu-µs/fd")
	// The CPU time (user and system, every thread of godwit) says what
	// the dump costs where the machine's cores are shared and wall time
	// is not its own.
	b.Logf("dump of %d fds: %v per fd (CPU %v); floor (open+dup3 in the program) %v: %.0fx",
		benchFDs, med, testutil.Median(cpu), floor, float64(med)/float64(floor))
}

// cpuTime is the user and system time this process has used.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func BenchmarkRestoreFds(b *testing.B) {
	needRoot(b)
	dir := benchDir(b)
	w, floor := startManyFDs(b, dir)
	want := fdKinds(b, w.Pid)
	imgs := filepath.Join(dir, "img")
	res, err := dumper.Dump(dumper.Options{Pid: w.Pid, ImagesDir: imgs}, nil)
	if err != nil {
		b.Fatal(err)
	}
	w.Reaped(b)
	var per, cpu []time.Duration
	var calls, stops int
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, p := range res.Pids {
			waitGone(b, p)
		}
		t0, c0 := time.Now(), cpuTime(b)
		r, err := New(Options{ImagesDir: imgs}, nil)
		if err == nil {
			err = r.Layout()
		}
		if err == nil {
			err = r.fillAll(b.Context())
		}
		if err == nil {
			err = r.Finalize()
		}
		if err == nil {
			calls, stops = r.InjectedCalls(), r.InjectionStops()
			err = r.Resume()
		}
		if err != nil {
			if r != nil {
				r.Abort()
			}
			b.Fatal(err)
		}
		per = append(per, time.Since(t0)/benchFDs)
		cpu = append(cpu, (cpuTime(b)-c0)/benchFDs)
		b.StopTimer()
		sameKinds(b, want, fdKinds(b, r.PID()))
		syscall.Kill(r.PID(), syscall.SIGKILL)
		r.Wait()
		b.StartTimer()
	}
	b.StopTimer()
	med := testutil.Median(per)
	b.ReportMetric(float64(med.Nanoseconds())/1e3, "µs/fd")
	b.ReportMetric(float64(testutil.Median(cpu).Nanoseconds())/1e3, "cpu-µs/fd")
	// godwit's CPU time (the task's own syscalls are the task's).
	b.Logf("restore of %d fds: %v per fd (godwit's CPU %v; %d injected calls, %d ptrace stops); floor (open+dup3 in the program) %v: %.0fx",
		benchFDs, med, testutil.Median(cpu), calls, stops, floor, float64(med)/float64(floor))
}

// benchDir is a directory on tmpfs, removed at the end.
func benchDir(b *testing.B) string {
	dir, err := os.MkdirTemp("/dev/shm", "godwit-bench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
