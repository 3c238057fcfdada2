package dumper

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
	"godwit/internal/testutil"
)

// The benchmarks dump a counter workload with N MiB of dirty anonymous
// memory to images on tmpfs (/dev/shm), in a child process (a re-exec of
// the test binary) so that its peak RSS (VmHWM) is godwit's alone, and
// measure in the same run, before each dump, the floor: the cheapest copy
// the kernel allows of as much memory into a file beside the images
// (testutil.DumpFloor).
//
//	go test ./dumper -run XXX -bench Dump1GiB -benchtime 1x
//	DUMPER_BENCH_4G=1 go test ./dumper -run XXX -bench Dump4GiB -benchtime 1x

const benchChildEnv = "DUMPER_BENCH_CHILD" // "pid dir method"

type benchChildResult struct {
	Wall    time.Duration
	HWM     uint64 // bytes
	Written uint64 // pages
	Dump    time.Duration
	Write   time.Duration
	Frozen  time.Duration
	Inject  time.Duration // inside injection sessions
	Err     string
}

// benchChild runs one dump in the re-executed test binary.
func benchChild(arg string) {
	var pid int
	var dir, method string
	fmt.Sscan(arg, &pid, &dir, &method)
	os.Setenv(MethodEnv, method)
	o := dumpOpts(pid, dir)
	o.LeaveRunning = true
	t0 := time.Now()
	res, err := Dump(o, nil)
	r := benchChildResult{Wall: time.Since(t0), HWM: vmHWM()}
	if err != nil {
		r.Err = err.Error()
	} else {
		r.Written = res.Mem.Written
		r.Dump, r.Write = res.Mem.DumpTime, res.Mem.WriteTime
		r.Frozen = time.Duration(res.Stats.GetFrozenTime()) * time.Microsecond
		r.Inject = res.Injecting
	}
	json.NewEncoder(os.Stdout).Encode(r)
}

func vmHWM() uint64 {
	st, err := procfs.ReadStatus(os.Getpid())
	if err != nil {
		return 0
	}
	f := strings.Fields(st.Raw["VmHWM"])
	if len(f) == 0 {
		return 0
	}
	kb, _ := strconv.ParseUint(f[0], 10, 64)
	return kb << 10
}

