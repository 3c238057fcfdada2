package lazypages

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/dumper"
	"godwit/internal/testutil"
	"godwit/pageserver"
	"godwit/restorer"
	"godwit/uffd"
)

// BenchmarkLazyRestore: lazy restore of a process with MiB of memory
// (GODWIT_LAZY_BENCH_MIB, default 2048) from a page server over loopback
// TCP (plain, CRIU's default, and with TLS) and from local images, against floors measured in the same run: loopback TCP (plain
// and TLS) into warm memory, and the bare uffd loop (poll, read, one-page
// UFFDIO_COPY) for fault latency. Figures: restore start → the program
// runs (its own clock), restore start → every page in, the program's
// first-touch latency of missing pages (p50/p99, mincore-selected), and
// this process's peak RSS (daemon + restorer; the page server too).
// Memory is warm: the workload wrote all of it before the dump, and the
// floors read into memory touched first.
//
//	go test -run XXX -bench LazyRestore -benchtime 1x ./lazypages/
//
// GODWIT_LAZY_BENCH_MODES (e.g. "tcp,local") and GODWIT_LAZY_BENCH_PUSH
// (pages per background request) narrow a run while tuning.
func BenchmarkLazyRestore(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	mib := 2048
	if v := os.Getenv("GODWIT_LAZY_BENCH_MIB"); v != "" {
		mib, _ = strconv.Atoi(v)
	}
	size := int64(mib) << 20
	tmp := b.TempDir()
	dir := filepath.Join(tmp, "img")
	os.Mkdir(dir, 0o700)
	log, goFile := filepath.Join(tmp, "log"), filepath.Join(tmp, "go")
	p := testutil.Start(b, exec.Command(lazyBin(b), log, goFile, strconv.Itoa(mib), "bench"), log, "ready")
	if _, err := dumper.Dump(dumper.Options{Pid: p.Pid, ImagesDir: dir}, nil); err != nil {
		b.Fatal(err)
	}
	p.Reaped(b)

	tcpFloor := loopbackFloor(b, size, false)
	tlsFloor := loopbackFloor(b, size, true)
	bareP50, bareP99 := bareFloor(b, mib)
	b.ReportMetric(tcpFloor/1e9, "floor-tcp-GB/s")
	b.ReportMetric(tlsFloor/1e9, "floor-tls-GB/s")

	modes := []string{"tcp", "tls", "local"}
	if v := os.Getenv("GODWIT_LAZY_BENCH_MODES"); v != "" {
		modes = strings.Split(v, ",") // e.g. "tcp" while tuning
	}
	push, _ := strconv.Atoi(os.Getenv("GODWIT_LAZY_BENCH_PUSH")) // 0: the default
	for _, name := range modes {
		os.Remove(goFile)
		os.WriteFile(log, nil, 0o600)
		o := Options{ImagesDir: dir, PushPages: push}
		switch name {
		case "tcp":
			addr, _, _ := startPageServer(b, dir, pageserver.TransportOptions{})
			o.PageServer = addr
		case "tls":
			so, co, _ := certs(b, "tcp")
			addr, _, _ := startPageServer(b, dir, so)
			o.PageServer, o.Transport = addr, co
		}
		warm(b, size)
		debug.FreeOSMemory()
		os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) // peak RSS from here
		res := startDaemonB(b, o)
		if err := os.WriteFile(goFile, nil, 0o600); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		r, err := restorer.Restore(restorer.Options{ImagesDir: dir, LazyPages: true}, nil)
		if err != nil {
			b.Fatal(err)
		}
		restored := time.Since(start)
		code, err := r.Wait()
		if err != nil || code != 0 {
			lb, _ := os.ReadFile(log)
			b.Fatalf("workload exit %d %v: %s", code, err, lb)
		}
		d := <-res
		if d.err != nil {
			b.Fatal(d.err)
		}
		lb, _ := os.ReadFile(log)
		var running int64
		var p50, p99, n int64
		for _, l := range strings.Split(string(lb), "\n") {
			fmt.Sscanf(l, "running %d", &running)
			fmt.Sscanf(l, "lat %d %d %d", &p50, &p99, &n)
		}
		toRun := time.Unix(0, running).Sub(start)
		all := d.st.AllPagesIn.Sub(start)
		rate := float64(size) / all.Seconds()
		rss := peakRSS(b)
		b.Logf("%s: %d MiB: restore %v, program running after %v, every page in after %v (%.2f GB/s; floor tcp %.2f, tls %.2f GB/s: %.0f%% of tcp, %.0f%% of tls); "+
			"faults p50 %v p99 %v (%d samples) vs bare loop p50 %v p99 %v (%.2fx, %.2fx); peak RSS %d MiB; %+v",
			name, mib, restored, toRun, all, rate/1e9, tcpFloor/1e9, tlsFloor/1e9, 100*rate/tcpFloor, 100*rate/tlsFloor,
			time.Duration(p50), time.Duration(p99), n, bareP50, bareP99, float64(p50)/float64(bareP50), float64(p99)/float64(bareP99), rss>>20, d.st)
		b.ReportMetric(float64(toRun.Microseconds())/1000, name+"-to-running-ms")
		b.ReportMetric(all.Seconds(), name+"-all-in-s")
		b.ReportMetric(float64(p50)/float64(bareP50), name+"-p50/bare")
		b.ReportMetric(float64(p99)/float64(bareP99), name+"-p99/bare")
		b.ReportMetric(float64(rss>>20), name+"-peak-RSS-MiB")
	}
}

