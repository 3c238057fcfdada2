package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
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

	"godwit/migrate"
)

var doneGapRE = regexp.MustCompile(`done ticks=(\d+) maxgap_us=(\d+)(?: movegap_us=(\d+))?`)

// benchList reads a comma-separated list of positive integers from env,
// or returns def.
func benchList(t *testing.T, env string, def []int) []int {
	v := os.Getenv(env)
	if v == "" {
		return def
	}
	var out []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			t.Fatalf("%s=%q: want a list like 256,1024", env, v)
		}
		out = append(out, n)
	}
	return out
}

// migrateCase is one way of migrating in the downtime table.
type migrateCase struct {
	name string
	args func(m *migLab) []string
}

var migrateCases = []migrateCase{
	{"precopy", func(*migLab) []string { return nil }},
	{"stop-and-copy", func(*migLab) []string { return []string{"--max-rounds", "0"} }},
	{"postcopy", func(m *migLab) []string {
		server := filepath.Join(m.certs, m.a.Addr(), "server")
		return []string{"--mode", "postcopy", "--tls-server-cert", filepath.Join(server, "cert.pem"), "--tls-server-key", filepath.Join(server, "key.pem")}
	}},
	// hybrid: pre-copy rounds, then the last dirty pages fetched lazily.
	{"hybrid", func(m *migLab) []string {
		server := filepath.Join(m.certs, m.a.Addr(), "server")
		return []string{"--mode", "hybrid", "--tls-server-cert", filepath.Join(server, "cert.pem"), "--tls-server-key", filepath.Join(server, "key.pem")}
	}},
	{"precopy-full", func(*migLab) []string { return []string{"--no-lazy-restore"} }},
	// precopy without the restore overlapped with the rounds (the
	// reference for it): restored lazily from the images after the freeze.
	{"precopy-nooverlap", func(*migLab) []string { return []string{"--no-overlap"} }},
}

