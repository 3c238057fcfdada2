package pageserver

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/images"
	"godwit/internal/logging"
	"godwit/pageserver/internal/wire"
)

var taskRanges = []pageRange{
	{vaddr: 0x400000, nr: 3, flags: FlagPresent},
	{vaddr: 0x403000, nr: 2, flags: FlagPresent}, // adjacent: one entry, as a local dump
	{vaddr: 0x500000, nr: 4, flags: FlagPresent | FlagLazy},
	{vaddr: 0x600000, nr: 1, flags: FlagLazy},
	{vaddr: 0x7f0000000000, nr: 300, flags: FlagPresent},
}

var shmemRanges = []pageRange{{vaddr: 0, nr: 2, flags: FlagPresent}, {vaddr: 0x3000, nr: 5, flags: FlagPresent}}

func rangesBytes(rs []pageRange) int64 {
	var n int64
	for _, r := range rs {
		if r.flags&FlagPresent != 0 && !r.hole {
			n += int64(r.nr * PageSize)
		}
	}
	return n
}

// checkSame compares the server's images of name with a local write of rs.
func checkSame(t *testing.T, serverDir, name string, rs []pageRange, salt uint64) {
	t.Helper()
	id := pagesIDOf(t, serverDir, name)
	local := t.TempDir()
	writeLocal(t, local, name, id, rs, salt)
	sameFiles(t, serverDir, local, name)
	sameFiles(t, serverDir, local, images.PagesImg(id))
}

