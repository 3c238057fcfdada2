package pageserver

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"godwit/internal/images"
	"godwit/internal/logging"
)

// syncBuf is a log sink tests can read while the server writes.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitLog waits until the log holds sub (the server logs asynchronously
// to the client seeing its connection closed).
func (s *syncBuf) waitLog(t *testing.T, sub string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(s.String(), sub) {
		if time.Now().After(deadline) {
			t.Fatalf("log lacks %q:\n%s", sub, s.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type testServer struct {
	addr string
	dir  string
	log  *syncBuf
	reg  *prometheus.Registry
	m    *Metrics
	opts TransportOptions
	ln   *Listener
	srv  *Server
}

// startServer runs a server on a free loopback port until the test ends.
func startServer(t testing.TB, cfg Config, o TransportOptions) *testServer {
	t.Helper()
	ts := &testServer{log: &syncBuf{}, reg: prometheus.NewRegistry(), opts: o}
	var err error
	if ts.m, err = NewMetrics(ts.reg); err != nil {
		t.Fatal(err)
	}
	if cfg.ImagesDir == "" && cfg.Dir == nil {
		cfg.ImagesDir = filepath.Join(t.TempDir(), "images")
	}
	ts.dir = cfg.ImagesDir
	cfg.Log = logging.New(ts.log, 4)
	cfg.Metrics = ts.m
	ln, err := Listen("127.0.0.1:0", o)
	if err != nil {
		t.Fatal(err)
	}
	ts.ln = ln
	ts.addr = ln.Addr().String()
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts.srv = srv
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln); srv.Close() }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("Serve did not return")
		}
	})
	return ts
}

func (ts *testServer) dial(t testing.TB) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, ts.addr, clientOf(ts.opts))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// pageRange is one request of a test dump.
type pageRange struct {
	vaddr, nr uint64
	flags     uint32
	hole      bool
}

// fillPages writes recognisable content: every 8 bytes hold the address
// they come from, xor a per-task salt.
func fillPages(b []byte, vaddr, salt uint64) {
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], (vaddr+uint64(i))^salt)
	}
}

func pagesOf(r pageRange, salt uint64) []byte {
	b := make([]byte, r.nr*PageSize)
	fillPages(b, r.vaddr, salt)
	return b
}

// writeLocal writes the same ranges with internal/images, as a local dump.
func writeLocal(t testing.TB, dir, name string, pagesID uint32, rs []pageRange, salt uint64) {
	t.Helper()
	d, err := images.Open(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	w, err := images.CreatePages(d, name, pagesID)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		f := r.flags
		if r.hole {
			f = images.PageInParent
		}
		if err := w.Add(r.vaddr, r.nr, f); err != nil {
			t.Fatal(err)
		}
		if f&images.PagePresent != 0 {
			if _, err := w.Write(pagesOf(r, salt)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

// sendTask sends ranges for dst through a sink.
func sendTask(t testing.TB, s *TaskSink, rs []pageRange, salt uint64) {
	t.Helper()
	for _, r := range rs {
		var err error
		switch {
		case r.hole:
			err = s.Hole(r.vaddr, r.nr)
		case r.flags&FlagPresent != 0:
			err = s.AddPages(r.vaddr, r.nr, r.flags, bytes.NewReader(pagesOf(r, salt)))
		default:
			err = s.AddPages(r.vaddr, r.nr, r.flags, nil)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// pagesIDOf reads the pages id a pagemap image names.
func pagesIDOf(t testing.TB, dir, name string) uint32 {
	t.Helper()
	d, err := images.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	r, err := images.OpenPages(d, name)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	return r.PagesID()
}

// sameFiles asserts byte equality of name in two directories.
func sameFiles(t testing.TB, a, b, name string) {
	t.Helper()
	x, err := os.ReadFile(filepath.Join(a, name))
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(filepath.Join(b, name))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(x, y) {
		t.Fatalf("%s differs: %d bytes from the page server, %d written locally", name, len(x), len(y))
	}
}

func exists(dir, name string) bool {
	_, err := os.Lstat(filepath.Join(dir, name))
	return !errors.Is(err, os.ErrNotExist)
}

// tlsFiles makes a CA and a server and a client certificate in dir and
// returns the server's options; clientOf gives the client's.
func tlsFiles(t testing.TB, dir string) TransportOptions {
	t.Helper()
	ca, cakey, err := GenerateDevCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	sd, _, err := GenerateHostCerts(ca, cakey, dir, "localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return TransportOptions{CACert: ca, Cert: filepath.Join(sd, CertFile), Key: filepath.Join(sd, KeyFile)}
}

// clientOf turns server options made by tlsFiles into the client's.
func clientOf(o TransportOptions) TransportOptions {
	if o.Cert == "" || o.TLSConfig != nil {
		return o
	}
	cd := filepath.Join(filepath.Dir(filepath.Dir(o.Cert)), string(RoleClient))
	o.Cert, o.Key = filepath.Join(cd, CertFile), filepath.Join(cd, KeyFile)
	return o
}

// metricValue reads a counter or gauge.
func metricValue(t testing.TB, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	switch {
	case d.Counter != nil:
		return d.Counter.GetValue()
	case d.Gauge != nil:
		return d.Gauge.GetValue()
	}
	t.Fatal("not a counter or gauge")
	return 0
}