// TestMigrateDowntime is issue 15's benchmark table: it migrates a
// program that ticks every millisecond while rewriting its memory at a
// given rate, and reports the gap the program saw across the move (and its
// longest of the whole run) next to
// godwit's own downtime figure, the total time against the memory size
// over the loopback TLS bandwidth measured in the same run (the floor),
// and the peak RSS of `migrate send` (its rusage) and of the agent
// (VmHWM, reset before each migration). Modes: pre-copy restored lazily
// from the agent's images (the default), stop-and-copy (--max-rounds 0,
// the reference), post-copy and hybrid; precopy-full (--no-lazy-restore) on
// request. GODWIT_BENCH_MIGRATE=1 runs 256 MiB, 1 GiB and 4 GiB at 1, 8
// and 64 MiB/s (long: run with -timeout 60m); otherwise 64 MiB at 8
// MiB/s. GODWIT_BENCH_SIZES (MiB), GODWIT_BENCH_RATES (MiB/s) and
// GODWIT_BENCH_CASES (names) narrow it; GODWIT_BENCH_LOG=DIR keeps -v4
// logs of the agent and of every send (the step timings of each
// switch-over). Figures are logged, never asserted; the program's memory
// is checked on the destination every time.
func TestMigrateDowntime(t *testing.T) {
	sizes, rates := []int{64}, []int{8}
	cases := "precopy,stop-and-copy,postcopy,hybrid"
	if os.Getenv("GODWIT_BENCH_MIGRATE") != "" {
		sizes, rates = []int{256, 1024, 4096}, []int{1, 8, 64}
	}
	sizes = benchList(t, "GODWIT_BENCH_SIZES", sizes)
	rates = benchList(t, "GODWIT_BENCH_RATES", rates)
	if v := os.Getenv("GODWIT_BENCH_CASES"); v != "" {
		cases = v
	}
	bin := filepath.Join(t.TempDir(), "migrant")
	if out, err := exec.Command("gcc", "-O2", "-Wall", "-o", bin, "workloads/migrant.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	m := newMigLab(t)
	// The agent's images on tmpfs when the memory allows (the program on
	// both hosts and its images, with room to spare): a disk's writeback
	// would throttle the rounds.
	if avail := memAvailable(t); avail > 3*(uint64(slices.Max(sizes))<<20)+(4<<30) {
		dir, err := os.MkdirTemp("/dev/shm", "godwit-bench-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		m.images = dir
		t.Logf("agent images on tmpfs (%s), %d MiB available", dir, avail>>20)
	} else {
		t.Logf("agent images on disk (%s): %d MiB available is too little for tmpfs", m.images, avail>>20)
	}
	logDir := os.Getenv("GODWIT_BENCH_LOG")
	client := filepath.Join(m.certs, m.b.Addr(), "client")
	agentArgs := []string{"--tls-client-cert", filepath.Join(client, "cert.pem"), "--tls-client-key", filepath.Join(client, "key.pem")}
	if logDir != "" {
		agentArgs = append(agentArgs, "-v4", "--log-file", filepath.Join(logDir, "agent.log"))
	}
	m.startAgent(agentArgs...)
	floor := tlsFloor(t, m, 256<<20)
	t.Logf("floor: TLS over loopback %.0f MB/s (1 GiB in %v)", floor/1e6, time.Duration(float64(1<<30)/floor*float64(time.Second)).Round(time.Millisecond))
	table := []string{fmt.Sprintf("%6s %5s %-13s %10s %8s %10s %9s %7s %6s %8s %9s %9s",
		"MiB", "MiB/s", "mode", "program ms", "max gap", "godwit ms", "total s", "x floor", "rounds", "sent MiB", "send RSS", "agent RSS")}
	for _, mib := range sizes {
		for _, rate := range rates {
			for _, c := range migrateCases {
				if !slices.Contains(strings.Split(cases, ","), c.name) {
					continue
				}
				row, ok := migrateOnce(t, m, bin, mib, rate, c, floor, logDir)
				table = append(table, row)
				if !ok {
					t.Log("downtime table so far:\n" + strings.Join(table, "\n"))
					t.FailNow()
				}
			}
		}
	}
	t.Log("downtime table (program: the gap the program saw across the move; max gap: its longest gap of the whole run; godwit: its downtime figure; x floor: total / (size / floor); RSS: peak MiB; *: the rounds did not converge, overrun reported):\n" +
		strings.Join(table, "\n"))
}

// migrateOnce runs one migration of the table and returns its row.
func migrateOnce(t *testing.T, m *migLab, bin string, mib, rate int, c migrateCase, floor float64, logDir string) (string, bool) {
	t.Helper()
	w := startOnHost(t, m.a, bin, "-m", strconv.Itoa(mib), "-r", strconv.Itoa(rate*1024))
	defer killAndForget(w.rootPID)
	for deadline := time.Now().Add(3 * time.Minute); !strings.Contains(readFile(w.log), "ready"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("migrant not ready\n%s", w.tail())
			return "", false
		}
	}
	time.Sleep(300 * time.Millisecond)
	if err := syscall.Kill(w.rootPID, syscall.SIGUSR2); err != nil {
		t.Error(err)
		return "", false
	}
	time.Sleep(100 * time.Millisecond)
	// The agent's peak RSS for this migration alone (clear_refs 5 resets
	// VmHWM).
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", m.agentP), []byte("5"), 0); err != nil {
		t.Error(err)
		return "", false
	}
	args := c.args(m)
	if logDir != "" {
		args = append(slices.Clone(args), "-v4", "--log-file", filepath.Join(logDir, fmt.Sprintf("send-%d-%d-%s.log", mib, rate, c.name)))
	}
	code, res, stderr, sendRSS := m.sendRusage(w, args...)
	if code != 0 {
		t.Errorf("%d MiB %d MiB/s %s: exit %d: %s", mib, rate, c.name, code, stderr)
		return "", false
	}
	agentRSS := vmHWM(t, m.agentP)
	rp := m.moved(w)
	time.Sleep(300 * time.Millisecond)
	if err := syscall.Kill(rp, syscall.SIGUSR1); err != nil {
		t.Error(err)
		return "", false
	}
	var gap, moveGap string
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
		log := readFile(w.log)
		if mm := doneGapRE.FindStringSubmatch(log); mm != nil {
			gap, moveGap = mm[2], mm[3]
			break
		}
		if strings.Contains(log, "bad page") || time.Now().After(deadline) {
			t.Errorf("%d MiB %d MiB/s %s: memory not intact on the destination\n%s", mib, rate, c.name, w.tail())
			return "", false
		}
	}
	us, _ := strconv.Atoi(gap)
	moveUS, err := strconv.Atoi(moveGap)
	if err != nil || moveUS == 0 {
		t.Errorf("%d MiB %d MiB/s %s: the program did not see itself move (%q)", mib, rate, c.name, moveGap)
		return "", false
	}
	var sent uint64
	for _, r := range res.Rounds {
		sent += r.Bytes
	}
	over, mark := "", ""
	if res.Overrun {
		over, mark = " (overrun)", "*"
	}
	ratio := res.Total.Seconds() / (float64(uint64(mib)<<20) / floor)
	t.Logf("%5d MiB %3d MiB/s %-13s program saw %8.1f ms frozen across the move (longest gap of the run %.1f ms); godwit downtime %8.1f ms%s; total %8.1f ms; %d rounds (pre-copy stop: %s), %d MiB sent; total/(size/floor) %.2f; peak RSS send %d MiB, agent %d MiB",
		mib, rate, c.name, float64(moveUS)/1e3, float64(us)/1e3, float64(res.Downtime)/1e6, over, float64(res.Total)/1e6, len(res.Rounds), res.PrecopyStop, sent>>20, ratio, sendRSS>>20, agentRSS>>20)
	if a := res.Auto; a != nil {
		t.Logf("      pages: %d stream(s), compress %s: link probe %.0f MB/s, zstd %.0f MB/s at ratio %.4f: compressed %v", res.Streams, res.Compress,
			a.Link/1e6, a.Zstd/1e6, a.Ratio, a.Compress)
	}
	for _, r := range res.Rounds {
		t.Logf("      round %d: %d MiB in %v (%.0f MB/s), dirty rate %.1f MB/s, frozen %v", r.N, r.Bytes>>20,
			r.Duration.Round(time.Millisecond), r.Bandwidth/1e6, r.DirtyRate/1e6, r.Frozen.Round(time.Microsecond))
	}
	// Restored onto the task the rounds prepared, nothing is left to
	// fill after the resume.
	prepared := res.Overlap != nil && res.Overlap.State == migrate.OverlapPrepared
	lazy := c.name != "precopy-full" && !prepared
	if ov := res.Overlap; ov != nil {
		t.Logf("      overlap: %s; %d pages written into the task before the freeze, %d at the switch-over", ov.State, ov.PreparedPages, ov.FinalPages)
	}
	if pc := res.Postcopy; prepared && c.name != "precopy-full" {
		if pc == nil || pc.Pages != 0 {
			t.Errorf("%d MiB %s: postcopy %+v after a restore onto the prepared task: want nothing left to fill", mib, c.name, pc)
		}
	} else if lazy != (pc != nil) || (pc != nil && pc.Pages < uint64(mib)<<8) {
		t.Errorf("%d MiB %s: postcopy %+v: want every page filled after the resume exactly when restoring lazily", mib, c.name, pc)
	} else if pc != nil {
		t.Logf("      filled after the resume: %d pages in %v, %d faults (served p50 %v, p99 %v)", pc.Pages,
			pc.Duration.Round(time.Millisecond), pc.Faults, pc.FaultP50.Round(time.Microsecond), pc.FaultP99.Round(time.Microsecond))
	}
	if so := res.Switchover; so != nil {
		t.Logf("      switch-over: final dump %v, images %v, restore %v, resume %v; VMA flags from %q", so.Dump.Round(time.Millisecond),
			so.Images.Round(time.Millisecond), so.Restore.Round(time.Millisecond), so.Resume.Round(time.Millisecond), so.VMAFlags)
	}
	return fmt.Sprintf("%6d %5d %-13s %10.1f %8.1f %10.1f %9.2f %7.2f %6d %8d %9d %9d", mib, rate, c.name+mark,
		float64(moveUS)/1e3, float64(us)/1e3, float64(res.Downtime)/1e6, res.Total.Seconds(), ratio, len(res.Rounds), sent>>20, sendRSS>>20, agentRSS>>20), true
}

// sendRusage is migLab.send that also returns the peak RSS of `migrate
// send` in bytes (its rusage: the process alone, not the program).
func (m *migLab) sendRusage(w *labWorkload, extra ...string) (int, *migrate.Result, string, int64) {
	m.t.Helper()
	args := append([]string{"migrate", "send", "--to", m.b.Addr(), "-t", strconv.Itoa(w.hostPID), "--json"}, m.tlsArgs(m.a, "client")...)
	cmd := m.a.Command(godwitBin, append(args, extra...)...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		m.t.Fatal(err)
	}
	var rss int64
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		rss = ru.Maxrss << 10 // KiB
	}
	var res migrate.Result
	if err := json.Unmarshal([]byte(stdout.String()), &res); err != nil {
		m.t.Fatalf("migrate send: exit %d, no JSON result (%v)\nstdout: %s\nstderr: %s", code, err, stdout.String(), stderr.String())
	}
	return code, &res, stderr.String(), rss
}

// memAvailable is MemAvailable of /proc/meminfo in bytes.
func memAvailable(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "MemAvailable:" {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no MemAvailable in /proc/meminfo")
	return 0
}

// vmHWM is the peak RSS of pid in bytes (VmHWM).
func vmHWM(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
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
