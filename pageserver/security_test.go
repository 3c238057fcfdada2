package pageserver

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"godwit/internal/images"
	"godwit/internal/logging"
	"godwit/pageserver/internal/wire"
)

// tryWrite sends one page for pid and closes, returning the first error
// (with TLS 1.3 a refused client learns it at its first exchange).
func tryWrite(addr string, o TransportOptions, pid int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, addr, o)
	if err != nil {
		return err
	}
	defer c.Close()
	s, err := c.OpenTask(ctx, TaskDst(pid), true)
	if err != nil {
		return err
	}
	if err := s.AddPagesBytes(0x1000, FlagPresent, make([]byte, PageSize)); err != nil {
		return err
	}
	if err := s.Close(); err != nil {
		return err
	}
	return c.Close()
}

// revoke writes a CRL, signed by the CA in dir, revoking certFile.
func revoke(t *testing.T, dir, certFile string) string {
	t.Helper()
	ca, key, err := loadCA(filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	victim, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number:                    big.NewInt(1),
		ThisUpdate:                time.Now().Add(-time.Hour),
		NextUpdate:                time.Now().Add(time.Hour),
		RevokedCertificateEntries: []x509.RevocationListEntry{{SerialNumber: victim.SerialNumber, RevocationTime: time.Now()}},
	}, ca, key)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "crl.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestWrongCertificates: peers the CA did not certify as allowed clients
// cannot write pages, over TCP+TLS and QUIC.
func TestWrongCertificates(t *testing.T) {
	dir := t.TempDir()
	so := tlsFiles(t, dir)
	co := clientOf(so)
	for _, tr := range []Transport{TransportTCP, TransportQUIC} {
		t.Run(string(tr), func(t *testing.T) {
			so, co := so, co
			so.Transport, co.Transport = tr, tr
			so.TLS, co.TLS = tr == TransportTCP, tr == TransportTCP
			cases := []struct {
				name   string
				server func(o *TransportOptions)
				client func(o *TransportOptions)
			}{
				{"server certificate as client", nil, func(o *TransportOptions) { o.Cert, o.Key = so.Cert, so.Key }},
				{"client not allowed", func(o *TransportOptions) { o.AllowedClients = []string{"other-host"} }, nil},
				{"revoked client", func(o *TransportOptions) { o.CACRL = revoke(t, dir, co.Cert) }, nil},
			}
			if tr == TransportTCP {
				cases = append(cases, struct {
					name   string
					server func(o *TransportOptions)
					client func(o *TransportOptions)
				}{"no TLS at all", nil, func(o *TransportOptions) { *o = TransportOptions{} }})
			}
			for i, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					s, cl := so, co
					if c.server != nil {
						c.server(&s)
					}
					if c.client != nil {
						c.client(&cl)
					}
					ts := startServer(t, Config{}, s)
					if err := tryWrite(ts.addr, cl, 10+i); err == nil {
						t.Fatal("peer was served")
					}
					// The server hangs up; give it time to not write.
					time.Sleep(50 * time.Millisecond)
					if exists(ts.dir, "pagemap-"+strconv.Itoa(10+i)+".img") {
						t.Fatal("refused peer's pages were written")
					}
				})
			}
			// The allowed identity is served.
			s := so
			s.AllowedClients = []string{"localhost"}
			ts := startServer(t, Config{}, s)
			if err := tryWrite(ts.addr, co, 1); err != nil {
				t.Fatalf("allowed client refused: %v", err)
			}
		})
	}
}

