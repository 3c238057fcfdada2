package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"godwit/deploy"
	"godwit/internal/lab"
	"godwit/migrate"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// promServer is a Debian prometheus started for one test, on loopback, with
// its own configuration and storage; it is killed by PID at cleanup.
type promServer struct {
	url    string
	client *http.Client
	cmd    *exec.Cmd
	done   chan struct{}
	log    string
}

// scrapeInterval is short so that a test sees samples on both sides of a
// migration within seconds.
const scrapeInterval = time.Second

// startPrometheus runs prometheus scraping targets (host:port of /metrics)
// as job "godwit". With a lab host it runs in that host's network namespace
// (so it reaches the lab's addresses) and is queried through it.
func startPrometheus(t *testing.T, targets []string, host *lab.Host) *promServer {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatalf("prometheus (Debian package, installed by scripts/setup): %v", err)
	}
	dir := t.TempDir()
	quoted := make([]string, len(targets))
	for i, tg := range targets {
		quoted[i] = strconv.Quote(tg)
	}
	cfg := fmt.Sprintf("global:\n  scrape_interval: %s\n  evaluation_interval: %s\nscrape_configs:\n  - job_name: godwit\n    static_configs:\n      - targets: [%s]\n",
		scrapeInterval, scrapeInterval, strings.Join(quoted, ", "))
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &promServer{client: &http.Client{Timeout: 30 * time.Second}, done: make(chan struct{}), log: filepath.Join(dir, "prometheus.log")}
	// On this machine, a free port on loopback: taken, noted, released
	// just before prometheus binds it. A lab host's loopback is the test's.
	addr := "127.0.0.1:9090"
	if host == nil {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr = ln.Addr().String()
		ln.Close()
	}
	p.url = "http://" + addr
	args := []string{bin, "--config.file=" + cfgPath, "--storage.tsdb.path=" + filepath.Join(dir, "data"),
		"--web.listen-address=" + addr, "--log.level=warn"}
	if host != nil {
		args = append([]string{"nsenter", fmt.Sprintf("--net=/proc/%d/ns/net", host.InitPID()), "--"}, args...)
		p.client.Transport = &http.Transport{DialContext: func(ctx context.Context, network, address string) (net.Conn, error) {
			var c net.Conn
			err := host.InNet(func() (err error) {
				c, err = (&net.Dialer{}).DialContext(ctx, network, address)
				return err
			})
			return c, err
		}}
	}
	logf, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	p.cmd = exec.Command(args[0], args[1:]...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill() // by PID; nsenter execs, so this is prometheus
		<-p.done
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := p.client.Get(p.url + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case <-p.done:
			t.Fatalf("prometheus exited: %s", readFile(p.log))
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready after 60s: %v\n%s", err, readFile(p.log))
		}
	}
}

// sample is one element of an instant query's vector.
type sample struct {
	Metric map[string]string
	Value  float64
}

// query runs an instant query and returns its vector (a scalar is one
// sample without labels).
func (p *promServer) query(t *testing.T, expr string) []sample {
	t.Helper()
	resp, err := p.client.Get(p.url + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("query %s: %v: %s", expr, err, body)
	}
	if r.Status != "success" {
		t.Fatalf("query %s: %s", expr, r.Error)
	}
	parse := func(v []any) float64 {
		s, _ := v[1].(string)
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			t.Fatalf("query %s: value %v: %v", expr, v, err)
		}
		return f
	}
	switch r.Data.ResultType {
	case "vector":
		var vs []struct {
			Metric map[string]string `json:"metric"`
			Value  []any             `json:"value"`
		}
		if err := json.Unmarshal(r.Data.Result, &vs); err != nil {
			t.Fatal(err)
		}
		out := make([]sample, len(vs))
		for i, v := range vs {
			out[i] = sample{v.Metric, parse(v.Value)}
		}
		return out
	case "scalar":
		var v []any
		if err := json.Unmarshal(r.Data.Result, &v); err != nil {
			t.Fatal(err)
		}
		return []sample{{nil, parse(v)}}
	}
	t.Fatalf("query %s: result type %s", expr, r.Data.ResultType)
	return nil
}

