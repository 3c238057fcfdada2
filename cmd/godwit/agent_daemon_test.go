package main

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestAgentDaemon: `agent --daemon --pidfile F` returns
// once the agent in the background is ready; F holds its PID, /healthz
// answers, and SIGTERM stops it. The pidfile stays (as CRIU's does): the
// next start overwrites it.
func TestAgentDaemon(t *testing.T) {
	bin := godwitBin(t)
	certs := t.TempDir()
	if code, _, stderr := runGodwit("certs", certs, "127.0.0.1"); code != 0 {
		t.Fatalf("certs: %s", stderr)
	}
	srv := filepath.Join(certs, "127.0.0.1", "server")
	dir := t.TempDir()
	pidfile := filepath.Join(dir, "agent.pid")
	metrics := freePort(t)
	cmd := exec.Command(bin, "agent", "--daemon", "--images-dir", filepath.Join(dir, "images"),
		"--address", "127.0.0.1", "--port", "0", "--pidfile", pidfile, "-o", filepath.Join(dir, "agent.log"),
		"--metrics-address", metrics, "--tls-cacert", filepath.Join(certs, "cacert.pem"),
		"--tls-cert", filepath.Join(srv, "cert.pem"), "--tls-key", filepath.Join(srv, "key.pem"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("agent --daemon: %v: %s", err, out)
	}
	if !strings.HasPrefix(strings.TrimSpace(string(out)), "Port: ") {
		t.Errorf("agent --daemon --port 0 printed %q", out)
	}
	pidText, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(string(pidText))
	if err != nil || pid <= 1 {
		t.Fatalf("pidfile holds %q", pidText)
	}
	exited := func() bool {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		// A zombie (its parent, the caller, is gone: it is reaped by
		// init) counts as gone.
		return err != nil || strings.Contains(string(b), ") Z ")
	}
	t.Cleanup(func() {
		if !exited() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	// The pidfile names the agent itself, in the background: not the
	// caller, which has returned.
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || !strings.Contains(string(cmdline), "\x00agent\x00") {
		t.Fatalf("pid %d from the pidfile is not the agent: %q (%v)", pid, cmdline, err)
	}
	if pid == cmd.Process.Pid {
		t.Errorf("pidfile holds the caller's PID %d", pid)
	}
	resp, err := http.Get("http://" + metrics + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz: %s %q", resp.Status, body)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); !exited(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("agent %d still running 20 s after SIGTERM", pid)
		}
	}
	if _, err := http.Get("http://" + metrics + "/healthz"); err == nil {
		t.Error("/healthz still answers after SIGTERM")
	}
	if b, err := os.ReadFile(pidfile); err != nil || string(b) != string(pidText) {
		t.Errorf("pidfile after SIGTERM: %q, %v: want it left as it was", b, err)
	}
}
