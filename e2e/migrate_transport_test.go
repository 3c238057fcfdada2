package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"godwit/internal/lab"
	"godwit/migrate"
	"godwit/pageserver"
)

// TestMigrateTransports measures the page streams of both transports,
// TLS over TCP and QUIC (both with mutual TLS), in one run: page-server
// sessions over loopback and over the lab's link, and the first
// (full-memory) pre-copy round of a real migration over the lab, each
// beside plain TCP over the same path (the physical floor: no TLS, no
// page-server framing). Figures are logged, never asserted: the default
// transport (migrate send --transport) is the one these show faster, and
// the default --streams (DefaultStreams) what they show on this machine.
// GODWIT_BENCH_MIGRATE=1 moves 512 MiB (otherwise 64 MiB).
func TestMigrateTransports(t *testing.T) {
	mib := 64
	if os.Getenv("GODWIT_BENCH_MIGRATE") != "" {
		mib = 512
	}
	bin := filepath.Join(t.TempDir(), "migrant")
	if out, err := exec.Command("gcc", "-O2", "-Wall", "-o", bin, "workloads/migrant.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	m := newMigLab(t)
	m.startAgent()
	total := int64(mib) << 20
	shm := t.TempDir()
	if d, err := os.MkdirTemp("/dev/shm", "godwit-transport-"); err == nil {
		shm = d
		t.Cleanup(func() { os.RemoveAll(d) })
	}
	mb := func(d time.Duration) float64 { return float64(total) / d.Seconds() / 1e6 }
	best := func(f func() time.Duration) time.Duration {
		var b time.Duration
		for i := 0; i < 3; i++ {
			if d := f(); b == 0 || d < b {
				b = d
			}
		}
		return b
	}
	// Loopback, in this process's namespace.
	loFloor := best(func() time.Duration { return rawTCP(t, nil, nil, "127.0.0.1", total) })
	t.Logf("loopback  plain TCP floor      %7.0f MB/s", mb(loFloor))
	for _, tr := range []string{"tls", "quic"} {
		for _, n := range streamCounts {
			d := best(func() time.Duration { return pageStream(t, m, nil, nil, "127.0.0.1", tr, n, total, shm) })
			t.Logf("loopback  page stream %-4s x%d  %7.0f MB/s  (%.2f of the floor)", tr, n, mb(d), loFloor.Seconds()/d.Seconds())
		}
	}
	// The lab's link: host A sends to host B.
	labFloor := best(func() time.Duration { return rawTCP(t, m.a, m.b, m.b.Addr(), total) })
	t.Logf("lab A->B  plain TCP floor      %7.0f MB/s", mb(labFloor))
	for _, tr := range []string{"tls", "quic"} {
		for _, n := range streamCounts {
			d := best(func() time.Duration { return pageStream(t, m, m.a, m.b, m.b.Addr(), tr, n, total, shm) })
			t.Logf("lab A->B  page stream %-4s x%d  %7.0f MB/s  (%.2f of the floor)", tr, n, mb(d), labFloor.Seconds()/d.Seconds())
		}
	}
	t.Logf("default --streams here: tls %d, quic %d", migrate.DefaultStreams("tls"), migrate.DefaultStreams("quic"))
	// A migration's first round: the program's memory read and streamed.
	for _, run := range []struct {
		tr string
		n  int
	}{{"tls", 1}, {"tls", 2}, {"quic", 1}, {"quic", 2}} {
		tr := run.tr
		w := startOnHost(t, m.a, bin, "-m", strconv.Itoa(mib), "-r", "64")
		for deadline := time.Now().Add(60 * time.Second); !strings.Contains(readFile(w.log), "ready"); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("migrant not ready\n%s", w.tail())
			}
		}
		code, res, stderr := m.send(w, "--transport", tr, "--streams", strconv.Itoa(run.n), "--compress", "none", "--max-rounds", "1", "--no-lazy-restore")
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", tr, code, stderr)
		}
		rp := m.moved(w)
		if err := syscall.Kill(rp, syscall.SIGUSR1); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(60 * time.Second); !doneGapRE.MatchString(readFile(w.log)); time.Sleep(20 * time.Millisecond) {
			if strings.Contains(readFile(w.log), "bad page") || time.Now().After(deadline) {
				t.Fatalf("%s: memory not intact on the destination\n%s", tr, w.tail())
			}
		}
		r := res.Rounds[0]
		if res.Streams != run.n {
			t.Errorf("%s: %d streams reported, %d asked", tr, res.Streams, run.n)
		}
		t.Logf("migration round 0 over %-4s x%d  %7.0f MB/s  (%d MiB in %v; %.2f of the lab floor); downtime %v",
			tr, run.n, r.Bandwidth/1e6, r.Bytes>>20, r.Duration.Round(time.Millisecond), r.Bandwidth/(float64(total)/labFloor.Seconds()), res.Downtime.Round(time.Millisecond))
	}
}