// waitFor polls expr until it has a sample for which ok holds.
func (p *promServer) waitFor(t *testing.T, expr string, ok func(float64) bool, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		for _, s := range p.query(t, expr) {
			if ok(s.Value) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no wanted value after %v (last %v)\n%s", expr, limit, p.query(t, expr), readFile(p.log))
		}
		time.Sleep(scrapeInterval / 2)
	}
}

// checkPanels runs every dashboard query and checks that each returns at
// least one finite value, except the queries of panels in nanOK, which may
// be NaN (a quantile of no observations) but must return a sample.
func (p *promServer) checkPanels(t *testing.T, nanOK map[string]bool) {
	t.Helper()
	qs, err := deploy.DashboardQueries("1m")
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qs {
		got := p.query(t, q.Expr)
		finite := false
		for _, s := range got {
			if !math.IsNaN(s.Value) && !math.IsInf(s.Value, 0) {
				finite = true
			}
		}
		switch {
		case len(got) == 0:
			t.Errorf("panel %q: no data for %s", q.Panel, q.Expr)
		case !finite && !nanOK[q.Panel]:
			t.Errorf("panel %q: only NaN for %s: %v", q.Panel, q.Expr, got)
		}
	}
}

// Every dashboard panel's query, on a real Prometheus scraping the metrics
// of migrate.NewMetrics after one hybrid migration with post-copy faults,
// returns data and the figures the migration had.
func TestPrometheusDashboardMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := migrate.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	p := startPrometheus(t, []string{ln.Addr().String()}, nil)
	// A sample from before the migration, so that rate() sees it happen.
	p.waitFor(t, `godwit_migrations_in_flight`, func(v float64) bool { return v == 0 }, 60*time.Second)
	done := m.Started()
	p.waitFor(t, `godwit_migrations_in_flight`, func(v float64) bool { return v == 1 }, 60*time.Second)
	m.ObserveFault(40 * time.Microsecond)
	m.ObserveFault(60 * time.Microsecond)
	done(migrate.Result{
		Mode: migrate.ModeHybrid, Total: 3 * time.Second, Downtime: 42 * time.Millisecond,
		Rounds: []migrate.Round{
			{N: 0, Bytes: 256 << 20, Duration: 2 * time.Second, DirtyRate: 8 << 20, Bandwidth: 128 << 20},
			{N: 1, Bytes: 16 << 20, Duration: 200 * time.Millisecond, DirtyRate: 8 << 20, Bandwidth: 80 << 20},
		},
		Postcopy: &migrate.Postcopy{Pages: 2, Faults: 2, Duration: 10 * time.Millisecond},
	})
	p.waitFor(t, `sum(godwit_migrations_total{result="ok"})`, func(v float64) bool { return v == 1 }, 60*time.Second)
	p.waitFor(t, `godwit_migrations_in_flight`, func(v float64) bool { return v == 0 }, 60*time.Second)
	p.checkPanels(t, nil)

	// The figures are the migration's: the downtime's bucket holds it.
	if got := p.query(t, `sum(godwit_migration_downtime_seconds_sum{mode="hybrid"})`); len(got) != 1 || got[0].Value != 0.042 {
		t.Errorf("downtime sum %v, want 0.042", got)
	}
	if got := p.query(t, `sum(godwit_migration_rounds_sum)`); len(got) != 1 || got[0].Value != 2 {
		t.Errorf("rounds %v, want 2", got)
	}
	if got := p.query(t, `sum(godwit_migration_postcopy_fault_latency_seconds_count)`); len(got) != 1 || got[0].Value != 2 {
		t.Errorf("faults %v, want 2", got)
	}
}

// memtickerBin compiles e2e/workloads/memticker.c.
func memtickerBin(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "memticker")
	if out, err := exec.Command("gcc", "-O2", "-Wall", "-o", bin, "workloads/memticker.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc memticker: %v\n%s", err, out)
	}
	return bin
}

