package dumper

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDumpTreeParallelExact dumps one sleeping tree (fds inherited by
// fork, files each child opened, shared anonymous memory of the whole
// tree and of each child) on one tracer thread and on several, leaving
// it running: the images are the same byte for byte (file ids, fd
// tables, kernel object ids and pages ids all given out in tree order;
// of the pages files only the sizes: a sleeping Python's heap changes),
// and every task runs on untraced.
func TestDumpTreeParallelExact(t *testing.T) {
	needRoot(t)
	log := filepath.Join(t.TempDir(), "log")
	prog := `import os, mmap, sys, time
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
	p := start(t, "", "", "/usr/bin/python3", "-c", prog, log)
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
	one, four := dump(1), dump(4)
	names := func(dir string) []string {
		es, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range es {
			// The stats hold times.
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
	shm := 0
	for _, n := range n1 {
		if strings.HasPrefix(n, "pagemap-shmem-") {
			shm++
		}
		a, err := os.ReadFile(filepath.Join(one, n))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(four, n))
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(n, "pages-") {
			// The data of the pages: a sleeping Python still
			// changes a byte or two of its heap between two dumps
			// (dumps on one tracer differ alike); which pages
			// are there is in the pagemaps.
			if len(a) != len(b) {
				t.Errorf("%s: %d bytes on one tracer, %d on four", n, len(a), len(b))
			}
			continue
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs between one tracer and four", n)
		}
	}
	t.Logf("%d images compared", len(n1))
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
