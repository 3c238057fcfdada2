package dumper

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestDumpTreeParallelExact dumps one sleeping tree (fds inherited by
// fork, files each child opened, shared anonymous memory of the whole
// tree and of each child) on one tracer thread and on several, leaving
// it running: the images are the same byte for byte (file ids, fd
// tables, kernel object ids and pages ids all given out in tree order),
// and every task runs on untraced. The tree runs on one CPU: the kernel
// rewrites a thread's rseq cpu_id_start/cpu_id when it returns to user
// space on another CPU than before, as an injected thread may.
func TestDumpTreeParallelExact(t *testing.T) {
	needRoot(t)
	log := filepath.Join(t.TempDir(), "log")
	prog := `import os, mmap, sys, time
os.sched_setaffinity(0, {int(sys.argv[2])})
m = mmap.mmap(-1, 1 << 16)
m[:5] = b"hello"
f = open("/etc/hostname")
r, w = os.pipe()
for i in range(6):
    if os.fork() == 0:
        own = mmap.mmap(-1, 8192)
        own[:1] = b"x"
        m[4096 * (i + 1)] = 1
        g = open("/etc/passwd")
        time.sleep(60)
        os._exit(0)
time.sleep(0.3)
open(sys.argv[1], "w").write("ready")
time.sleep(60)
`
	p := start(t, "", "", "/usr/bin/python3", "-c", prog, log, strconv.Itoa(firstCPU(t)))
	waitFile(t, log, "ready")
	kids, err := Children(p.Pid)
	if err != nil || len(kids) != 6 {
		t.Fatalf("children: %v %v", kids, err)
	}
	for _, k := range kids {
		t.Cleanup(func() { _ = syscall.Kill(k, syscall.SIGKILL) })
	}
	// Each dump must find the same memory: every task asleep in
	// clock_nanosleep (time.sleep) first.
	for _, pid := range append([]int{p.Pid}, kids...) {
		waitSyscall(t, pid, "230 ")
	}
	dump := func(tracers int) string {
		defer func(n int) { dumpTracers = n }(dumpTracers)
		dumpTracers = tracers
		dir := t.TempDir()
		if k := os.Getenv("DUMPER_KEEP"); k != "" {
			dir = filepath.Join(k, strconv.Itoa(tracers))
		}
		o := dumpOpts(p.Pid, dir)
		o.LeaveRunning = true
		res, err := Dump(o, nil)
		if err != nil {
			t.Fatalf("%d tracers: %v", tracers, err)
		}
		if len(res.Pids) != 7 {
			t.Fatalf("%d tracers: dumped %v", tracers, res.Pids)
		}
		return dir
	}
	one := dump(1)
	// Resumed, each task re-enters its sleep (the kernel restarts it
	// through user space): the second dump must find it inside again,
	// not at the syscall instruction, where it has no restart entry.
	for _, pid := range append([]int{p.Pid}, kids...) {
		waitSyscall(t, pid, "230 ")
	}
	four := dump(4)
	t.Logf("%d images compared", compareImages(t, one, four))
	es, err := filepath.Glob(filepath.Join(one, "pagemap-shmem-*"))
	if err != nil {
		t.Fatal(err)
	}
	shm := len(es)
	if shm != 7 {
		t.Errorf("%d shared memory objects dumped, want 7 (the tree's and each child's)", shm)
	}
	for _, pid := range append([]int{p.Pid}, kids...) {
		assertRunningUntraced(t, pid)
	}
}

// waitSyscall waits until /proc/PID/syscall starts with prefix (a task
// blocked in that system call).
func waitSyscall(t *testing.T, pid int, prefix string) {
	for i := 0; i < 2000; i++ {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/syscall")
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(string(b), prefix) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("task %d never blocked in syscall %q", pid, prefix)
}

// TestDumpTreeParallelSharedFDTable dumps a tree whose tasks share one
// fd table (CLONE_FILES) with vmsplice, on one tracer and then five times
// on four: a task's injected fds (the vmsplice pipes, kept for its whole
// memory dump) are in the table the next task's fds are read from, so
// the sharers must be dumped one after another. Every dump succeeds and
// its images equal the one tracer's byte for byte (the tree is pinned to
// one CPU: see sharedfiles.c).
func TestDumpTreeParallelSharedFDTable(t *testing.T) {
	needRoot(t)
	bin := filepath.Join(t.TempDir(), "sharedfiles")
	if out, err := exec.Command("gcc", "-O1", "-o", bin, "testdata/sharedfiles.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	cpu := firstCPU(t)
	log := filepath.Join(t.TempDir(), "log")
	const kids = 5
	p := start(t, log, "ready", bin, strconv.Itoa(kids), "100", log, strconv.Itoa(cpu))
	ks, err := Children(p.Pid)
	if err != nil || len(ks) != kids {
		t.Fatalf("children: %v %v", ks, err)
	}
	for _, k := range ks {
		t.Cleanup(func() { _ = syscall.Kill(k, syscall.SIGKILL) })
	}
	for _, pid := range append([]int{p.Pid}, ks...) {
		waitSyscall(t, pid, "34 ") // pause
	}
	dump := func(tracers int) string {
		defer func(n int) { dumpTracers = n }(dumpTracers)
		dumpTracers = tracers
		dir, err := os.MkdirTemp(t.TempDir(), "")
		if err != nil {
			t.Fatal(err)
		}
		o := dumpOpts(p.Pid, dir)
		o.LeaveRunning = true
		o.Method = MethodVmsplice
		res, err := Dump(o, nil)
		if err != nil {
			t.Fatalf("%d tracers: %v", tracers, err)
		}
		if len(res.Pids) != kids+1 || res.Method != MethodVmsplice {
			t.Fatalf("%d tracers: dumped %v by %v", tracers, res.Pids, res.Method)
		}
		return dir
	}
	one := dump(1)
	for range 5 {
		four := dump(4)
		n := compareImages(t, one, four)
		if err := os.RemoveAll(four); err != nil {
			t.Fatal(err)
		}
		if t.Failed() {
			t.FailNow()
		}
		t.Logf("%d images compared", n)
	}
	for _, pid := range append([]int{p.Pid}, ks...) {
		assertRunningUntraced(t, pid)
	}
}

// firstCPU is the first CPU the test may run on.
func firstCPU(t *testing.T) int {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	for c := range 1024 {
		if set.IsSet(c) {
			return c
		}
	}
	t.Fatal("no CPU in the affinity mask")
	return 0
}

// compareImages reports every image of dir one (but the stats, which hold
// times) that is missing from dir four or differs from it byte for byte,
// and returns how many it compared.
func compareImages(t *testing.T, one, four string) int {
	t.Helper()
	names := func(dir string) []string {
		es, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range es {
			if n := e.Name(); strings.HasSuffix(n, ".img") && !strings.HasPrefix(n, "stats-") {
				out = append(out, n)
			}
		}
		return out
	}
	n1, n4 := names(one), names(four)
	if !slices.Equal(n1, n4) {
		t.Fatalf("images differ:\none tracer: %v\nfour: %v", n1, n4)
	}
	for _, n := range n1 {
		a, err := os.ReadFile(filepath.Join(one, n))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(four, n))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs between one tracer and four", n)
		}
	}
	return len(n1)
}
