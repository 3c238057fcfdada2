// Package demo is the README's demo: it makes a two-host lab on this
// machine, starts the godwit agent on host B and, on host A, a program that
// keeps rewriting its memory and measures its own downtime; it migrates the
// program to B, prints the downtime the program observed next to godwit's,
// has the program check its memory on B, and removes everything.
package demo

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"godwit/internal/lab"
	"godwit/migrate"
)

// Options are the demo's knobs.
type Options struct {
	Godwit  string       // the godwit binary
	Program string       // the memticker binary (e2e/workloads/memticker.c)
	MiB     int          // the program's memory
	Rate    float64      // MB/s it rewrites
	Mode    migrate.Mode // --mode of migrate send
	Out     io.Writer    // what the demo says
}

// Ports of the agent on host B.
const (
	agentPort   = migrate.DefaultPort
	metricsPort = 9741
	// programPID is the PID the program gets on host A; host B has it free
	// (only its init, the agent and its threads have low PIDs there).
	programPID = 5000
)

// Run runs the demo. It leaves nothing behind, whatever happens.
func Run(o Options) (err error) {
	// The hosts run the binaries by path from their own mount namespaces
	// and working directories.
	for _, p := range []*string{&o.Godwit, &o.Program} {
		if *p, err = filepath.Abs(*p); err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		if _, err := os.Stat(*p); err != nil {
			return fmt.Errorf("demo: %w", err)
		}
	}
	work, err := os.MkdirTemp("", "godwit-demo-")
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer os.RemoveAll(work)
	say := func(format string, args ...any) { fmt.Fprintf(o.Out, "+ "+format+"\n", args...) }

	say("making a lab of two hosts (own network, PID and mount namespaces, on a bridge)")
	l, err := lab.New(lab.Options{Names: []string{"host-a", "host-b"}}, 2)
	if err != nil {
		return err
	}
	// Closing the lab kills every process on its hosts (the agent, the
	// program wherever it is); then the nsenter commands that ran them
	// are reaped.
	var reap []*exec.Cmd
	defer func() {
		if cerr := l.Close(); cerr != nil && err == nil {
			err = cerr
		}
		for _, c := range reap {
			_ = c.Wait()
		}
	}()
	a, b := l.Host(0), l.Host(1)
	say("host-a is %s, host-b is %s", a.Addr(), b.Addr())

	certs := filepath.Join(work, "certs")
	if out, err := exec.Command(o.Godwit, "certs", certs, a.Addr(), b.Addr()).CombinedOutput(); err != nil {
		return fmt.Errorf("demo: godwit certs: %v: %s", err, out)
	}
	ca := filepath.Join(certs, "cacert.pem")

	say("starting godwit agent on host-b (%s:%d, metrics on :%d)", b.Addr(), agentPort, metricsPort)
	agentLog := filepath.Join(work, "agent.log")
	agent, err := start(b.Command(o.Godwit, "agent", "--address", b.Addr(), "--port", strconv.Itoa(agentPort),
		"--images-dir", filepath.Join(work, "agent-images"),
		"--tls-cacert", ca, "--tls-cert", filepath.Join(certs, b.Addr(), "server", "cert.pem"),
		"--tls-key", filepath.Join(certs, b.Addr(), "server", "key.pem"),
		// Post-copy and hybrid: the agent fetches pages from host-a's page
		// server as a client of it.
		"--tls-client-cert", filepath.Join(certs, b.Addr(), "client", "cert.pem"),
		"--tls-client-key", filepath.Join(certs, b.Addr(), "client", "key.pem"),
		"--metrics-address", fmt.Sprintf("%s:%d", b.Addr(), metricsPort)), agentLog)
	if err != nil {
		return fmt.Errorf("demo: agent: %w", err)
	}
	reap = append(reap, agent)
	metricsURL := fmt.Sprintf("http://%s:%d", b.Addr(), metricsPort)
	if err := waitHealthy(b, metricsURL+"/healthz", agentLog); err != nil {
		return err
	}

	say("starting on host-a a program with %d MiB that rewrites %g MB/s and times its 1 ms ticks", o.MiB, o.Rate)
	progLog := filepath.Join(work, "memticker.log")
	// The program gets PID 5000 on host-a (ns_last_pid), its own session
	// and only /dev/null and its log open; its parent shell exits, so the
	// host's init adopts it as a daemon's would be.
	launcher, err := start(a.Command("sh", "-c",
		`echo $(($0 - 1)) >/proc/sys/kernel/ns_last_pid || exit 1; setsid "$@" </dev/null >/dev/null 2>&1 &`,
		strconv.Itoa(programPID), o.Program, "-m", strconv.Itoa(o.MiB), "-w", fmt.Sprint(o.Rate), progLog), "")
	if err != nil {
		return fmt.Errorf("demo: program: %w", err)
	}
	if err := launcher.Wait(); err != nil {
		return fmt.Errorf("demo: launching the program: %w", err)
	}
	ready, err := waitLine(progLog, regexp.MustCompile(`^ready pid=(\d+)`), 0, 60*time.Second)
	if err != nil {
		return err
	}
	pid, _ := strconv.Atoi(ready[1])
	rootA, err := a.RootPID(pid)
	if err != nil {
		return fmt.Errorf("demo: the program is not on host-a: %w", err)
	}
	time.Sleep(time.Second) // let it tick
	// Restart its longest-gap measure: what it reports next is the migration's.
	if err := syscall.Kill(rootA, syscall.SIGUSR2); err != nil {
		return fmt.Errorf("demo: signal the program: %w", err)
	}
	if _, err := waitLine(progLog, regexp.MustCompile(`^reset `), 0, 10*time.Second); err != nil {
		return err
	}

	say("godwit migrate send --to %s:%d -t %d --mode %s   (on host-a)", b.Addr(), agentPort, pid, o.Mode)
	send := a.Command(o.Godwit, "migrate", "send", "--to", fmt.Sprintf("%s:%d", b.Addr(), agentPort),
		"-t", strconv.Itoa(pid), "--mode", string(o.Mode), "--json",
		"--tls-cacert", ca, "--tls-cert", filepath.Join(certs, a.Addr(), "client", "cert.pem"),
		"--tls-key", filepath.Join(certs, a.Addr(), "client", "key.pem"),
		// Post-copy and hybrid: host-a serves the pages left behind.
		"--tls-server-cert", filepath.Join(certs, a.Addr(), "server", "cert.pem"),
		"--tls-server-key", filepath.Join(certs, a.Addr(), "server", "key.pem"))
	var stdout, stderr bytes.Buffer
	send.Stdout, send.Stderr = &stdout, &stderr
	if err := send.Run(); err != nil {
		return fmt.Errorf("demo: migrate send: %v: %s\nagent: %s", err, strings.TrimSpace(stderr.String()), tail(agentLog))
	}
	var res migrate.Result
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		return fmt.Errorf("demo: migrate send --json: %v: %q", err, stdout.String())
	}

	if _, err := a.RootPID(pid); err == nil {
		return fmt.Errorf("demo: pid %d is still on host-a after the migration", pid)
	}
	rootB, err := b.RootPID(pid)
	if err != nil {
		return fmt.Errorf("demo: the program is not on host-b after the migration: %w", err)
	}
	say("pid %d now runs on host-b; asking it to check every page of its memory", pid)
	off := fileSize(progLog)
	if err := syscall.Kill(rootB, syscall.SIGUSR1); err != nil {
		return fmt.Errorf("demo: signal the program on host-b: %w", err)
	}
	m, err := waitLine(progLog, regexp.MustCompile(`^check (ok|bad).*`), off, 120*time.Second)
	if err != nil {
		return err
	}
	if m[1] != "ok" {
		return fmt.Errorf("demo: the migrated program found its memory wrong: %s", m[0])
	}
	gap := regexp.MustCompile(`maxgap_us=(\d+)`).FindStringSubmatch(m[0])
	pages := regexp.MustCompile(`pages=(\d+)`).FindStringSubmatch(m[0])
	if gap == nil || pages == nil {
		return fmt.Errorf("demo: unexpected check line %q", m[0])
	}
	gapUS, _ := strconv.Atoi(gap[1])

	var sent uint64
	for _, r := range res.Rounds {
		sent += r.Bytes
	}
	fmt.Fprintf(o.Out, "\n  downtime the program observed (longest gap between its 1 ms ticks): %s\n",
		time.Duration(gapUS)*time.Microsecond)
	fmt.Fprintf(o.Out, "  downtime godwit reported (source freeze to resume on host-b):       %s\n", res.Downtime.Round(time.Microsecond))
	fmt.Fprintf(o.Out, "  total %s, %d rounds, %.1f MiB sent over %s, mode %s\n", res.Total.Round(time.Millisecond),
		len(res.Rounds), float64(sent)/(1<<20), res.Transport, res.Mode)
	fmt.Fprintf(o.Out, "  memory: %s pages verified by the program on host-b\n\n", pages[1])
	// The agent records the migration once it has told the source: wait
	// for it.
	count := fmt.Sprintf(`godwit_migration_downtime_seconds_count{mode="%s"} 1`, res.Mode)
	for deadline := time.Now().Add(30 * time.Second); ; {
		v, err := scrape(b, metricsURL+"/metrics", count)
		if err == nil && v == count {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("demo: the agent's /metrics did not count the migration: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	v, err := scrape(b, metricsURL+"/metrics", fmt.Sprintf(`godwit_migration_downtime_seconds_sum{mode="%s"}`, res.Mode))
	if err != nil {
		return fmt.Errorf("demo: agent metrics: %w", err)
	}
	say("the agent's /metrics (deploy/grafana has a dashboard for them): %s", v)
	say("cleaning up (the lab's namespaces go with everything in them)")
	return nil
}

// start starts cmd with its output to log ("" for /dev/null).
func start(cmd *exec.Cmd, log string) (*exec.Cmd, error) {
	if log != "" {
		f, err := os.Create(log)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		cmd.Stdout, cmd.Stderr = f, f
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return cmd, nil
}

// waitHealthy polls url from inside host h until it answers 200.
func waitHealthy(h *lab.Host, url, log string) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		var code int
		resp, err := hostClient(h, 2*time.Second).Get(url)
		if err == nil {
			resp.Body.Close()
			code = resp.StatusCode
			if code == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("demo: agent not healthy at %s: %v (status %d)\n%s", url, err, code, tail(log))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// hostClient is an HTTP client whose connections are made in host h's
// network namespace.
func hostClient(h *lab.Host, timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := h.InNet(func() (err error) {
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		}}}
}

// scrape returns the value of one series of a /metrics page on host h.
func scrape(h *lab.Host, url, series string) (string, error) {
	resp, err := hostClient(h, 5*time.Second).Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	var found []string
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), series) {
			found = append(found, sc.Text())
		}
	}
	if len(found) == 0 {
		return "", fmt.Errorf("no %s in %s", series, url)
	}
	return strings.Join(found, "; "), nil
}

func fileSize(p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return st.Size()
}

// waitLine waits until file p has, past offset off, a line matching re,
// and returns the match.
func waitLine(p string, re *regexp.Regexp, off int64, limit time.Duration) ([]string, error) {
	deadline := time.Now().Add(limit)
	for {
		if b, err := os.ReadFile(p); err == nil && int64(len(b)) >= off {
			for _, line := range strings.Split(string(b[off:]), "\n") {
				if m := re.FindStringSubmatch(line); m != nil {
					return m, nil
				}
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("demo: no line matching %q in %s after %v:\n%s", re, p, limit, tail(p))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func tail(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 10 {
		lines = lines[len(lines)-10:]
	}
	return strings.Join(lines, "\n")
}
