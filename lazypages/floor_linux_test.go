package lazypages

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/testutil"
	"godwit/uffd"
)

// Floors of the lazy-restore benchmark: the cheapest ways the kernel
// allows to do what the daemon does, written with raw blocking syscalls on
// threads of their own (no Go poller, no protocol, no bookkeeping).

// loopbackPair connects two blocking loopback TCP sockets (raw fds,
// outside Go's poller) with TCP_NODELAY: srv is the accepted end.
func loopbackPair() (srv, cli int, err error) {
	l, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, -1, err
	}
	defer unix.Close(l)
	if err := unix.Bind(l, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return -1, -1, err
	}
	if err := unix.Listen(l, 1); err != nil {
		return -1, -1, err
	}
	sa, err := unix.Getsockname(l)
	if err != nil {
		return -1, -1, err
	}
	if cli, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err != nil {
		return -1, -1, err
	}
	if err := unix.Connect(cli, sa); err != nil {
		unix.Close(cli)
		return -1, -1, err
	}
	if srv, _, err = unix.Accept4(l, unix.SOCK_CLOEXEC); err != nil {
		unix.Close(cli)
		return -1, -1, err
	}
	for _, fd := range []int{srv, cli} {
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	}
	return srv, cli, nil
}

func readFull(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Read(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return errors.New("EOF")
		}
		b = b[n:]
	}
	return nil
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// pageFile is a file in tmpfs holding size bytes of a pattern: what a
// floor's sender sendfiles from, as the page server does from the images.
func pageFile(b testing.TB, size int) *os.File {
	f, err := os.CreateTemp("/dev/shm", "godwit-floor")
	if err != nil {
		b.Fatal(err)
	}
	os.Remove(f.Name())
	buf := make([]byte, size)
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	if _, err := f.Write(buf); err != nil {
		b.Fatal(err)
	}
	return f
}

// sendfileLoop sends total bytes from f (cycled) to fd with sendfile(2),
// on a thread of its own.
func sendfileLoop(fd int, f *os.File, fsize, total int64) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for total > 0 {
		off := int64(0)
		for off < fsize && total > 0 {
			n, err := unix.Sendfile(fd, int(f.Fd()), &off, int(min(fsize-off, total)))
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return err
			}
			total -= int64(n)
		}
	}
	return nil
}

// tcpFloor moves size bytes over loopback TCP (sendfile from tmpfs →
// recv into warm memory) and returns bytes/s: the cheapest way bytes get
// from a page server's file into this process.
func tcpFloor(b *testing.B, size int64) float64 {
	defer raiseProcs()() // as the daemon: no thread waits for a P
	dst := make([]byte, floorChunk*4)
	for i := range dst {
		dst[i] = 1
	}
	f := pageFile(b, floorChunk)
	defer f.Close()
	srv, cli, err := loopbackPair()
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(cli)
	sent := make(chan error, 1)
	go func() { sent <- sendfileLoop(srv, f, floorChunk, size); unix.Close(srv) }()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	t0 := time.Now()
	for got := int64(0); got < size; {
		off := got % int64(len(dst))
		n, err := unix.Read(cli, dst[off:min(int64(len(dst)), off+size-got)])
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			b.Fatalf("tcp floor: read: %v", err)
		}
		got += int64(n)
	}
	d := time.Since(t0)
	if err := <-sent; err != nil {
		b.Fatalf("tcp floor: sendfile: %v", err)
	}
	return float64(size) / d.Seconds()
}

// floorChunk is what the floors move per recv / UFFDIO_COPY.
const floorChunk = 1 << 20

