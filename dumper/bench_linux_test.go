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
// measure in the same run the floor: process_vm_readv of the same memory
// in 1 MiB chunks written to a file beside the images.
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

// floor reads the private dirty memory of pid with process_vm_readv in
// 1 MiB chunks and writes it to path.
func floor(b *testing.B, pid int, path string) (time.Duration, int64) {
	maps, err := procfs.ReadMaps(pid)
	if err != nil {
		b.Fatal(err)
	}
	// The workload's memory: its largest private writable anonymous mapping.
	var big procfs.Mapping
	for _, m := range maps {
		if m.IsAnon() && m.Write && !m.Shared && m.Size() > big.Size() {
			big = m
		}
	}
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer os.Remove(path)
	defer f.Close()
	buf := make([]byte, 1<<20)
	t0 := time.Now()
	var total int64
	for a := big.Start; a < big.End; a += uint64(len(buf)) {
		n := min(uint64(len(buf)), big.End-a)
		local := []unix.Iovec{{Base: &buf[0]}}
		local[0].SetLen(int(n))
		if _, err := unix.ProcessVMReadv(pid, local, []unix.RemoteIovec{{Base: uintptr(a), Len: int(n)}}, 0); err != nil {
			b.Fatal(err)
		}
		if _, err := f.Write(buf[:n]); err != nil {
			b.Fatal(err)
		}
		total += int64(n)
	}
	return time.Since(t0), total
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
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		fl, n := floor(b, p.Pid, filepath.Join(base, "floor.bin"))
		b.Logf("floor: process_vm_readv 1 MiB chunks + write of %d MiB: %v (%.2f GB/s)", n>>20, fl, float64(n)/fl.Seconds()/1e9)
		methods := []string{"vmsplice", "readv"}
		if o := os.Getenv("DUMPER_BENCH_ORDER"); o != "" {
			methods = strings.Split(o, ",")
		}
		// Rounds alternate the methods: on these shared VMs the order
		// alone moves a run by 20%; the best of each is reported.
		best := map[string]benchChildResult{}
		for round := 0; round < benchRounds; round++ {
			for _, method := range methods {
				r := dumpChild(b, p.Pid, filepath.Join(base, method), method)
				b.Logf("round %d dump (%s): %v for %d MiB written, peak RSS %.1f MiB, %.2fx the floor (frozen %v: pages out of the target %v, into the file %v; in injection sessions %v, %.2f%% of the dump)",
					round, method, r.Wall, r.Written>>8, float64(r.HWM)/(1<<20), r.Wall.Seconds()/fl.Seconds(), r.Frozen, r.Dump, r.Write, r.Inject, 100*r.Inject.Seconds()/r.Wall.Seconds())
				if o, ok := best[method]; !ok || r.Wall < o.Wall {
					best[method] = r
				}
			}
		}
		for _, method := range methods {
			r := best[method]
			b.Logf("best dump (%s): %v, %.2fx the floor %v, peak RSS %.1f MiB", method, r.Wall, r.Wall.Seconds()/fl.Seconds(), fl, float64(r.HWM)/(1<<20))
			b.ReportMetric(r.Wall.Seconds(), method+"-s")
			b.ReportMetric(r.Wall.Seconds()/fl.Seconds(), method+"-x-floor")
			b.ReportMetric(float64(r.HWM)/(1<<20), method+"-RSS-MiB")
			b.ReportMetric(100*r.Inject.Seconds()/r.Wall.Seconds(), method+"-%-injecting")
		}
		b.ReportMetric(fl.Seconds(), "floor-s")
	}
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