func peakRSS(b *testing.B) int64 {
	st, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(st), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			kb, _ := strconv.ParseInt(strings.Fields(l)[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

func startDaemonB(b *testing.B, o Options) chan daemonResult {
	ready := make(chan struct{})
	o.Ready = func() { close(ready) }
	res := make(chan daemonResult, 1)
	go func() {
		st, err := Run(context.Background(), o)
		res <- daemonResult{st, err}
	}()
	select {
	case <-ready:
	case r := <-res:
		b.Fatalf("daemon: %v", r.err)
	}
	return res
}

// loopbackFloor moves size bytes over loopback TCP (optionally TLS) into
// warm memory and returns bytes/s.
func loopbackFloor(b *testing.B, size int64, tlsOn bool) float64 {
	dst := make([]byte, min(size, 1<<30))
	for i := 0; i < len(dst); i += 4096 {
		dst[i] = 1
	}
	src := make([]byte, 1<<20)
	for i := range src {
		src[i] = byte(i)
	}
	so, co, _ := certs(b, "tcp")
	var ln net.Listener
	var err error
	if tlsOn {
		sc, cc := tlsConfs(b, so, co)
		ln, err = tlsListen(sc)
		defer func() { _ = cc }()
		if err != nil {
			b.Fatal(err)
		}
		go serveBytes(ln, src, size)
		c, err := tlsDial(ln.Addr().String(), cc)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		return readAll(b, c, dst, size)
	}
	ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go serveBytes(ln, src, size)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	return readAll(b, c, dst, size)
}

func serveBytes(ln net.Listener, src []byte, size int64) {
	defer ln.Close()
	c, err := ln.Accept()
	if err != nil {
		return
	}
	defer c.Close()
	for left := size; left > 0; {
		k := min(left, int64(len(src)))
		if _, err := c.Write(src[:k]); err != nil {
			return
		}
		left -= k
	}
}

func readAll(b *testing.B, c io.Reader, dst []byte, size int64) float64 {
	t0 := time.Now()
	var got int64
	for got < size {
		off := got % int64(len(dst))
		n, err := c.Read(dst[off:min(int64(len(dst)), off+size-got)])
		got += int64(n)
		if err != nil {
			b.Fatal(err)
		}
	}
	return float64(size) / time.Since(t0).Seconds()
}

// bareFloor runs the workload's bare mode and serves its faults with the
// bare loop: poll, read one uffd_msg, UFFDIO_COPY one page.
func bareFloor(b *testing.B, mib int) (time.Duration, time.Duration) {
	tmp := b.TempDir()
	log, goFile := filepath.Join(tmp, "log"), filepath.Join(tmp, "go")
	p := testutil.Start(b, exec.Command(lazyBin(b), log, goFile, strconv.Itoa(mib), "bare"), log, "uffd ")
	lb, _ := os.ReadFile(log)
	var fd int
	var addr uintptr
	fmt.Sscanf(string(lb), "uffd %d %v", &fd, &addr)
	u, err := uffd.OpenRemote(p.Pid, fd)
	if err != nil {
		b.Fatal(err)
	}
	defer u.Close()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		page := make([]byte, 4096)
		for i := range page {
			page[i] = 7
		}
		var msg [32]byte
		fds := []unix.PollFd{{Fd: int32(u.Fd()), Events: unix.POLLIN}}
		for {
			select {
			case <-stop:
				return
			default:
			}
			if n, _ := unix.Poll(fds, 100); n <= 0 {
				continue
			}
			if n, err := unix.Read(u.Fd(), msg[:]); err != nil || n != 32 {
				continue
			}
			a := binary.NativeEndian.Uint64(msg[16:]) &^ 4095
			u.Copy(a, unsafe.Pointer(&page[0]), 4096, 0)
		}
	}()
	if err := os.WriteFile(goFile, nil, 0o600); err != nil {
		b.Fatal(err)
	}
	if code := p.Wait(b); code != 0 {
		b.Fatalf("bare workload exit %d", code)
	}
	close(stop)
	<-done
	lb, _ = os.ReadFile(log)
	var p50, p99, n int64
	for _, l := range strings.Split(string(lb), "\n") {
		fmt.Sscanf(l, "lat %d %d %d", &p50, &p99, &n)
	}
	if n == 0 {
		b.Fatalf("bare floor: no samples: %s", lb)
	}
	return time.Duration(p50), time.Duration(p99)
}

// warm touches size bytes of fresh memory and gives it back, so that the
// restored task's pages come from guest memory the host already backs.
func warm(b *testing.B, size int64) {
	m, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < len(m); i += 4096 {
		m[i] = 1
	}
	unix.Munmap(m)
}