// TestTLSConfigHardened: a tls.Config given through the API is held to
// TLS 1.3 and client certificates.
func TestTLSConfigHardened(t *testing.T) {
	so := tlsFiles(t, t.TempDir())
	cert, err := tls.LoadX509KeyPair(so.Cert, so.Key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Listen("127.0.0.1:0", TransportOptions{TLS: true, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}); err == nil {
		t.Fatal("server TLS config without ClientCAs accepted")
	}
	base, err := so.tlsConfig(true, "")
	if err != nil {
		t.Fatal(err)
	}
	weak := base.Clone()
	weak.ClientAuth, weak.MinVersion, weak.VerifyPeerCertificate = tls.NoClientCert, tls.VersionTLS12, nil
	ts := startServer(t, Config{}, TransportOptions{TLS: true, TLSConfig: weak})
	cc, err := clientOf(so).tlsConfig(false, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	noCert := cc.Clone()
	noCert.Certificates = nil
	if err := tryWrite(ts.addr, TransportOptions{TLS: true, TLSConfig: noCert}, 1); err == nil {
		t.Error("client without a certificate served under a NoClientCert config")
	}
	old := cc.Clone()
	old.MinVersion, old.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	conn, err := tls.Dial("tcp", ts.addr, old)
	if err == nil {
		conn.Close()
		t.Error("TLS 1.2 handshake accepted")
	}
	if err := tryWrite(ts.addr, TransportOptions{TLS: true, TLSConfig: cc}, 2); err != nil {
		t.Fatalf("good client refused: %v", err)
	}
}

// TestUnauthenticatedNetwork: plain TCP on a non-loopback address warns,
// for lazy pages (which give out memory) too.
func TestUnauthenticatedNetwork(t *testing.T) {
	for _, lazy := range []bool{false, true} {
		ln, err := Listen("0.0.0.0:0", TransportOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var log syncBuf
		srv, err := NewServer(Config{ImagesDir: t.TempDir(), Lazy: lazy, Log: logging.New(&log, 4)})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- srv.Serve(ctx, ln) }()
		log.waitLog(t, "without authentication")
		cancel()
		<-done
		ln.Close()
		srv.Close()
	}
}

// TestLazyPlainTCP: --lazy-pages is served over plain TCP (CRIU's
// default), on loopback too with a warning that any local user can read
// the dumped memory, and over TLS without it.
func TestLazyPlainTCP(t *testing.T) {
	dump := t.TempDir()
	writeLocal(t, dump, "pagemap-42.img", 1, []pageRange{{vaddr: 0x400000, nr: 1, flags: FlagPresent | FlagLazy}}, 3)
	for _, tlsOn := range []bool{false, true} {
		var so TransportOptions
		if tlsOn {
			so = tlsFiles(t, t.TempDir())
			so.TLS = true
		}
		ts := startServer(t, Config{ImagesDir: dump, Lazy: true}, so)
		c := ts.dial(t)
		buf := make([]byte, PageSize)
		if n, err := c.Get(42, 0x400000, 1, buf); err != nil || n != 1 {
			t.Fatalf("GET (TLS %v): %d, %v", tlsOn, n, err)
		}
		c.Close()
		if warned := strings.Contains(ts.log.String(), "local users included"); warned == tlsOn {
			t.Errorf("TLS %v: warned about unauthenticated lazy pages: %v\n%s", tlsOn, warned, ts.log.String())
		}
	}
}

// TestNoReplaceFinished: a second session can't replace a pagemap another
// session finished, by OPEN or by ADD without OPEN, and pages numbers in
// use are skipped.
func TestNoReplaceFinished(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "images")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, "pages-65537.img")
	if err := os.WriteFile(stale, []byte("earlier dump"), 0o600); err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, Config{ImagesDir: dir}, TransportOptions{})
	if err := tryWrite(ts.addr, TransportOptions{}, 7); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(stale); string(b) != "earlier dump" {
		t.Fatal("an existing pages image was overwritten")
	}
	before, err := os.ReadFile(filepath.Join(dir, "pagemap-7.img"))
	if err != nil {
		t.Fatal(err)
	}
	if err := tryWrite(ts.addr, TransportOptions{}, 7); err == nil {
		t.Error("second OPEN of a finished pagemap accepted")
	}
	ts.log.waitLog(t, "never replaces images")
	p := dialRaw(t, ts.addr)
	p.send(wire.MakeCmd(wire.CmdAddF, wire.FlagPresent), 1, 0x1000, TaskDst(7), make([]byte, PageSize))
	p.closedByServer()
	after, err := os.ReadFile(filepath.Join(dir, "pagemap-7.img"))
	if err != nil || !bytes.Equal(before, after) {
		t.Fatalf("finished pagemap changed (%v)", err)
	}
	if got := pagesIDOf(t, dir, "pagemap-7.img"); got != 65538 {
		t.Errorf("pages id %d, want 65538 (65537 was taken)", got)
	}
}

