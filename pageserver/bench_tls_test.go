package pageserver

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// BenchmarkTLS compares the page server over TCP+TLS (CRIU's --tls) with
// raw TLS over loopback TCP (Go's crypto/tls, the same TLS 1.3 config and
// cipher suite, the receiver discarding the data): the physical floor.
// Rounds alternate the two; figures are medians.
//
//	go test ./pageserver -run XXX -bench TLS -benchtime 5x
func BenchmarkTLS(b *testing.B) {
	total := benchBytes()
	shm, certs := benchDirs(b)
	o := clientOf(certOpts(certs))
	o.TLS = true
	var ps, raw []float64
	var suite uint16
	for i := 0; i < b.N; i++ {
		dir := filepath.Join(shm, fmt.Sprintf("tls-%d", i))
		ch := startChild(b, "ps-tls", dir, certs)
		d := sendPS(b, ch.addr(), o, total, "mem")
		ch.stop()
		os.RemoveAll(dir)
		ps = append(ps, float64(total)/d.Seconds()/1e6)

		ch = startChild(b, "raw-tls", dir, certs)
		var s uint16
		d, s = sendRawTLS(b, ch.addr(), o, total)
		suite = s
		ch.stop()
		raw = append(raw, float64(total)/d.Seconds()/1e6)
	}
	mps, mraw := median(ps), median(raw)
	b.Logf("cipher suite %s; page server %.0f MB/s, raw TLS %.0f MB/s (medians of %d)", tls.CipherSuiteName(suite), mps, mraw, b.N)
	b.ReportMetric(mps, "psTLS_MB/s")
	b.ReportMetric(mraw, "rawTLS_MB/s")
	b.ReportMetric(mps/mraw, "ratio")
	b.ReportMetric(0, "ns/op")
}

func median(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// benchDirs makes a tmpfs directory with a CA and 127.0.0.1's server and
// client certificates.
func benchDirs(b *testing.B) (shm, certs string) {
	base := "/dev/shm"
	if v := os.Getenv("PS_BENCH_TMPFS"); v != "" {
		base = v
	}
	shm, err := os.MkdirTemp(base, "godwit-psbench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(shm) })
	certs = filepath.Join(shm, "certs")
	ca, cakey, err := GenerateDevCA(mkdir(b, certs))
	if err != nil {
		b.Fatal(err)
	}
	if _, _, err := GenerateHostCerts(ca, cakey, certs, "127.0.0.1"); err != nil {
		b.Fatal(err)
	}
	return shm, certs
}

func mkdir(b *testing.B, d string) string {
	if err := os.MkdirAll(d, 0o700); err != nil {
		b.Fatal(err)
	}
	return d
}

// rawTLSChild accepts TLS connections with the page server's own server
// config and discards what arrives, acknowledging the end with one byte.
func rawTLSChild(ctx context.Context, o TransportOptions) error {
	tc, err := o.tlsConfig(true, "")
	if err != nil {
		return err
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tc)
	if err != nil {
		return err
	}
	fmt.Printf("PORT %d\n", ln.Addr().(*net.TCPAddr).Port)
	context.AfterFunc(ctx, func() { ln.Close() })
	buf := make([]byte, copyBufSize)
	for {
		c, err := ln.Accept()
		if err != nil {
			return nil
		}
		var n int64
		var hdr [8]byte
		if _, err := io.ReadFull(c, hdr[:]); err == nil {
			want := int64(0)
			for i := range hdr {
				want |= int64(hdr[i]) << (8 * i)
			}
			n, _ = io.CopyBuffer(io.Discard, io.LimitReader(c, want), buf)
			if n == want {
				c.Write([]byte{1})
			}
		}
		c.Close()
	}
}

// sendRawTLS sends total bytes (after an 8-byte length) over TLS.
func sendRawTLS(b *testing.B, addr string, o TransportOptions, total int64) (time.Duration, uint16) {
	tc, err := o.tlsConfig(false, "127.0.0.1")
	if err != nil {
		b.Fatal(err)
	}
	data := benchData()
	start := time.Now()
	c, err := tls.Dial("tcp", addr, tc)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	var hdr [8]byte
	for i := range hdr {
		hdr[i] = byte(total >> (8 * i))
	}
	if _, err := c.Write(hdr[:]); err != nil {
		b.Fatal(err)
	}
	for off := int64(0); off < total; off += benchChunk {
		if _, err := c.Write(data); err != nil {
			b.Fatal(err)
		}
	}
	var ack [1]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		b.Fatal(err)
	}
	return time.Since(start), c.ConnectionState().CipherSuite
}

// BenchmarkMemoryBound fills a QUIC page server with its maximum number of
// connections, most idle and some sending at once, and reports its peak
// RSS next to Config.MemoryBound (the buffers it promises) and to the
// peak RSS of the same server with one client (the baseline).
//
//	go test ./pageserver -run XXX -bench MemoryBound -benchtime 1x
func BenchmarkMemoryBound(b *testing.B) {
	shm, certs := benchDirs(b)
	o := clientOf(certOpts(certs))
	o.Transport = TransportQUIC
	const busy, streams = 8, 4
	per := int64(16 << 20)
	run := func(idle, busy int) int64 {
		dir := filepath.Join(shm, fmt.Sprintf("mem-%d-%d", idle, busy))
		ch := startChild(b, "ps-quic-many", dir, certs)
		defer os.RemoveAll(dir)
		defer ch.stop()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		var conns []*Client
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for range idle {
			c, err := Dial(ctx, ch.addr(), o)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := c.CheckParent(TaskDst(1)); err != nil {
				b.Fatal(err)
			}
			conns = append(conns, c)
		}
		var wg sync.WaitGroup
		errs := make(chan error, busy*streams)
		data := benchData()[:per]
		for i := range busy {
			c, err := Dial(ctx, ch.addr(), o)
			if err != nil {
				b.Fatal(err)
			}
			conns = append(conns, c)
			for j := range streams {
				wg.Add(1)
				go func() {
					defer wg.Done()
					s, err := c.OpenTask(ctx, TaskDst(1+i*streams+j), false)
					if err == nil {
						err = s.AddPagesBytes(0x7f0000000000, FlagPresent, data)
					}
					if err == nil {
						err = s.Close()
					}
					if err != nil {
						errs <- err
					}
				}()
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		return ch.peakRSS()
	}
	for i := 0; i < b.N; i++ {
		base := run(0, 1)
		full := run(benchMaxConns-busy, busy)
		bound := Config{MaxConns: benchMaxConns}.MemoryBound()
		b.Logf("%d connections (%d idle, %d busy x %d streams): peak RSS %d MiB; one client: %d MiB; buffer bound %d MiB",
			benchMaxConns, benchMaxConns-busy, busy, streams, full>>20, base>>20, bound>>20)
		b.ReportMetric(float64(full)/(1<<20), "peakRSS_MiB")
		b.ReportMetric(float64(base)/(1<<20), "oneClientRSS_MiB")
		b.ReportMetric(float64(bound)/(1<<20), "bound_MiB")
		b.ReportMetric(float64(full-base)/float64(bound), "growth/bound")
	}
	b.ReportMetric(0, "ns/op")
}

// benchMaxConns is the page server's default MaxConns.
const benchMaxConns = defaultMaxConns
