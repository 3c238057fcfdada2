package pageserver

import (
	"errors"
	"runtime"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkLazyGetRoundTrip: one-page GETs (what a lazy-pages fault asks)
// one after another over loopback TCP from a page server serving its
// images, against the floor measured in the same run: a 24-byte request
// and a 4 KiB reply between two blocking raw sockets on locked threads,
// rounds interleaved (medians of 5 rounds of 2000 each). GETs are timed on
// a client in its default mode and on one in blocking mode (BlockingGets,
// as lazy-pages uses on plain TCP).
//
//	go test -run XXX -bench LazyGetRoundTrip -benchtime 1x ./pageserver/
func BenchmarkLazyGetRoundTrip(b *testing.B) {
	const pages, per, rounds = 256, 2000, 5
	dump := b.TempDir()
	writeLocal(b, dump, "pagemap-42.img", 1, []pageRange{{vaddr: 0x600000, nr: pages, flags: FlagPresent | FlagLazy}}, 5)
	ts := startServer(b, Config{ImagesDir: dump, Lazy: true}, TransportOptions{})
	c := ts.dial(b)
	defer c.Close()
	cb := ts.dial(b)
	defer cb.Close()
	if err := cb.BlockingGets(10 * time.Second); err != nil {
		b.Fatal(err)
	}
	gets := func(c *Client) time.Duration {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		buf := make([]byte, PageSize)
		var ds []time.Duration
		for i := range per {
			t0 := time.Now()
			if n, err := c.Get(42, 0x600000+uint64(i%pages)*PageSize, 1, buf); err != nil || n != 1 {
				b.Fatalf("GET: %d, %v", n, err)
			}
			ds = append(ds, time.Since(t0))
		}
		return medianD(ds)
	}
	var get, getB, floor []time.Duration
	for range rounds {
		get = append(get, gets(c))
		getB = append(getB, gets(cb))
		f, err := rawRoundTrips(per)
		if err != nil {
			b.Fatal(err)
		}
		floor = append(floor, f)
	}
	g, gb, f := medianD(get), medianD(getB), medianD(floor)
	b.Logf("one-page GET round trip p50 %v, blocking client %v; raw loopback round trip (24 B out, 4 KiB back) p50 %v: %.2fx, blocking %.2fx",
		g, gb, f, float64(g)/float64(f), float64(gb)/float64(f))
	b.ReportMetric(float64(g.Nanoseconds())/1e3, "get-µs")
	b.ReportMetric(float64(gb.Nanoseconds())/1e3, "get-blocking-µs")
	b.ReportMetric(float64(gb)/float64(f), "get-blocking/floor")
	b.ReportMetric(float64(f.Nanoseconds())/1e3, "floor-µs")
	b.ReportMetric(float64(g)/float64(f), "get/floor")
}

func medianD(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// rawRoundTrips times n request/reply exchanges between two blocking
// loopback sockets, the server on a locked thread of its own; it returns
// their median.
func rawRoundTrips(n int) (time.Duration, error) {
	l, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(l)
	if err := unix.Bind(l, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return 0, err
	}
	if err := unix.Listen(l, 1); err != nil {
		return 0, err
	}
	sa, err := unix.Getsockname(l)
	if err != nil {
		return 0, err
	}
	cli, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(cli)
	if err := unix.Connect(cli, sa); err != nil {
		return 0, err
	}
	srv, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
	if err != nil {
		return 0, err
	}
	for _, fd := range []int{srv, cli} {
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	}
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer unix.Close(srv)
		page := make([]byte, PageSize)
		var req [24]byte
		for rawFull(srv, req[:], false) == nil {
			if rawFull(srv, page, true) != nil {
				return
			}
		}
	}()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	page := make([]byte, PageSize)
	var req [24]byte
	ds := make([]time.Duration, 0, n)
	for range n {
		t0 := time.Now()
		if err := rawFull(cli, req[:], true); err != nil {
			return 0, err
		}
		if err := rawFull(cli, page, false); err != nil {
			return 0, err
		}
		ds = append(ds, time.Since(t0))
	}
	return medianD(ds), nil
}

// rawFull reads (or writes) all of b on a blocking socket.
func rawFull(fd int, b []byte, write bool) error {
	for len(b) > 0 {
		var k int
		var err error
		if write {
			k, err = unix.Write(fd, b)
		} else {
			k, err = unix.Read(fd, b)
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if k == 0 {
			return errors.New("EOF")
		}
		b = b[k:]
	}
	return nil
}
