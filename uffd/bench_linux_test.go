package uffd

import (
	"errors"
	"fmt"
	"math/rand"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Fault service benchmarks. A C child (testdata/child.c) touches the pages of
// a MISSING-registered region one after another and times each touch; this
// process serves the faults either with godwit's Loop (epoll, batched reads,
// decoding, handler, Copy) or with the bare baseline (poll, read of one
// message, UFFDIO_COPY as raw syscalls, nothing else), in the same run, on
// the same region. Memory is warmed first: the region is faulted in once and
// dropped (MADV_DONTNEED), and our source buffer is written, so neither side
// pays the ~12 µs first touch of fresh guest RAM.
//
//	go test -run XXX -bench Fault -benchtime 1x ./uffd/

type faultStats struct {
	p50, p99 time.Duration
	total    time.Duration
	faults   int
}

func parseLat(t testing.TB, s string) faultStats {
	f := strings.Fields(s)
	if len(f) != 5 {
		t.Fatalf("child lat answer %q", s)
	}
	v := make([]uint64, 4)
	for i := range v {
		v[i], _ = strconv.ParseUint(f[i], 10, 64)
	}
	return faultStats{time.Duration(v[0]), time.Duration(v[1]), time.Duration(v[2]), int(v[3])}
}

// pinThread locks the goroutine to its thread and the thread to cpu.
func pinThread(cpu int) (func(), error) {
	runtime.LockOSThread()
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	var s unix.CPUSet
	s.Set(cpu)
	if err := unix.SchedSetaffinity(0, &s); err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	return func() { unix.SchedSetaffinity(0, &old); runtime.UnlockOSThread() }, nil
}

// serveBare is the baseline: blocking read of one message, UFFDIO_COPY, as
// raw syscalls, nothing else. The uffd is switched to blocking for it. It
// returns after serving a fault on the sentinel block, which the caller
// touches once the measured run is over.
func serveBare(fd int, src unsafe.Pointer, size uint64, cpu int, sentinel uint64, done chan error) {
	unpin, err := pinThread(cpu)
	if err != nil {
		done <- err
		return
	}
	defer unpin()
	var buf [msgSize]byte
	c := uffdioCopy{Src: uint64(uintptr(src)), Len: size}
	for {
		n, _, e := unix.Syscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), msgSize)
		if e == unix.EINTR {
			continue
		}
		if e != 0 || n != msgSize {
			done <- fmt.Errorf("read: %v %d", e, n)
			return
		}
		addr := *(*uint64)(unsafe.Pointer(&buf[16]))
		c.Dst = addr &^ (size - 1)
		c.Copy = 0
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), _UFFDIO_COPY, uintptr(unsafe.Pointer(&c))); e != 0 && e != unix.EEXIST {
			done <- fmt.Errorf("copy: %v", e)
			return
		}
		if c.Dst == sentinel {
			done <- nil
			return
		}
	}
}

// serveLoop is godwit's path: Loop + Msg decoding + Uffd.Copy.
func serveLoop(u *Uffd, src unsafe.Pointer, size uint64, cpu int, l *Loop, done chan error) {
	unpin, err := pinThread(cpu)
	if err != nil {
		done <- err
		return
	}
	defer unpin()
	done <- l.Run(func(msgs []Msg) error {
		for _, m := range msgs {
			if m.Event != EventPagefault {
				continue
			}
			if _, err := u.Copy(m.Address&^(size-1), src, size, 0); err != nil && !errors.Is(err, ErrExist) {
				return err
			}
		}
		return nil
	})
}

// watch kills the child if the server fails (the child would wait for its
// fault forever), then hands the result on.
func watch(b *testing.B, c *child, server <-chan error) <-chan error {
	out := make(chan error, 1)
	go func() {
		err := <-server
		if err != nil {
			b.Errorf("server: %v", err)
			c.cmd.Process.Kill()
		}
		out <- err
	}()
	return out
}

func BenchmarkFault(b *testing.B) {
	needRoot(b)
	for _, size := range []uint64{4 << 10, 64 << 10, 1 << 20} {
		for _, cross := range []bool{false, true} {
			name := fmt.Sprintf("copy=%dKiB/%s", size>>10, map[bool]string{false: "same-vCPU", true: "cross-vCPU"}[cross])
			b.Run(name, func(b *testing.B) { benchFault(b, size, cross) })
		}
	}
}