// warmMemory touches size bytes of fresh tmpfs pages and frees them: the
// first touch of guest memory on these VMs costs ~12 µs a page, which
// would otherwise be charged to whichever run comes first.
func warmMemory(b *testing.B, dir string, size int64) {
	f, err := os.Create(filepath.Join(dir, "warm"))
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	for n := int64(0); n < size; n += int64(len(buf)) {
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	f.Close()
	os.Remove(f.Name())
}

// workloadRange is the workload's memory: its largest private writable
// anonymous mapping.
func workloadRange(b *testing.B, pid int) (uint64, uint64) {
	maps, err := procfs.ReadMaps(pid)
	if err != nil {
		b.Fatal(err)
	}
	var big procfs.Mapping
	for _, m := range maps {
		if m.IsAnon() && m.Write && !m.Shared && m.Size() > big.Size() {
			big = m
		}
	}
	return big.Start, big.End
}

func benchDump(b *testing.B, mib int) {
	needRoot(b)
	base, err := os.MkdirTemp("/dev/shm", "godwit-bench")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(base)
	log := filepath.Join(b.TempDir(), "counter.Log")
	p := start(b, log, "ready pid=", testutil.CounterBin(b, false), "-m", strconv.Itoa(mib), log)
	warmMemory(b, base, int64(mib)<<21) // twice the workload: images + floor file
	lo, hi := workloadRange(b, p.Pid)
	vs := testutil.StartVmsplicer(b, hi-lo)
	methods := []string{"vmsplice", "readv"}
	if o := os.Getenv("DUMPER_BENCH_ORDER"); o != "" {
		methods = strings.Split(o, ",")
	}
	type runs struct{ wall, floor, frozen, inject []time.Duration }
	all := map[string]*runs{}
	var hwm uint64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Every dump is paired with a floor measured just before it, and
		// the methods rotate: on these shared VMs the order alone moves a
		// run by 20%. Medians of the pairs are reported.
		for round := 0; round < benchRounds; round++ {
			for range methods[:round%len(methods)] {
				methods = append(methods[1:], methods[0])
			}
			for _, method := range methods {
				fl, how, err := testutil.DumpFloor(p.Pid, lo, hi, vs, base)
				if err != nil {
					b.Fatal(err)
				}
				r := dumpChild(b, p.Pid, filepath.Join(base, method), method)
				b.Logf("round %d dump (%s): %v for %d MiB written, peak RSS %.1f MiB; floor (%s) %v: %.2fx (frozen %v: pages out of the target %v, into the file %v; in injection sessions %v, %.2f%% of the dump)",
					round, method, r.Wall, r.Written>>8, float64(r.HWM)/(1<<20), how, fl, r.Wall.Seconds()/fl.Seconds(), r.Frozen, r.Dump, r.Write, r.Inject, 100*r.Inject.Seconds()/r.Wall.Seconds())
				m := all[method]
				if m == nil {
					m = &runs{}
					all[method] = m
				}
				m.wall, m.floor, m.frozen = append(m.wall, r.Wall), append(m.floor, fl), append(m.frozen, r.Frozen)
				m.inject = append(m.inject, r.Inject)
				hwm = max(hwm, r.HWM)
			}
		}
	}
	b.StopTimer()
	for method, m := range all {
		ratio := testutil.MedianRatio(m.wall, m.floor)
		injecting := 100 * testutil.MedianRatio(m.inject, m.wall)
		b.Logf("median of %d dumps (%s): %v, floor %v, ratio %.2f, frozen %v, in injection sessions %.2f%% of the dump; godwit peak RSS %.1f MiB",
			len(m.wall), method, testutil.Median(m.wall), testutil.Median(m.floor), ratio, testutil.Median(m.frozen), injecting, float64(hwm)/(1<<20))
		b.ReportMetric(injecting, method+"-%-injecting")
		b.ReportMetric(testutil.Median(m.wall).Seconds(), method+"-s")
		b.ReportMetric(ratio, method+"-x-floor")
		b.ReportMetric(testutil.Median(m.frozen).Seconds(), method+"-frozen-s")
		b.ReportMetric(testutil.Median(m.floor).Seconds(), method+"-floor-s")
	}
	b.ReportMetric(float64(hwm)/(1<<20), "peak-RSS-MiB")
	b.StopTimer()
	if err := unix.Kill(p.Pid, unix.SIGUSR1); err == nil {
		if st := p.Wait(b); st != 0 {
			b.Errorf("workload failed its checks after the dumps: exit %d", st)
		}
	}
}

// benchRounds is how many times each method runs.
const benchRounds = 3

// dumpChild dumps pid into dir (created, removed afterwards) in a child.
func dumpChild(b *testing.B, pid int, dir, method string) benchChildResult {
	os.RemoveAll(dir)
	defer os.RemoveAll(dir)
	if err := os.Mkdir(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d %s %s", benchChildEnv, pid, dir, method))
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("dump child: %v", err)
	}
	var r benchChildResult
	if err := json.Unmarshal(out, &r); err != nil {
		b.Fatalf("dump child output %q: %v", out, err)
	}
	if r.Err != "" {
		b.Fatal(r.Err)
	}
	return r
}

func BenchmarkDump1GiB(b *testing.B) { benchDump(b, 1024) }

func BenchmarkDump4GiB(b *testing.B) {
	if os.Getenv("DUMPER_BENCH_4G") == "" {
		b.Skip("set DUMPER_BENCH_4G=1 (needs ~12 GiB free RAM)")
	}
	benchDump(b, 4096)
}