// logLine waits for a line of file p, past offset off, that matches re.
func logLine(t *testing.T, p string, re *regexp.Regexp, off int, limit time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		if m := matchFrom(p, re, off); m != nil {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("no line matching %q in %s after byte %d in %v:\n%s", re, p, off, limit, readFile(p))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// logSize is the length of the log at p now (0 if absent): the offset a
// later logLine searches from. Not len(readFile(p)): readFile keeps only
// the tail, so past its cap that offset would stand still while the log
// grows, and nothing written after it would ever be found.
func logSize(p string) int {
	st, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return int(st.Size())
}

// matchFrom returns the first line of the log at p from byte off on that
// matches re (the whole file is read, not readFile's tail).
func matchFrom(p string, re *regexp.Regexp, off int) []string {
	b, _ := os.ReadFile(p)
	if len(b) < off {
		return nil
	}
	for _, line := range strings.Split(string(b[off:]), "\n") {
		if m := re.FindStringSubmatch(line); m != nil {
			return m
		}
	}
	return nil
}

// One migration between two lab hosts, with a real Prometheus scraping the
// agent: every dashboard panel's query returns data, the metrics say what
// happened, and `migrate send --json` agrees with the program's own view.
func TestPrometheusAgentMigration(t *testing.T) {
	m := newMigLab(t)
	const metricsPort = "9741"
	client := filepath.Join(m.certs, m.b.Addr(), "client")
	m.startAgent("--metrics-address", m.b.Addr()+":"+metricsPort,
		"--tls-client-cert", filepath.Join(client, "cert.pem"), "--tls-client-key", filepath.Join(client, "key.pem"))
	p := startPrometheus(t, []string{m.b.Addr() + ":" + metricsPort}, m.b)
	// Samples from before the migration, so that rate() sees it.
	p.waitFor(t, `godwit_migrations_in_flight`, func(v float64) bool { return v == 0 }, 60*time.Second)
	p.waitFor(t, `count_over_time(godwit_migrations_in_flight[1m])`, func(v float64) bool { return v >= 2 }, 60*time.Second)

	const mib = 64
	w := startOnHost(t, m.a, memtickerBin(t), "-m", strconv.Itoa(mib), "-w", "8")
	logLine(t, w.log, regexp.MustCompile(`^ready pid=`), 0, 60*time.Second)
	time.Sleep(500 * time.Millisecond)
	if err := syscall.Kill(w.rootPID, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	logLine(t, w.log, regexp.MustCompile(`^reset `), 0, 10*time.Second)

	code, res, stderr := m.send(w)
	if code != 0 {
		t.Fatalf("migrate send: exit %d: %s", code, stderr)
	}
	rootB := m.moved(w)
	defer killAndForget(rootB)
	off := logSize(w.log)
	if err := syscall.Kill(rootB, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	check := memtickerCheck(t, w.log, rootB, off, 120*time.Second)
	if check[1] != "ok" {
		t.Fatalf("the migrated program found its memory wrong: %s", check[0])
	}
	gapUS, _ := strconv.Atoi(regexp.MustCompile(`maxgap_us=(\d+)`).FindStringSubmatch(check[0])[1])
	gap := time.Duration(gapUS) * time.Microsecond

	// --json against what happened.
	if res.PID != w.hostPID || res.Mode != migrate.ModePrecopy || res.Transport != "tls" || res.FailedPhase != "" || res.Error != "" {
		t.Errorf("result: pid %d mode %s transport %s failed %q %q; want pid %d, precopy over tls", res.PID, res.Mode, res.Transport, res.FailedPhase, res.Error, w.hostPID)
	}
	if len(res.Rounds) < 1 || res.Rounds[0].Bytes < mib<<20 {
		t.Errorf("first round did not carry the program's %d MiB: %+v", mib, res.Rounds)
	}
	if res.Downtime <= 0 || res.Downtime >= res.Total {
		t.Errorf("downtime %v, total %v", res.Downtime, res.Total)
	}
	// The program was stopped at least about as long as godwit says (its
	// ticks may stall longer on a loaded machine, never much shorter).
	if gap < res.Downtime/2 {
		t.Errorf("the program's longest gap %v is far below godwit's downtime %v", gap, res.Downtime)
	}
	t.Logf("downtime: program %v, godwit %v; %d rounds", gap, res.Downtime, len(res.Rounds))

	// Prometheus has the migration: wait for a scrape after it.
	p.waitFor(t, `sum(godwit_migrations_total{result="ok",mode="precopy"})`, func(v float64) bool { return v == 1 }, 60*time.Second)
	// No post-copy yet: its panels have no observations (a sample, but
	// NaN) until the post-copy migration below.
	p.checkPanels(t, map[string]bool{"Post-copy fault latency p50 / p99": true, "Post-copy faults": true})
	one := func(expr string) float64 {
		t.Helper()
		got := p.query(t, expr)
		if len(got) != 1 {
			t.Fatalf("%s: %v, want one sample", expr, got)
		}
		return got[0].Value
	}
	if v := one(`sum(godwit_migration_downtime_seconds_count{mode="precopy"})`); v != 1 {
		t.Errorf("downtime observations %v, want 1", v)
	}
	if v := one(`sum(godwit_migration_rounds_sum{mode="precopy"})`); int(v) != len(res.Rounds) {
		t.Errorf("rounds on the agent %v, migrate send reported %d", v, len(res.Rounds))
	}
	// The agent counts the pages its images hold: zero and duplicate
	// pages too, which crossed as records (Round.Bytes leaves them out).
	var sent uint64
	for _, r := range res.Rounds {
		sent += r.Pages * 4096
	}
	if v := one(`sum(godwit_migration_bytes_total{stage="rounds"})`); v != float64(sent) {
		t.Errorf("bytes on the agent %v, migrate send reported %d", v, sent)
	}
	if v := one(`sum(godwit_migration_failures_total)`); v != 0 {
		t.Errorf("failures %v after a good migration", v)
	}
	if v := one(`sum(godwit_migrations_in_flight)`); v != 0 {
		t.Errorf("in flight %v after the migration", v)
	}

	// A post-copy migration: its faults fill the post-copy panels.
	w2 := startOnHost(t, m.a, memtickerBin(t), "-m", "16", "-w", "8")
	logLine(t, w2.log, regexp.MustCompile(`^ready pid=`), 0, 60*time.Second)
	server := filepath.Join(m.certs, m.a.Addr(), "server")
	code, res, stderr = m.send(w2, "--mode", "postcopy", "--tls-server-cert", filepath.Join(server, "cert.pem"), "--tls-server-key", filepath.Join(server, "key.pem"))
	if code != 0 {
		t.Fatalf("migrate send --mode postcopy: exit %d: %s", code, stderr)
	}
	rootB2 := m.moved(w2)
	defer killAndForget(rootB2)
	off = logSize(w2.log)
	if err := syscall.Kill(rootB2, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	if check := memtickerCheck(t, w2.log, rootB2, off, 120*time.Second); check[1] != "ok" {
		t.Fatalf("the program moved in post-copy found its memory wrong: %s", check[0])
	}
	pc := res.Postcopy
	if pc == nil || pc.Faults == 0 {
		t.Fatalf("post-copy result %+v: want faults served", pc)
	}
	p.waitFor(t, `sum(godwit_migrations_total{result="ok",mode="postcopy"})`, func(v float64) bool { return v == 1 }, 60*time.Second)
	p.waitFor(t, `sum(rate(godwit_migration_postcopy_fault_latency_seconds_count[1m]))`, func(v float64) bool { return v > 0 }, 60*time.Second)
	p.checkPanels(t, nil)
	if v := one(`sum(godwit_migration_postcopy_faults_sum)`); v != float64(pc.Faults) {
		t.Errorf("post-copy faults on the agent %v, migrate send reported %d", v, pc.Faults)
	}
}