func benchFault(b *testing.B, size uint64, cross bool) {
	if runtime.NumCPU() < 2 && cross {
		b.Skip("one CPU")
	}
	c := startChild(b, true)
	u := c.remoteUffd()
	if _, err := u.API(0); err != nil {
		b.Fatal(err)
	}
	pages := 2048 // 2048 faults of 4 KiB
	switch size {
	case 64 << 10:
		pages = 16384 // 64 MiB: 1024 faults of 64 KiB
	case 1 << 20:
		pages = 65536 // 256 MiB: 256 faults of 1 MiB
	}
	base := c.doHex("map %d", pages)
	// Align to the copy size so every block is whole.
	length := uint64(pages) * PageSize
	if _, err := u.Register(base, length, ModeMissing); err != nil {
		b.Fatal(err)
	}
	src, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Munmap(src)
	for i := range src {
		src[i] = 1
	}
	srcp := unsafe.Pointer(&src[0])
	if r := c.do("cpu 0"); r != "0" {
		b.Fatal(r)
	}
	serverCPU := 0
	if cross {
		serverCPU = 1
	}
	// The child's region may not be aligned to size: touch from the first
	// aligned address.
	start := (base + size - 1) &^ (size - 1)
	n := int((base + length - start) / PageSize)
	n -= n % int(size/PageSize)
	n -= int(size / PageSize) // the last block is the bare server's sentinel

	sentinel := start + uint64(n)*PageSize
	runBare := func() faultStats {
		if err := unix.SetNonblock(u.Fd(), false); err != nil {
			b.Fatal(err)
		}
		defer unix.SetNonblock(u.Fd(), true)
		done := make(chan error, 1)
		go serveBare(u.Fd(), srcp, size, serverCPU, sentinel, done)
		result := watch(b, c, done)
		st := parseLat(b, c.do("lat %x %d %d", start, n, size/PageSize))
		c.do("sum %x 1", sentinel) // ends the server
		if err := <-result; err != nil {
			b.Fatal(err)
		}
		return st
	}
	runLoop := func() faultStats {
		l, err := NewLoop(u, DefaultBatch)
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close()
		done := make(chan error, 1)
		go serveLoop(u, srcp, size, serverCPU, l, done)
		result := watch(b, c, done)
		st := parseLat(b, c.do("lat %x %d %d", start, n, size/PageSize))
		l.Stop()
		if err := <-result; err != nil {
			b.Fatal(err)
		}
		return st
	}
	drop := func() {
		if r := c.do("dontneed %x %x", base, length); r != "0" {
			b.Fatal(r)
		}
	}
	// Warm-up: one full pass with each server.
	runBare()
	drop()
	runLoop()
	drop()
	b.ResetTimer()
	var bare, ours faultStats
	for i := 0; i < b.N; i++ {
		bare = runBare()
		drop()
		ours = runLoop()
		drop()
	}
	b.StopTimer()
	// Each touch faults and is answered with one copy of size bytes.
	mbps := func(s faultStats) float64 { return float64(uint64(s.faults)*size) / s.total.Seconds() / 1e6 }
	b.ReportMetric(float64(ours.p50.Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(ours.p99.Nanoseconds())/1e3, "p99-µs")
	b.ReportMetric(mbps(ours), "MB/s")
	b.ReportMetric(float64(bare.p50.Nanoseconds())/1e3, "bare-p50-µs")
	b.ReportMetric(float64(bare.p99.Nanoseconds())/1e3, "bare-p99-µs")
	b.ReportMetric(mbps(bare), "bare-MB/s")
	b.ReportMetric(float64(ours.p50)/float64(bare.p50), "p50-ratio")
	b.ReportMetric(float64(ours.p99)/float64(bare.p99), "p99-ratio")
	b.ReportMetric(mbps(bare)/mbps(ours), "time-ratio")
	b.Logf("%s: %d faults; godwit p50 %v p99 %v %.0f MB/s; bare p50 %v p99 %v %.0f MB/s",
		b.Name(), ours.faults, ours.p50, ours.p99, mbps(ours), bare.p50, bare.p99, mbps(bare))
}

// Scan benchmarks: a child with 1 GiB (fully populated) or 16 GiB (mapped
// MAP_NORESERVE; only the pages written, 1 % per round, are ever populated)
// of anonymous memory writes 1 % of its pages at random each round; the
// time of godwit's Tracker.Scan over all the child's VMAs is compared with
// one bare PAGEMAP_SCAN ioctl (WP_MATCHING|CHECK_WPASYNC, vector large
// enough) over the region alone, on alternate rounds of the same run.
//
//	go test -run XXX -bench Scan -benchtime 3x ./uffd/
func BenchmarkScan(b *testing.B) {
	needRoot(b)
	for _, gib := range []int{1, 16} {
		b.Run(fmt.Sprintf("%dGiB-1%%dirty", gib), func(b *testing.B) { benchScan(b, gib) })
	}
}

func benchScan(b *testing.B, gib int) {
	c := startChild(b, false)
	pages := gib << 18
	base := c.doHex("map %d", pages)
	if gib == 1 {
		// Populated and warm.
		if r := c.do("fill %x %d", base, pages); r != "ok" {
			b.Fatal(r)
		}
	}
	u := c.remoteUffd()
	if _, err := u.API(TrackerFeatures); err != nil {
		b.Fatal(err)
	}
	pm, err := OpenPagemap(c.pid())
	if err != nil {
		b.Fatal(err)
	}
	defer pm.Close()
	tr, err := NewTracker(u, pm)
	if err != nil {
		b.Fatal(err)
	}
	vmas, err := ReadVMAs(c.pid())
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	if _, err := tr.Scan(vmas); err != nil {
		b.Fatal(err)
	}
	b.Logf("start tracking (register + protect + populated scan): %v", time.Since(t0))
	rng := rand.New(rand.NewSource(1))
	dirty := pages / 100
	write := func() {
		set := map[int]bool{}
		for len(set) < dirty {
			set[rng.Intn(pages)] = true
		}
		var sb strings.Builder
		fmt.Fprintf(&sb, "wr %x %d", base, dirty)
		for i := range set {
			fmt.Fprintf(&sb, " %d", i)
		}
		if r := c.do("%s", sb.String()); r != "ok" {
			b.Fatal(r)
		}
	}
	vec := make([]Region, dirty+16)
	bare := func() (time.Duration, int) {
		arg := pmScanArg{Size: uint64(unsafe.Sizeof(pmScanArg{})), Flags: ScanWPMatching | ScanCheckWPAsync,
			Start: base, End: base + uint64(pages)*PageSize, Vec: uint64(uintptr(unsafe.Pointer(&vec[0]))),
			VecLen: uint64(len(vec)), CategoryMask: PageIsWritten, ReturnMask: PageIsWritten}
		t := time.Now()
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(pm.fd), _PAGEMAP_SCAN, uintptr(unsafe.Pointer(&arg)))
		d := time.Since(t)
		if e != 0 {
			b.Fatal(e)
		}
		return d, int(r)
	}
	var res ScanResult
	// Warm-up round of each.
	write()
	bare()
	write()
	if err := tr.ScanInto(&res, vmas); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	var ours, base0 time.Duration
	var got uint64
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		write()
		b.StartTimer()
		d, _ := bare()
		base0 += d
		b.StopTimer()
		write()
		b.StartTimer()
		t := time.Now()
		err := tr.ScanInto(&res, vmas)
		ours += time.Since(t)
		if err != nil {
			b.Fatal(err)
		}
		got = res.WrittenPages()
	}
	b.StopTimer()
	if got < uint64(dirty) {
		b.Fatalf("last scan reported %d written pages, %d were written", got, dirty)
	}
	b.ReportMetric(float64(ours.Microseconds())/float64(b.N)/1e3, "scan-ms")
	b.ReportMetric(float64(base0.Microseconds())/float64(b.N)/1e3, "bare-scan-ms")
	b.ReportMetric(float64(ours)/float64(base0), "scan-ratio")
	b.ReportMetric(float64(got), "reported-pages")
	b.Logf("%s: %d dirty pages/round; Tracker.Scan %v/round (reported %d incl. the child's own stack etc.), bare ioctl %v/round",
		b.Name(), dirty, ours/time.Duration(b.N), got, base0/time.Duration(b.N))
	if err := tr.Stop(); err != nil {
		b.Fatal(err)
	}
}