func roundTrip(t *testing.T, o TransportOptions, parallel bool) {
	ts := startServer(t, Config{}, o)
	c := ts.dial(t)
	type job struct {
		dst  uint64
		name string
		rs   []pageRange
		salt uint64
	}
	jobs := []job{
		{TaskDst(100), "pagemap-100.img", taskRanges, 1},
		{TaskDst(101), "pagemap-101.img", taskRanges[2:], 2},
		{ShmemDst(7), "pagemap-shmem-7.img", shmemRanges, 3},
	}
	run := func(j job) error {
		s, err := c.OpenTask(context.Background(), j.dst, true)
		if err != nil {
			return err
		}
		if s.HasParent() {
			return errors.New("has_parent without parent images")
		}
		sendTask(t, s, j.rs, j.salt)
		return s.Close()
	}
	if parallel {
		var wg sync.WaitGroup
		errs := make(chan error, len(jobs))
		for _, j := range jobs {
			wg.Go(func() { errs <- run(j) })
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
	} else {
		for _, j := range jobs {
			if err := run(j); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	var want int64
	for _, j := range jobs {
		checkSame(t, ts.dir, j.name, j.rs, j.salt)
		want += rangesBytes(j.rs)
	}
	if got := metricValue(t, ts.m.bytes.WithLabelValues("in")); got != float64(want) {
		t.Errorf("bytes_total{in} = %v, want %d", got, want)
	}
	if !parallel {
		// Sequential opens get consecutive ids from CRIU's base.
		if id := pagesIDOf(t, ts.dir, "pagemap-100.img"); id != DefaultPagesIDBase {
			t.Errorf("first pages id %d, want %d", id, DefaultPagesIDBase)
		}
	}
}

func TestRoundTripTCP(t *testing.T) { roundTrip(t, TransportOptions{}, false) }

func TestRoundTripTCPTLS(t *testing.T) {
	o := tlsFiles(t, t.TempDir())
	o.TLS = true
	roundTrip(t, o, false)
}

func TestRoundTripQUIC(t *testing.T) {
	o := tlsFiles(t, t.TempDir())
	o.Transport = TransportQUIC
	roundTrip(t, o, true)
}

// TestSources sends the same pages from a pipe (splice), a file
// (sendfile) and memory; the images must not differ.
func TestSources(t *testing.T) {
	ts := startServer(t, Config{}, TransportOptions{})
	c := ts.dial(t)
	rs := []pageRange{{vaddr: 0x10000000, nr: 600, flags: FlagPresent}}
	data := pagesOf(rs[0], 9)

	// pipe, filled by a writer goroutine as a dumper's vmsplice would
	s, err := c.OpenTask(context.Background(), TaskDst(1), false)
	if err != nil {
		t.Fatal(err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	go func() { pw.Write(data); pw.Close() }()
	if err := s.AddPages(rs[0].vaddr, rs[0].nr, FlagPresent, pr); err != nil {
		t.Fatal(err)
	}
	pr.Close()
	s.Close()

	// regular file
	f, err := os.CreateTemp(t.TempDir(), "pages")
	if err != nil {
		t.Fatal(err)
	}
	f.Write(data)
	f.Seek(0, 0)
	s, _ = c.OpenTask(context.Background(), TaskDst(2), false)
	if err := s.AddPages(rs[0].vaddr, rs[0].nr, FlagPresent, f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	s.Close()

	// memory, one writev
	s, _ = c.OpenTask(context.Background(), TaskDst(3), false)
	if err := s.AddPagesBytes(rs[0].vaddr, FlagPresent, data); err != nil {
		t.Fatal(err)
	}
	s.Close()

	// a source shorter than announced breaks the client, not the server
	s, _ = c.OpenTask(context.Background(), TaskDst(4), false)
	if err := s.AddPages(0x1000, 4, FlagPresent, bytes.NewReader(make([]byte, 3*PageSize))); err == nil {
		t.Fatal("short source accepted")
	}
	if err := c.Close(); err == nil {
		t.Fatal("Close after a broken request reported success")
	}
	// The server is done with the session once it dropped task 4.
	ts.log.waitLog(t, "dropped incomplete pagemap-4.img")
	for _, pid := range []int{1, 2, 3} {
		checkSame(t, ts.dir, fmt.Sprintf("pagemap-%d.img", pid), rs, 9)
	}
	if exists(ts.dir, "pagemap-4.img") {
		t.Fatal("partial pagemap-4.img left behind")
	}
}

func TestParentAndHoles(t *testing.T) {
	root := t.TempDir()
	prev := filepath.Join(root, "pre1")
	// Round 1: what a pre-dump left.
	writeLocal(t, prev, "pagemap-100.img", 1, []pageRange{
		{vaddr: 0x400000, nr: 8, flags: FlagPresent},
		{vaddr: 0x500000, nr: 2, flags: FlagPresent},
	}, 5)
	ts := startServer(t, Config{ImagesDir: filepath.Join(root, "dump"), PrevImagesDir: "../pre1"}, TransportOptions{})
	if l, err := os.Readlink(filepath.Join(ts.dir, "parent")); err != nil || l != "../pre1" {
		t.Fatalf("parent link = %q, %v", l, err)
	}
	c := ts.dial(t)
	for pid, want := range map[int]bool{100: true, 101: false} {
		got, err := c.CheckParent(TaskDst(pid))
		if err != nil || got != want {
			t.Fatalf("PARENT %d = %v, %v; want %v", pid, got, err, want)
		}
	}
	s, err := c.OpenTask(context.Background(), TaskDst(100), true)
	if err != nil {
		t.Fatal(err)
	}
	if !s.HasParent() {
		t.Fatal("OPEN2: no parent reported")
	}
	rs := []pageRange{
		{vaddr: 0x400000, nr: 3, hole: true},
		{vaddr: 0x403000, nr: 2, flags: FlagPresent},
		{vaddr: 0x405000, nr: 3, hole: true},
		{vaddr: 0x500000, nr: 2, hole: true},
	}
	sendTask(t, s, rs, 6)
	s.Close()
	s, err = c.OpenTask(context.Background(), TaskDst(101), true)
	if err != nil || s.HasParent() {
		t.Fatalf("OPEN2 101: parent %v, %v", s != nil && s.HasParent(), err)
	}
	s.Close()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	checkSame(t, ts.dir, "pagemap-100.img", rs, 6)

	// A hole the parent does not cover is refused (in a second dump
	// directory: the first one's images are never replaced).
	ts = startServer(t, Config{ImagesDir: filepath.Join(root, "dump2"), PrevImagesDir: "../pre1"}, TransportOptions{})
	c = ts.dial(t)
	s, _ = c.OpenTask(context.Background(), TaskDst(100), true)
	s.Hole(0x508000, 1)
	if err := c.Close(); err == nil {
		t.Fatal("uncovered hole accepted")
	}
	ts.log.waitLog(t, "missing in the parent pagemap")
	if got := metricValue(t, ts.m.errors.WithLabelValues(reasonParent)); got != 1 {
		t.Errorf("errors{parent_missing} = %v", got)
	}
	// The refused session's partial pagemap must not remain.
	if exists(ts.dir, "pagemap-100.img") {
		t.Error("refused session left pagemap-100.img")
	}
}

func TestLazyGet(t *testing.T) {
	root := t.TempDir()
	writeLocal(t, filepath.Join(root, "pre"), "pagemap-42.img", 1, []pageRange{
		{vaddr: 0x400000, nr: 4, flags: FlagPresent},
	}, 11)
	dump := filepath.Join(root, "dump")
	writeLocal(t, dump, "pagemap-42.img", 2, []pageRange{
		{vaddr: 0x400000, nr: 2, hole: true},
		{vaddr: 0x402000, nr: 2, flags: FlagPresent | FlagLazy},
		{vaddr: 0x600000, nr: 10, flags: FlagPresent | FlagLazy},
		{vaddr: 0x700000, nr: 1, flags: FlagLazy},
	}, 12)
	if err := os.Symlink("../pre", filepath.Join(dump, "parent")); err != nil {
		t.Fatal(err)
	}
	for _, run := range []struct {
		tr       Transport
		compress string
	}{{TransportTCP, ""}, {TransportQUIC, ""}, {TransportTCP, CompressZstd}, {TransportQUIC, CompressZstd}} {
		tr := run.tr
		t.Run(string(tr)+"+"+run.compress, func(t *testing.T) {
			// Lazy pages are only served with TLS.
			o := tlsFiles(t, t.TempDir())
			o.Transport, o.TLS, o.Compress = tr, tr == TransportTCP, run.compress
			ts := startServer(t, Config{ImagesDir: dump, Lazy: true}, o)
			c := ts.dial(t)
			buf := make([]byte, 16*PageSize)
			for _, q := range []struct {
				vaddr, nr, want uint64
				salt            uint64
			}{
				{0x602000, 4, 4, 12},
				{0x606000, 16, 4, 12}, // cut at the entry's end
				{0x402000, 3, 2, 12},
				{0x401000, 2, 2, 11}, // in the parent: its entry runs to 0x404000
			} {
				n, err := c.Get(42, q.vaddr, q.nr, buf)
				if err != nil || n != q.want {
					t.Fatalf("GET %#x+%d = %d, %v; want %d", q.vaddr, q.nr, n, err, q.want)
				}
				want := make([]byte, n*PageSize)
				fillPages(want, q.vaddr, q.salt)
				if !bytes.Equal(buf[:n*PageSize], want) {
					t.Fatalf("GET %#x: wrong data", q.vaddr)
				}
			}
			for _, q := range []struct {
				pid   int
				vaddr uint64
			}{{42, 0x700000}, {42, 0x800000}, {43, 0x400000}, {42, 0x400001}} {
				if _, err := c.Get(q.pid, q.vaddr, 1, buf); !errors.Is(err, ErrNoPages) {
					t.Fatalf("GET %d %#x: %v, want ErrNoPages", q.pid, q.vaddr, err)
				}
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			if got := metricValue(t, ts.m.pages.WithLabelValues("out")); got != 12 {
				t.Errorf("pages_total{out} = %v, want 12", got)
			}
			// A lazy server takes no uploads.
			c = ts.dial(t)
			s, err := c.OpenTask(context.Background(), TaskDst(42), true)
			if err == nil {
				s.AddPages(0x400000, 1, FlagPresent, bytes.NewReader(make([]byte, PageSize)))
				err = s.Close()
			}
			if cerr := c.Close(); err == nil {
				err = cerr
			}
			if err == nil {
				t.Fatal("upload to a lazy server accepted")
			}
			ts.log.waitLog(t, "only serves GET")
		})
	}
}

func TestTLSStranger(t *testing.T) {
	good := tlsFiles(t, t.TempDir())
	evil := tlsFiles(t, t.TempDir()) // another CA
	for _, tr := range []Transport{TransportQUIC, TransportTCP} {
		t.Run(string(tr), func(t *testing.T) {
			so := good
			so.Transport, so.TLS = tr, tr == TransportTCP
			ts := startServer(t, Config{}, so)
			// The stranger trusts our CA (so it would talk to us) but
			// holds a certificate from its own CA.
			co := TransportOptions{Transport: tr, TLS: so.TLS, CACert: good.CACert, Cert: evil.Cert, Key: evil.Key}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := Dial(ctx, ts.addr, co)
			if err == nil {
				// TLS 1.3: the client may finish before the server refuses.
				s, err2 := c.OpenTask(ctx, TaskDst(1), true)
				if err2 == nil {
					err2 = s.AddPages(0x1000, 1, FlagPresent, bytes.NewReader(make([]byte, PageSize)))
					if err2 == nil {
						err2 = s.Close()
					}
				}
				if cerr := c.Close(); err2 == nil {
					err2 = cerr
				}
				err = err2
			}
			if err == nil {
				t.Fatal("client with a foreign certificate was served")
			}
			ts.log.waitLog(t, "client certificate refused")
			if exists(ts.dir, "pagemap-1.img") {
				t.Fatal("stranger's pages were written")
			}
			// A client without a certificate at all is refused too.
			co = TransportOptions{Transport: tr, TLS: so.TLS}
			pool, _ := so.tlsConfig(false, "127.0.0.1")
			pool.Certificates = nil
			co.TLSConfig = pool
			if c, err := Dial(ctx, ts.addr, co); err == nil {
				if _, err := c.CheckParent(TaskDst(1)); err == nil {
					t.Fatal("client without certificate was served")
				}
				c.Close()
			}
			// The server's own CA's client still works.
			good.Transport = tr
			good.TLS = so.TLS
			c = ts.dial(t)
			if _, err := c.CheckParent(TaskDst(1)); err != nil {
				t.Fatal(err)
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestSeveralClients(t *testing.T) {
	ts := startServer(t, Config{}, TransportOptions{})
	var wg sync.WaitGroup
	const n = 8
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			c, err := Dial(context.Background(), ts.addr, TransportOptions{})
			if err != nil {
				errs <- err
				return
			}
			s, err := c.OpenTask(context.Background(), TaskDst(1000+i), true)
			if err != nil {
				errs <- err
				return
			}
			for _, r := range taskRanges {
				if r.flags&FlagPresent != 0 {
					err = s.AddPagesBytes(r.vaddr, r.flags, pagesOf(r, uint64(i)))
				} else {
					err = s.AddPages(r.vaddr, r.nr, r.flags, nil)
				}
				if err != nil {
					errs <- err
					return
				}
			}
			s.Close()
			errs <- c.Close()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		checkSame(t, ts.dir, fmt.Sprintf("pagemap-%d.img", 1000+i), taskRanges, uint64(i))
	}
}

func TestPortZero(t *testing.T) {
	ln, err := Listen("127.0.0.1:0", TransportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if ln.Port() == 0 || !strings.HasSuffix(ln.Addr().String(), fmt.Sprintf(":%d", ln.Port())) {
		t.Fatalf("port %d, addr %s", ln.Port(), ln.Addr())
	}
}

// rawPeer is a hand-written client for protocol abuse.
type rawPeer struct {
	t *testing.T
	c net.Conn
}

func dialRaw(t *testing.T, addr string) *rawPeer {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawPeer{t, c}
}

func (p *rawPeer) send(cmd uint32, nr, vaddr, dst uint64, data []byte) {
	var b [wire.HeaderSize]byte
	wire.Header{Cmd: cmd, NrPages: nr, Vaddr: vaddr, DstID: dst}.Marshal(b[:])
	p.c.Write(append(b[:], data...))
}

// closedByServer waits until the server hangs up.
func (p *rawPeer) closedByServer() {
	p.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, p.c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		p.t.Fatal("server kept a bad peer's connection open")
	}
}

func TestGarbagePeers(t *testing.T) {
	ts := startServer(t, Config{}, TransportOptions{})
	cases := []struct {
		name string
		do   func(p *rawPeer)
		log  string
	}{
		{"garbage", func(p *rawPeer) { p.c.Write(bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 100)) }, "unknown command"},
		{"short header", func(p *rawPeer) { p.c.Write([]byte{1, 0, 0}); p.c.(*net.TCPConn).CloseWrite() }, "truncated request header"},
		{"huge nr_pages", func(p *rawPeer) { p.send(wire.CmdAdd, 1<<60, 0x1000, TaskDst(5), nil) }, "beyond the user address space"},
		{"unaligned", func(p *rawPeer) { p.send(wire.CmdAdd, 1, 0x1001, TaskDst(5), nil) }, "not page aligned"},
		{"bad flags", func(p *rawPeer) { p.send(wire.MakeCmd(wire.CmdAddF, 5), 1, 0x1000, TaskDst(5), nil) }, "bad pagemap flags"},
		{"unknown dst type", func(p *rawPeer) { p.send(wire.CmdOpen2, 0, 0, 5<<8|9, nil) }, "unknown pagemap type"},
		{"pid out of range", func(p *rawPeer) { p.send(wire.CmdOpen2, 0, 0, TaskDst(0), nil) }, "out of range"},
		{"huge id", func(p *rawPeer) { p.send(wire.CmdOpen, 0, 0, ^uint64(0)&^0xff|1, nil) }, "out of range"},
		{"GET on a dump server", func(p *rawPeer) { p.send(wire.CmdGet, 1, 0x1000, 5, nil) }, "not started for lazy pages"},
		{"descending", func(p *rawPeer) {
			p.send(wire.CmdOpen, 0, 0, TaskDst(6), nil)
			p.send(wire.CmdAdd, 1, 0x5000, TaskDst(6), make([]byte, PageSize))
			p.send(wire.CmdAdd, 1, 0x4000, TaskDst(6), make([]byte, PageSize))
		}, "below previous end"},
		{"truncated pages", func(p *rawPeer) {
			p.send(wire.CmdOpen, 0, 0, TaskDst(7), nil)
			p.send(wire.CmdAdd, 4, 0x5000, TaskDst(7), make([]byte, PageSize+100))
			p.c.(*net.TCPConn).CloseWrite()
		}, "stream ended after 4196 of 16384 bytes"},
		{"no CLOSE", func(p *rawPeer) {
			p.send(wire.CmdOpen, 0, 0, TaskDst(8), nil)
			p.send(wire.CmdAdd, 1, 0x5000, TaskDst(8), make([]byte, PageSize))
			p.c.(*net.TCPConn).CloseWrite()
		}, "not flushed"},
	}
	// A well-behaved client keeps working while the others misbehave.
	good := ts.dial(t)
	gs, err := good.OpenTask(context.Background(), TaskDst(99), true)
	if err != nil {
		t.Fatal(err)
	}
	for i, tc := range cases {
		p := dialRaw(t, ts.addr)
		tc.do(p)
		p.closedByServer()
		ts.log.waitLog(t, tc.log)
		r := pageRange{vaddr: uint64(i+1) << 32, nr: uint64(i + 1), flags: FlagPresent}
		if err := gs.AddPagesBytes(r.vaddr, r.flags, pagesOf(r, 99)); err != nil {
			t.Fatalf("after %s: %v", tc.name, err)
		}
	}
	for _, pid := range []int{5, 6, 7, 8} {
		if exists(ts.dir, fmt.Sprintf("pagemap-%d.img", pid)) {
			t.Errorf("pagemap-%d.img of a refused session left behind", pid)
		}
	}
	// Two writers of one pagemap: the second is refused.
	p := dialRaw(t, ts.addr)
	p.send(wire.CmdOpen, 0, 0, TaskDst(99), nil)
	p.closedByServer()
	ts.log.waitLog(t, "is being written by")
	gs.Close()
	if err := good.Close(); err != nil {
		t.Fatal(err)
	}
	if got := metricValue(t, ts.m.errors.WithLabelValues(reasonRange)); got < 4 {
		t.Errorf("errors{bad_range} = %v", got)
	}
	for deadline := time.Now().Add(10 * time.Second); metricValue(t, ts.m.active) != 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("connections_active = %v after all closed", metricValue(t, ts.m.active))
		}
	}
}

func TestMaxConns(t *testing.T) {
	ts := startServer(t, Config{MaxConns: 1}, TransportOptions{})
	c := ts.dial(t)
	if _, err := c.CheckParent(TaskDst(1)); err != nil {
		t.Fatal(err)
	}
	p := dialRaw(t, ts.addr)
	p.closedByServer()
	ts.log.waitLog(t, "connections already served")
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestCRIUCloseHandshake checks the end of a session byte by byte as
// CRIU's disconnect_from_page_server sees it: CLOSE, then an int32 0.
func TestCRIUCloseHandshake(t *testing.T) {
	ts := startServer(t, Config{}, TransportOptions{})
	p := dialRaw(t, ts.addr)
	p.send(wire.CmdOpen2, 0, 0, TaskDst(3), nil)
	var b [4]byte
	if _, err := io.ReadFull(p.c, b[:1]); err != nil || b[0] != 0 {
		t.Fatalf("OPEN2 reply %v, %v", b[0], err)
	}
	p.send(wire.CmdAdd, 1, 0x1000, TaskDst(3), make([]byte, PageSize))
	p.send(wire.CmdForceClose, 0, 0, 0, nil)
	if _, err := io.ReadFull(p.c, b[:]); err != nil || b != [4]byte{} {
		t.Fatalf("CLOSE reply % x, %v", b, err)
	}
	p.c.Close()
	ts.log.waitLog(t, "session over")
	if !exists(ts.dir, "pagemap-3.img") {
		t.Fatal("pagemap-3.img missing after CLOSE")
	}
}

func TestDevCerts(t *testing.T) {
	dir := t.TempDir()
	o := tlsFiles(t, dir)
	if _, _, err := GenerateDevCA(dir); err == nil {
		t.Fatal("GenerateDevCA overwrote an existing CA")
	}
	for _, c := range []struct {
		o    TransportOptions
		want x509.ExtKeyUsage
	}{{o, x509.ExtKeyUsageServerAuth}, {clientOf(o), x509.ExtKeyUsageClientAuth}} {
		conf, err := c.o.tlsConfig(true, "")
		if err != nil {
			t.Fatal(err)
		}
		leaf := conf.Certificates[0]
		if len(leaf.Certificate) != 1 {
			t.Fatalf("chain of %d", len(leaf.Certificate))
		}
		x, err := x509.ParseCertificate(leaf.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		// One usage each: a client certificate must not serve, nor a
		// server's certificate be a client.
		if len(x.ExtKeyUsage) != 1 || x.ExtKeyUsage[0] != c.want {
			t.Errorf("%s: extended key usages %v, want only %v", c.o.Cert, x.ExtKeyUsage, c.want)
		}
		if st, err := os.Stat(c.o.Key); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("key mode %v, %v", st.Mode(), err)
		}
		if st, err := os.Stat(filepath.Dir(c.o.Key)); err != nil || st.Mode().Perm() != 0o700 {
			t.Fatalf("key dir mode %v, %v", st.Mode(), err)
		}
	}
}

// pipeSize is used by benchmarks; tested here so a kernel without
// F_SETPIPE_SZ privileges shows up as a clear failure.
func TestPipeSize(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if _, err := unix.FcntlInt(w.Fd(), unix.F_SETPIPE_SZ, spliceChunk); err != nil {
		t.Fatalf("F_SETPIPE_SZ %d: %v", spliceChunk, err)
	}
}

// TestLocalSinkSameAsServer: the dumper's two sinks make the same images.
func TestLocalSinkSameAsServer(t *testing.T) {
	ts := startServer(t, Config{}, TransportOptions{})
	c := ts.dial(t)
	s, err := c.OpenTask(context.Background(), TaskDst(77), false)
	if err != nil {
		t.Fatal(err)
	}
	sendTask(t, s, taskRanges, 4)
	s.Close()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	local := t.TempDir()
	d, err := images.Open(local, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	id := pagesIDOf(t, ts.dir, "pagemap-77.img")
	ls, err := NewLocalSink(d, "pagemap-77.img", id)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range taskRanges {
		var src io.Reader
		if r.flags&FlagPresent != 0 {
			src = bytes.NewReader(pagesOf(r, 4))
		}
		if err := ls.AddPages(r.vaddr, r.nr, r.flags, src); err != nil {
			t.Fatal(err)
		}
	}
	if err := ls.Close(); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, ts.dir, local, "pagemap-77.img")
	sameFiles(t, ts.dir, local, images.PagesImg(id))
}

func TestMetricsHandler(t *testing.T) {
	ts := startServer(t, Config{}, TransportOptions{})
	c := ts.dial(t)
	s, _ := c.OpenTask(context.Background(), TaskDst(5), false)
	sendTask(t, s, shmemRanges, 1)
	s.Close()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(MetricsHandler(ts.reg))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`godwit_page_server_bytes_total{direction="in"} 28672`,
		`godwit_page_server_pages_total{direction="in"} 7`,
		`godwit_page_server_connections_total{transport="tcp"} 1`,
		`godwit_page_server_requests_total{command="CLOSE"} 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s:\n%s", want, body)
		}
	}
}

// TestServeReturnsAcceptError: a listener that fails is reported, a
// cancelled context is not.
func TestServeReturnsAcceptError(t *testing.T) {
	ln, err := Listen("127.0.0.1:0", TransportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if err := Serve(context.Background(), ln, Config{ImagesDir: t.TempDir()}); err == nil {
		t.Fatal("Serve on a closed listener returned nil")
	}
}

// TestCritShows: CRIU's own crit decodes what the server wrote.
func TestCritShows(t *testing.T) {
	ts := startServer(t, Config{}, TransportOptions{})
	c := ts.dial(t)
	s, _ := c.OpenTask(context.Background(), TaskDst(300), true)
	sendTask(t, s, taskRanges, 1)
	s.Close()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("crit", "show", filepath.Join(ts.dir, "pagemap-300.img")).CombinedOutput()
	if err != nil {
		t.Fatalf("crit show: %v\n%s", err, out)
	}
	for _, want := range []string{`"magic": "PAGEMAP"`, `"pages_id": 65537`, `"vaddr": "0x7f0000000000"`, `"nr_pages": 300`, `"flags": "PE_LAZY | PE_PRESENT"`, `"nr_pages": 5,`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("crit output lacks %s:\n%s", want, out)
		}
	}
}

// With Once, Serve returns by itself after the first session, as CRIU's
// page server exits after one dump.
func TestOnce(t *testing.T) {
	ln, err := Listen("127.0.0.1:0", TransportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	srv, err := NewServer(Config{ImagesDir: dir, Once: true, Log: logging.New(io.Discard, 0)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	c, err := Dial(context.Background(), ln.Addr().String(), TransportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.OpenTask(context.Background(), TaskDst(1000), true)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range taskRanges {
		if r.flags&FlagPresent != 0 {
			err = s.AddPagesBytes(r.vaddr, r.flags, pagesOf(r, 0))
		} else {
			err = s.AddPages(r.vaddr, r.nr, r.flags, nil)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Serve still running after the session")
	}
	checkSame(t, dir, "pagemap-1000.img", taskRanges, 0)
}