// uffdFloor moves size bytes over loopback TCP into memory missing behind
// a userfaultfd: sendfile from tmpfs → recv into a buffer → UFFDIO_COPY,
// the recv and the copy on two threads (two buffers), nothing else. This
// is what the daemon's background push must do at the least.
func uffdFloor(b *testing.B, size int64) float64 {
	defer raiseProcs()() // as the daemon: no thread waits for a P
	region, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Munmap(region)
	u, err := uffd.Open(0)
	if err != nil {
		b.Fatal(err)
	}
	defer u.Close()
	if _, err := u.API(0); err != nil {
		b.Fatal(err)
	}
	base := uint64(uintptr(unsafe.Pointer(&region[0])))
	if _, err := u.Register(base, uint64(size), uffd.ModeMissing); err != nil {
		b.Fatal(err)
	}
	f := pageFile(b, floorChunk)
	defer f.Close()
	srv, cli, err := loopbackPair()
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(cli)
	bufs := make(chan []byte, 3)
	full := make(chan []byte, 3)
	for range 3 {
		buf := make([]byte, floorChunk)
		for i := range buf {
			buf[i] = 1
		}
		bufs <- buf
	}
	sent := make(chan error, 1)
	copied := make(chan error, 1)
	t0 := time.Now()
	go func() { sent <- sendfileLoop(srv, f, floorChunk, size); unix.Close(srv) }()
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		for off := uint64(0); off < uint64(size); off += floorChunk {
			buf := <-full
			if _, err := u.Copy(base+off, unsafe.Pointer(&buf[0]), floorChunk, 0); err != nil {
				copied <- err
				return
			}
			bufs <- buf
		}
		copied <- nil
	}()
	runtime.LockOSThread()
	for got := int64(0); got < size; got += floorChunk {
		buf := <-bufs
		if err := readFull(cli, buf); err != nil {
			runtime.UnlockOSThread()
			b.Fatalf("uffd floor: recv: %v", err)
		}
		full <- buf
	}
	runtime.UnlockOSThread()
	if err := <-copied; err != nil {
		b.Fatalf("uffd floor: %v", err)
	}
	d := time.Since(t0)
	if err := <-sent; err != nil {
		b.Fatalf("uffd floor: sendfile: %v", err)
	}
	return float64(size) / d.Seconds()
}

// bareFloor runs the workload's bare mode (the same timed first touches
// as bench, on a fresh region of its own behind its own userfaultfd) and
// serves its faults with a bare loop on a thread of its own: poll, read
// one uffd_msg, one-page UFFDIO_COPY. With remote, the loop fetches each
// page first from a trivial server over loopback TCP (a 24-byte request,
// the 4 KiB page back; blocking raw sockets, both ends on threads of their
// own): the cheapest way to serve a fault from a remote source.
func bareFloor(b *testing.B, mib int, remote bool) (time.Duration, time.Duration) {
	defer raiseProcs()() // as the daemon: no thread waits for a P
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
	srv, cli := -1, -1
	if remote {
		if srv, cli, err = loopbackPair(); err != nil {
			b.Fatal(err)
		}
		defer unix.Close(cli)
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			defer unix.Close(srv)
			page := make([]byte, pageSize)
			for i := range page {
				page[i] = 7
			}
			var req [24]byte
			for readFull(srv, req[:]) == nil {
				if writeAll(srv, page) != nil {
					return
				}
			}
		}()
	}
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		page := make([]byte, pageSize)
		for i := range page {
			page[i] = 7
		}
		var msg [32]byte
		var req [24]byte
		fds := []unix.PollFd{{Fd: int32(u.Fd()), Events: unix.POLLIN}}
		for {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			if n, _ := unix.Poll(fds, 100); n <= 0 {
				continue
			}
			if n, err := unix.Read(u.Fd(), msg[:]); err != nil || n != 32 {
				continue
			}
			a := binary.NativeEndian.Uint64(msg[16:]) &^ (pageSize - 1)
			if remote {
				binary.NativeEndian.PutUint64(req[8:], a)
				err := writeAll(cli, req[:])
				if err == nil {
					err = readFull(cli, page)
				}
				if err != nil {
					unix.Kill(p.Pid, unix.SIGKILL) // it would wait for its fault forever
					done <- err
					return
				}
			}
			u.Copy(a, unsafe.Pointer(&page[0]), pageSize, 0)
		}
	}()
	if err := os.WriteFile(goFile, nil, 0o600); err != nil {
		b.Fatal(err)
	}
	code := p.Wait(b)
	close(stop)
	if err := <-done; err != nil {
		b.Fatalf("bare floor: %v", err)
	}
	if code != 0 {
		b.Fatalf("bare workload exit %d", code)
	}
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
