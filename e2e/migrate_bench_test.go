package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

var doneGapRE = regexp.MustCompile(`done ticks=(\d+) maxgap_us=(\d+)`)

// TestMigrateDowntime migrates a program that ticks every millisecond while
// rewriting its memory at 8 MiB/s, and reports the longest gap the program
// saw next to godwit's own downtime figure, for pre-copy (restored lazily
// from the agent's images, the default), pre-copy with every page filled
// before the resume (--no-lazy-restore, the reference) and stop-and-copy
// (--max-rounds 0), beside the loopback TLS bandwidth measured in the same
// run. GODWIT_BENCH_MIGRATE=1 runs 256 MiB and 1 GiB (long); otherwise
// 64 MiB. Figures are logged, never asserted; the program's memory is
// checked on the destination every time.
func TestMigrateDowntime(t *testing.T) {
	sizes := []int{64}
	if os.Getenv("GODWIT_BENCH_MIGRATE") != "" {
		sizes = []int{256, 1024}
	}
	if v := os.Getenv("GODWIT_BENCH_SIZES"); v != "" {
		sizes = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(f)
			if err != nil || n <= 0 {
				t.Fatalf("GODWIT_BENCH_SIZES=%q: want MiB,MiB,...", v)
			}
			sizes = append(sizes, n)
		}
	}
	bin := filepath.Join(t.TempDir(), "migrant")
	if out, err := exec.Command("gcc", "-O2", "-Wall", "-o", bin, "workloads/migrant.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	m := newMigLab(t)
	// GODWIT_BENCH_LOG=DIR keeps -v4 logs of the agent and of every send
	// there (timestamps per step: the profile of a switch-over).
	logDir := os.Getenv("GODWIT_BENCH_LOG")
	var agentArgs []string
	if logDir != "" {
		agentArgs = []string{"-v4", "--log-file", filepath.Join(logDir, "agent.log")}
	}
	m.startAgent(agentArgs...)
	floor := tlsFloor(t, m, 256<<20)
	t.Logf("floor: TLS over loopback %.0f MB/s (1 GiB in %v)", floor/1e6, time.Duration(float64(1<<30)/floor*float64(time.Second)).Round(time.Millisecond))
	for _, mib := range sizes {
		for _, c := range []struct {
			name string
			args []string
		}{{"precopy", nil}, {"precopy-full", []string{"--no-lazy-restore"}}, {"stop-and-copy", []string{"--max-rounds", "0"}}} {
			if only := os.Getenv("GODWIT_BENCH_CASES"); only != "" && !slices.Contains(strings.Split(only, ","), c.name) {
				continue
			}
			w := startOnHost(t, m.a, bin, "-m", strconv.Itoa(mib), "-r", "8192")
			for deadline := time.Now().Add(60 * time.Second); !strings.Contains(readFile(w.log), "ready"); time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("migrant not ready\n%s", w.tail())
				}
			}
			time.Sleep(300 * time.Millisecond)
			if err := syscall.Kill(w.rootPID, syscall.SIGUSR2); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
			args := c.args
			if logDir != "" {
				args = append(slices.Clone(args), "-v4", "--log-file", filepath.Join(logDir, fmt.Sprintf("send-%d-%s.log", mib, c.name)))
			}
			code, res, stderr := m.send(w, args...)
			if code != 0 {
				t.Fatalf("%d MiB %s: exit %d: %s", mib, c.name, code, stderr)
			}
			rp := m.moved(w)
			time.Sleep(300 * time.Millisecond)
			if err := syscall.Kill(rp, syscall.SIGUSR1); err != nil {
				t.Fatal(err)
			}
			var gap string
			for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				log := readFile(w.log)
				if mm := doneGapRE.FindStringSubmatch(log); mm != nil {
					gap = mm[2]
					break
				}
				if strings.Contains(log, "bad page") || time.Now().After(deadline) {
					t.Fatalf("%d MiB %s: memory not intact on the destination\n%s", mib, c.name, w.tail())
				}
			}
			us, _ := strconv.Atoi(gap)
			var sent uint64
			for _, r := range res.Rounds {
				sent += r.Bytes
			}
			t.Logf("%5d MiB %-13s program saw %8.1f ms frozen; godwit downtime %8.1f ms; total %8.1f ms; %d rounds, %d MiB sent; total/(size/floor) %.2f",
				mib, c.name, float64(us)/1e3, float64(res.Downtime)/1e6, float64(res.Total)/1e6, len(res.Rounds), sent>>20,
				res.Total.Seconds()/(float64(mib<<20)/floor))
			lazy := !slices.Contains(c.args, "--no-lazy-restore")
			if pc := res.Postcopy; lazy != (pc != nil) || (pc != nil && pc.Pages < uint64(mib)<<8) {
				t.Errorf("%d MiB %s: postcopy %+v: want every page filled after the resume exactly when restoring lazily", mib, c.name, pc)
			} else if pc != nil {
				t.Logf("      filled after the resume: %d pages in %v, %d faults (served p50 %v, p99 %v)", pc.Pages,
					pc.Duration.Round(time.Millisecond), pc.Faults, pc.FaultP50.Round(time.Microsecond), pc.FaultP99.Round(time.Microsecond))
			}
			if so := res.Switchover; so != nil {
				t.Logf("      switch-over: final dump %v, images %v, restore %v, resume %v", so.Dump.Round(time.Millisecond),
					so.Images.Round(time.Millisecond), so.Restore.Round(time.Millisecond), so.Resume.Round(time.Millisecond))
			}
		}
	}
}

// tlsFloor measures TLS 1.3 throughput over loopback with the lab's
// certificates (bytes per second): the bound no migration over TLS beats.
func tlsFloor(t *testing.T, m *migLab, size int) float64 {
	t.Helper()
	ca, err := os.ReadFile(filepath.Join(m.certs, "cacert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	load := func(host, role string) tls.Certificate {
		d := filepath.Join(m.certs, host, role)
		c, err := tls.LoadX509KeyPair(filepath.Join(d, "cert.pem"), filepath.Join(d, "key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{load(m.b.Addr(), "server")},
		ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13})
	if err != nil {
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
		_, err = io.Copy(io.Discard, c)
		got <- err
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{Certificates: []tls.Certificate{load(m.a.Addr(), "client")},
		RootCAs: pool, ServerName: m.b.Addr(), MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	start := time.Now()
	for n := 0; n < size; n += len(buf) {
		if _, err := c.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	if err := <-got; err != nil {
		t.Fatal(fmt.Errorf("floor: %w", err))
	}
	return float64(size) / time.Since(start).Seconds()
}
