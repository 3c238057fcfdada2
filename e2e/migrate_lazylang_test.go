package e2e

import (
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"godwit/migrate"
)

// TestMigrateLazyPythonAndGo moves the Python and Go programs of the
// pre-copy tests in post-copy (every page pulled from the frozen source
// after the resume) and hybrid (rounds, then the last pages pulled) mode;
// each checks its memory and counters on host B once the agent that
// restored it is gone.
func TestMigrateLazyPythonAndGo(t *testing.T) {
	gobin := filepath.Join(t.TempDir(), "gomigrant")
	if out, err := exec.Command("go", "build", "-o", gobin, "./workloads/gomigrant").CombinedOutput(); err != nil {
		t.Fatalf("go build gomigrant: %v\n%s", err, out)
	}
	script, err := filepath.Abs("workloads/counter.py")
	if err != nil {
		t.Fatal(err)
	}
	for _, lang := range []string{"python", "go"} {
		for _, mode := range []migrate.Mode{migrate.ModePostcopy, migrate.ModeHybrid} {
			t.Run(lang+"/"+string(mode), func(t *testing.T) {
				m := newMigLab(t)
				client := filepath.Join(m.certs, m.b.Addr(), "client")
				m.startAgent("--tls-client-cert", filepath.Join(client, "cert.pem"), "--tls-client-key", filepath.Join(client, "key.pem"))
				var w *labWorkload
				if lang == "python" {
					w = startOn(t, m.a, "/usr/bin/python3", script, "-m", "16", "-t", "2")
				} else {
					w = startOn(t, m.a, gobin, "-m", "32")
				}
				server := filepath.Join(m.certs, m.a.Addr(), "server")
				args := []string{"--mode", string(mode), "--tls-server-cert", filepath.Join(server, "cert.pem"), "--tls-server-key", filepath.Join(server, "key.pem")}
				if mode == migrate.ModeHybrid {
					args = append(args, "--max-rounds", "2")
				}
				code, res, stderr := m.send(w, args...)
				if code != 0 {
					t.Fatalf("migrate send: exit %d: %s", code, stderr)
				}
				rp := m.moved(w)
				if res.Mode != mode || res.Downtime <= 0 || res.Postcopy == nil || res.Postcopy.Pages == 0 {
					t.Errorf("result %+v, postcopy %+v: want pages pulled after the resume", res, res.Postcopy)
				}
				if mode == migrate.ModePostcopy && len(res.Rounds) != 0 || mode == migrate.ModeHybrid && len(res.Rounds) < 2 {
					t.Errorf("%s made %d rounds", mode, len(res.Rounds))
				}
				killAndForget(m.agentP)
				_ = m.agent.Wait()
				if lang == "python" {
					finishMoved(t, w, rp)
					return
				}
				checkMovedGo(t, w, rp)
			})
		}
	}
}

// checkMovedGo asks the moved gomigrant to check its memory, and checks
// its ticks: every one once, in order, across the move.
func checkMovedGo(t *testing.T, w *labWorkload, rp int) {
	t.Helper()
	w.waitTicks(10)
	if err := syscall.Kill(rp, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(readFile(w.log), " ok\n"); time.Sleep(10 * time.Millisecond) {
		if strings.Contains(readFile(w.log), "bad ") || time.Now().After(deadline) {
			t.Fatalf("moved Go program not intact\n%s", w.tail())
		}
	}
	for i, n := range w.ticks() {
		if n != i+1 {
			t.Fatalf("tick %d at line %d\n%s", n, i+1, w.tail())
		}
	}
}