// TestImageModes: images are 0600 in a 0700 directory, whatever the umask.
func TestImageModes(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	ts := startServer(t, Config{}, TransportOptions{})
	if err := tryWrite(ts.addr, TransportOptions{}, 3); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(ts.dir)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("images dir mode %v, %v", st.Mode(), err)
	}
	for _, n := range []string{"pagemap-3.img", "pages-65537.img"} {
		st, err := os.Stat(filepath.Join(ts.dir, n))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, %v", n, st.Mode(), err)
		}
	}
}

// TestIdlePeersDropped: idle, dribbling and stalled peers are dropped and
// the slots they held serve others.
func TestIdlePeersDropped(t *testing.T) {
	ts := startServer(t, Config{MaxConns: 2, IdleTimeout: 300 * time.Millisecond, ReadTimeout: 300 * time.Millisecond}, TransportOptions{})
	idle1, idle2 := dialRaw(t, ts.addr), dialRaw(t, ts.addr)
	idle1.closedByServer()
	idle2.closedByServer()
	ts.log.waitLog(t, "no complete request within")
	if err := tryWrite(ts.addr, TransportOptions{}, 1); err != nil {
		t.Fatalf("client after idle peers: %v", err)
	}
	// One header byte at a time, each within the timeout: still dropped.
	drip := dialRaw(t, ts.addr)
	go func() {
		var b [wire.HeaderSize]byte
		for i := range b {
			if _, err := drip.c.Write(b[i : i+1]); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	drip.closedByServer()
	// Announced pages that never come.
	stall := dialRaw(t, ts.addr)
	stall.send(wire.MakeCmd(wire.CmdAddF, wire.FlagPresent), 1, 0x1000, TaskDst(2), nil)
	stall.closedByServer()
	ts.log.waitLog(t, "page data slower than")
	if exists(ts.dir, "pagemap-2.img") {
		t.Error("stalled session's pagemap kept")
	}
}

// TestQUICKeepAlivePeerDropped: a QUIC peer that only sends keep-alives
// is closed by the server.
func TestQUICKeepAlivePeerDropped(t *testing.T) {
	so := tlsFiles(t, t.TempDir())
	so.Transport = TransportQUIC
	ts := startServer(t, Config{IdleTimeout: 300 * time.Millisecond}, so)
	co := clientOf(so)
	co.QUIC = &quic.Config{KeepAlivePeriod: 50 * time.Millisecond, MaxIdleTimeout: 30 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	qc, err := dialQUIC(ctx, ts.addr, co)
	if err != nil {
		t.Fatal(err)
	}
	defer qc.CloseWithError(0, "")
	select {
	case <-qc.Context().Done():
	case <-ctx.Done():
		t.Fatal("keep-alive-only QUIC peer still connected")
	}
	ts.log.waitLog(t, "idle for")
}

// TestLimits: per-peer connections, files, bytes and pages per ADD.
func TestLimits(t *testing.T) {
	t.Run("per peer", func(t *testing.T) {
		ts := startServer(t, Config{MaxConnsPerPeer: 1}, TransportOptions{})
		c := ts.dial(t)
		if _, err := c.CheckParent(TaskDst(1)); err != nil {
			t.Fatal(err)
		}
		dialRaw(t, ts.addr).closedByServer()
		ts.log.waitLog(t, "connections from 127.0.0.1 already served")
		c.Close()
	})
	t.Run("files", func(t *testing.T) {
		ts := startServer(t, Config{MaxFiles: 2}, TransportOptions{})
		if err := tryWrite(ts.addr, TransportOptions{}, 1); err != nil {
			t.Fatal(err)
		}
		if err := tryWrite(ts.addr, TransportOptions{}, 2); err == nil {
			t.Fatal("third and fourth image files created")
		}
		ts.log.waitLog(t, "--max-files")
	})
	t.Run("bytes", func(t *testing.T) {
		ts := startServer(t, Config{MaxBytes: 2 * PageSize}, TransportOptions{})
		p := dialRaw(t, ts.addr)
		p.send(wire.CmdOpen, 0, 0, TaskDst(4), nil)
		p.send(wire.MakeCmd(wire.CmdAddF, wire.FlagPresent), 3, 0x1000, TaskDst(4), make([]byte, 3*PageSize))
		p.closedByServer()
		ts.log.waitLog(t, "--max-bytes")
		if exists(ts.dir, "pagemap-4.img") {
			t.Error("refused pagemap kept")
		}
		// The refused session's charge was returned.
		if err := tryWrite(ts.addr, TransportOptions{}, 5); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("entries without data", func(t *testing.T) {
		// Lazy ADDs carry no pages but each writes a pagemap entry.
		ts := startServer(t, Config{MaxBytes: PageSize}, TransportOptions{})
		p := dialRaw(t, ts.addr)
		p.send(wire.CmdOpen, 0, 0, TaskDst(4), nil)
		var reqs []byte
		for i := range uint64(PageSize/pagemapEntryMax + 1) {
			var b [wire.HeaderSize]byte
			wire.Header{Cmd: wire.MakeCmd(wire.CmdAddF, wire.FlagLazy), NrPages: 1, Vaddr: 0x1000 + 2*i*PageSize, DstID: TaskDst(4)}.Marshal(b[:])
			reqs = append(reqs, b[:]...)
		}
		p.c.Write(reqs)
		p.closedByServer()
		ts.log.waitLog(t, "--max-bytes")
		if exists(ts.dir, "pagemap-4.img") {
			t.Error("refused pagemap kept")
		}
		if err := tryWrite(ts.addr, TransportOptions{}, 5); err == nil {
			t.Error("a page and its entry fit in --max-bytes of one page")
		}
	})
	t.Run("pages per ADD", func(t *testing.T) {
		ts := startServer(t, Config{}, TransportOptions{})
		p := dialRaw(t, ts.addr)
		p.send(wire.MakeCmd(wire.CmdAddF, wire.FlagPresent), maxAddPages+1, 0x1000, TaskDst(4), nil)
		p.closedByServer()
		ts.log.waitLog(t, "pages in one request")
	})
}

// fixtureStep is one line of testdata/criu-session.txt.
type fixtureStep struct {
	toServer bool
	b        []byte
}

func loadFixture(t *testing.T) []fixtureStep {
	t.Helper()
	f, err := os.Open("testdata/criu-session.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var steps []fixtureStep
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || l[0] == '#' {
			continue
		}
		dirn, rest, _ := strings.Cut(l, " ")
		var b []byte
		if f := strings.Fields(rest); len(f) == 3 && f[0] == "fill" {
			n, _ := strconv.Atoi(f[1])
			v, _ := strconv.ParseUint(f[2], 16, 8)
			b = bytes.Repeat([]byte{byte(v)}, n)
		} else if b, err = hex.DecodeString(strings.ReplaceAll(rest, " ", "")); err != nil {
			t.Fatalf("fixture line %q: %v", l, err)
		}
		steps = append(steps, fixtureStep{dirn == ">", b})
	}
	return steps
}

// TestCRIUFramingInTLS plays CRIU's side of the fixture to godwit's TLS
// page server, and godwit's client to a TLS peer that expects the
// fixture's bytes.
func TestCRIUFramingInTLS(t *testing.T) {
	steps := loadFixture(t)
	so := tlsFiles(t, t.TempDir())
	so.TLS = true
	co := clientOf(so)
	co.TLS = true
	cc, err := co.tlsConfig(false, "localhost")
	if err != nil {
		t.Fatal(err)
	}

	t.Run("CRIU to godwit", func(t *testing.T) {
		ts := startServer(t, Config{}, so)
		conn, err := tls.Dial("tcp", ts.addr, cc)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		for i, s := range steps {
			if s.toServer {
				if _, err := conn.Write(s.b); err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				continue
			}
			got := make([]byte, len(s.b))
			if _, err := io.ReadFull(conn, got); err != nil || !bytes.Equal(got, s.b) {
				t.Fatalf("step %d: reply % x, %v; want % x", i, got, err, s.b)
			}
		}
		conn.Close()
		ts.log.waitLog(t, "session over")
		id := pagesIDOf(t, ts.dir, "pagemap-42.img")
		got, err := os.ReadFile(filepath.Join(ts.dir, images.PagesImg(id)))
		if err != nil || !bytes.Equal(got, bytes.Repeat([]byte{0xab}, PageSize)) {
			t.Fatalf("pages image: %d bytes, %v", len(got), err)
		}
	})

	t.Run("godwit to CRIU", func(t *testing.T) {
		sc, err := so.tlsConfig(true, "")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := tls.Listen("tcp", "127.0.0.1:0", sc)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		fail := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				fail <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			for i, s := range steps {
				if !s.toServer {
					if _, err := c.Write(s.b); err != nil {
						fail <- err
						return
					}
					continue
				}
				got := make([]byte, len(s.b))
				if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, s.b) {
					fail <- &fixtureError{i, got, s.b, err}
					return
				}
			}
			fail <- nil
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := Dial(ctx, ln.Addr().String(), co)
		if err != nil {
			t.Fatal(err)
		}
		s, err := c.OpenTask(ctx, TaskDst(42), true)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.AddPagesBytes(0x7f0000001000, FlagPresent, bytes.Repeat([]byte{0xab}, PageSize)); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		if err := <-fail; err != nil {
			t.Fatal(err)
		}
	})
}

type fixtureError struct {
	step      int
	got, want []byte
	err       error
}

func (e *fixtureError) Error() string {
	return "step " + strconv.Itoa(e.step) + ": got " + hex.EncodeToString(e.got) + ", want " + hex.EncodeToString(e.want) + errString(e.err)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return " (" + err.Error() + ")"
}

// TestWrongCertificateCannotRead: a lazy-pages server gives no pages to a
// peer without an allowed certificate.
func TestWrongCertificateCannotRead(t *testing.T) {
	dump := filepath.Join(t.TempDir(), "dump")
	writeLocal(t, dump, "pagemap-42.img", 2, []pageRange{{vaddr: 0x400000, nr: 2, flags: FlagPresent | FlagLazy}}, 12)
	so := tlsFiles(t, t.TempDir())
	stranger := clientOf(tlsFiles(t, t.TempDir())) // another CA
	for _, tr := range []Transport{TransportTCP, TransportQUIC} {
		t.Run(string(tr), func(t *testing.T) {
			s := so
			s.Transport, s.TLS = tr, tr == TransportTCP
			ts := startServer(t, Config{ImagesDir: dump, Lazy: true}, s)
			peers := map[string]TransportOptions{"plain": {}}
			c := stranger
			c.Transport, c.TLS, c.CACert = tr, s.TLS, so.CACert
			peers["foreign CA"] = c
			if tr == TransportQUIC {
				delete(peers, "plain")
			}
			for name, o := range peers {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				cl, err := Dial(ctx, ts.addr, o)
				cancel()
				if err != nil {
					continue
				}
				buf := make([]byte, 2*PageSize)
				if n, err := cl.Get(42, 0x400000, 2, buf); err == nil && n > 0 {
					t.Errorf("%s peer read %d pages", name, n)
				}
				cl.Close()
			}
			// The real client reads them.
			cl := ts.dial(t)
			defer cl.Close()
			buf := make([]byte, 2*PageSize)
			if n, err := cl.Get(42, 0x400000, 2, buf); err != nil || n != 2 {
				t.Fatalf("GET = %d, %v", n, err)
			}
		})
	}
}

// TestClientSplitsLargeAdds: the client cuts ranges to what one ADD may
// carry, and the pages arrive intact.
func TestClientSplitsLargeAdds(t *testing.T) {
	old := maxAddPages
	maxAddPages = 4
	defer func() { maxAddPages = old }()
	ts := startServer(t, Config{}, TransportOptions{})
	c := ts.dial(t)
	s, err := c.OpenTask(context.Background(), TaskDst(9), true)
	if err != nil {
		t.Fatal(err)
	}
	rs := []pageRange{{vaddr: 0x400000, nr: 10, flags: FlagPresent}, {vaddr: 0x500000, nr: 9, flags: FlagPresent}}
	if err := s.AddPagesBytes(rs[0].vaddr, FlagPresent, pagesOf(rs[0], 3)); err != nil {
		t.Fatal(err)
	}
	if err := s.AddPages(rs[1].vaddr, rs[1].nr, FlagPresent, bytes.NewReader(pagesOf(rs[1], 3))); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	d, err := images.Open(ts.dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	r, err := images.OpenPages(d, "pagemap-9.img")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, pr := range rs {
		got := make([]byte, pr.nr*PageSize)
		if _, err := r.ReadAt(got, pr.vaddr); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, pagesOf(pr, 3)) {
			t.Errorf("pages at %#x differ", pr.vaddr)
		}
	}
}

// TestHandshakesDoNotLockOut: peers that open TCP connections and never
// finish a TLS handshake hold no connection slot: a certified client is
// served while they wait, and they are dropped after HandshakeTimeout.
func TestHandshakesDoNotLockOut(t *testing.T) {
	so := tlsFiles(t, t.TempDir())
	so.TLS = true
	ts := startServer(t, Config{MaxConns: 2, HandshakeTimeout: time.Minute}, so)
	// 64 silent sockets from 127.0.0.2-.9, 8 each.
	for i := range 64 {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%8))}}
		c, err := d.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	// The listen backlog is FIFO: the client below comes after them.
	if err := tryWrite(ts.addr, clientOf(so), 1); err != nil {
		t.Fatalf("certified client while handshakes are pending: %v", err)
	}
	if err := tryWrite(ts.addr, clientOf(so), 2); err != nil {
		t.Fatalf("second certified client: %v", err)
	}
	ts.log.waitLog(t, "TLS handshakes from 127.0.0.")

	short := startServer(t, Config{HandshakeTimeout: 200 * time.Millisecond}, so)
	dialRaw(t, short.addr).closedByServer()
	short.log.waitLog(t, "TLS handshake: ")
}

func TestPeerHostGroupsIPv6(t *testing.T) {
	for _, c := range []struct{ a, b string }{
		{"2001:db8:1:2::1", "2001:db8:1:2:ffff:1:2:3"},
		{"192.0.2.1", "::ffff:192.0.2.1"},
	} {
		a, b := peerHost(&net.TCPAddr{IP: net.ParseIP(c.a)}), peerHost(&net.UDPAddr{IP: net.ParseIP(c.b)})
		if a != b {
			t.Errorf("%s and %s are different peers (%s, %s)", c.a, c.b, a, b)
		}
	}
	for _, c := range []struct{ a, b string }{
		{"2001:db8:1:2::1", "2001:db8:1:3::1"},
		{"192.0.2.1", "192.0.2.2"},
	} {
		if peerHost(&net.TCPAddr{IP: net.ParseIP(c.a)}) == peerHost(&net.TCPAddr{IP: net.ParseIP(c.b)}) {
			t.Errorf("%s and %s are one peer", c.a, c.b)
		}
	}
}