// inNet runs fn in host h's network namespace, or here when h is nil.
func inNet(h *lab.Host, fn func() error) error {
	if h == nil {
		return fn()
	}
	return h.InNet(fn)
}

// rawTCP sends total bytes over plain TCP from host from to a listener on
// host to at addr, the receiver discarding them; it returns the time from
// dial to the receiver's last byte.
func rawTCP(t *testing.T, from, to *lab.Host, addr string, total int64) time.Duration {
	t.Helper()
	var ln net.Listener
	if err := inNet(to, func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(addr, "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err
			return
		}
		defer c.Close()
		n, err := io.Copy(io.Discard, c)
		if err == nil && n != total {
			err = fmt.Errorf("received %d of %d bytes", n, total)
		}
		got <- err
	}()
	buf := make([]byte, 1<<20)
	start := time.Now()
	var c net.Conn
	if err := inNet(from, func() (err error) {
		c, err = net.Dial("tcp", ln.Addr().String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for sent := int64(0); sent < total; sent += int64(len(buf)) {
		if _, err := c.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	return time.Since(start)
}

// streamCounts are the page stream counts measured: one, and striped
// over 2 and 4 connections (DefaultStreams picks from these by cores).
var streamCounts = []int{1, 2, 4}

// pageStream sends total bytes of pages in one page-server session over
// transport tr, with the lab's certificates, from host from to a page
// server on host to (images on tmpfs under dir); it returns the time from
// dial to the server's answer to CLOSE (every page written).
func pageStream(t *testing.T, m *migLab, from, to *lab.Host, addr, tr string, streams int, total int64, dir string) time.Duration {
	t.Helper()
	certs := func(host *lab.Host, role string) pageserver.TransportOptions {
		d := filepath.Join(m.certs, host.Addr(), role)
		o := pageserver.TransportOptions{TLS: true, CACert: filepath.Join(m.certs, "cacert.pem"),
			Cert: filepath.Join(d, "cert.pem"), Key: filepath.Join(d, "key.pem"), ServerName: m.b.Addr()}
		if tr == "quic" {
			o.Transport = pageserver.TransportQUIC
		}
		return o
	}
	images, err := os.MkdirTemp(dir, "ps-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(images)
	var ln *pageserver.Listener
	if err := inNet(to, func() (err error) {
		ln, err = pageserver.Listen(net.JoinHostPort(addr, "0"), certs(m.b, "server"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- pageserver.Serve(ctx, ln, pageserver.Config{ImagesDir: images}) }()
	defer func() {
		cancel()
		ln.Close()
		<-served
	}()
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i*7 + i>>12)
	}
	port := strconv.Itoa(ln.Port())
	start := time.Now()
	var c *pageserver.Client
	if err := inNet(from, func() (err error) {
		o := certs(m.a, "client")
		o.Streams = streams
		c, err = pageserver.Dial(ctx, net.JoinHostPort(addr, port), o)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	s, err := c.OpenTask(ctx, pageserver.TaskDst(1), false)
	if err != nil {
		t.Fatal(err)
	}
	for off := int64(0); off < total; off += int64(len(data)) {
		if err := s.AddPagesBytes(0x7f0000000000+uint64(off), pageserver.FlagPresent, data); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	return time.Since(start)
}
