package pageserver

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"godwit/internal/testutil"
)

// The "proc" source: the pages of a running process, sent by the real
// `godwit dump -R --page-server` (built here with the counter workload of
// e2e/), so the figure includes freezing and reading the target's memory.

type procSource struct {
	godwit string
	pid    int
	cmd    *exec.Cmd
}

// startProcSource builds godwit and starts a counter holding total bytes
// of dirty anonymous memory.
func startProcSource(b *testing.B, dir string, total int64) *procSource {
	b.Helper()
	if os.Geteuid() != 0 {
		b.Skip("the proc source needs root (ptrace)")
	}
	p := &procSource{godwit: filepath.Join(dir, "godwit")}
	counter := filepath.Join(dir, "counter")
	for _, c := range [][]string{
		{"go", "build", "-o", p.godwit, "../cmd/godwit"},
		{"gcc", "-O2", "-pthread", "-o", counter, "../e2e/workloads/counter.c"},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			b.Fatalf("%v: %v\n%s", c, err, out)
		}
	}
	// Descriptors this binary inherited would leak into the counter, and
	// godwit dumps no pipes or sockets yet.
	testutil.CloseInheritedFDs()
	log := filepath.Join(dir, "counter.log")
	p.cmd = exec.Command(counter, "-m", strconv.FormatInt(total>>20, 10), log)
	if err := p.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	p.pid = p.cmd.Process.Pid
	b.Cleanup(func() { p.cmd.Process.Kill(); p.cmd.Wait() })
	deadline := time.Now().Add(5 * time.Minute) // filling 4 GiB of fresh memory takes a while here
	for {
		if f, err := os.Open(log); err == nil {
			sc := bufio.NewScanner(f)
			ready := sc.Scan() && strings.HasPrefix(sc.Text(), "ready")
			f.Close()
			if ready {
				return p
			}
		}
		if time.Now().After(deadline) {
			b.Fatal("counter did not fill its memory")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// dump sends the process's pages to the page server at addr, leaving it
// running, and returns the dump's wall time.
func (p *procSource) dump(b *testing.B, addr string, o TransportOptions, imagesDir string) time.Duration {
	b.Helper()
	_, port, _ := strings.Cut(addr, ":")
	args := []string{"dump", "-R", "-t", strconv.Itoa(p.pid), "-D", imagesDir,
		"--page-server", "--address", "127.0.0.1", "--port", port}
	if o.Transport == TransportQUIC {
		args = append(args, "--transport", "quic", "--tls-cacert", o.CACert, "--tls-cert", o.Cert, "--tls-key", o.Key)
	}
	os.MkdirAll(imagesDir, 0o755)
	defer os.RemoveAll(imagesDir)
	start := time.Now()
	if out, err := exec.Command(p.godwit, args...).CombinedOutput(); err != nil {
		b.Fatalf("godwit dump --page-server: %v\n%s", err, out)
	}
	return time.Since(start)
}

// finish checks that the process survived every dump intact.
func (p *procSource) finish(b *testing.B) {
	p.cmd.Process.Signal(syscall.SIGUSR1)
	if err := p.cmd.Wait(); err != nil {
		b.Errorf("the dumped process failed its own checks: %v", err)
	}
}
