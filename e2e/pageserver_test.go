package e2e

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pageServer runs `godwit page-server` on loopback and returns its port.
func pageServer(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(godwitBin, append([]string{"page-server", "-D", dir, "--address", "127.0.0.1", "--port", "0"}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "Port: ") {
		t.Fatalf("page-server: %q %v", line, err)
	}
	return strings.TrimSpace(strings.TrimPrefix(line, "Port: "))
}

// copyMissing copies the files of src that dst lacks (the dump's images
// beside the page server's pages).
func copyMissing(t *testing.T, src, dst string) {
	t.Helper()
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if _, err := os.Stat(filepath.Join(dst, e.Name())); err == nil {
			continue
		}
		in, err := os.Open(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out, err := os.Create(filepath.Join(dst, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(out, in); err != nil {
			t.Fatal(err)
		}
		in.Close()
		out.Close()
	}
}

// dump --page-server lands the pages in the server's directory; restore
// brings the program back from there.
func TestDumpToPageServer(t *testing.T) {
	needRoot(t)
	certs := t.TempDir()
	if code, out := godwit(t, "certs", certs, "127.0.0.1"); code != 0 {
		t.Fatalf("certs: %s", out)
	}
	// Each end its own certificate: server/ for the page server, client/
	// for the dump.
	tlsArgs := func(role string, extra ...string) []string {
		host := filepath.Join(certs, "127.0.0.1", role)
		return append([]string{"--tls-cacert", filepath.Join(certs, "cacert.pem"),
			"--tls-cert", filepath.Join(host, "cert.pem"), "--tls-key", filepath.Join(host, "key.pem")}, extra...)
	}
	for _, c := range []struct {
		name         string
		server, dump []string
	}{
		{"tcp", nil, nil},
		{"tcp-tls", tlsArgs("server", "--tls"), tlsArgs("client", "--tls")},
		{"quic-mtls", tlsArgs("server", "--transport", "quic"), tlsArgs("client", "--transport", "quic")},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := t.TempDir()
			port := pageServer(t, srv, c.server...)
			w := startC(t, false, "-m", "32", "-t", "4")
			local := t.TempDir()
			args := append([]string{"dump", "-t", strconv.Itoa(w.pid), "-D", local, "--page-server",
				"--address", "127.0.0.1", "--port", port}, c.dump...)
			if code, out := godwit(t, args...); code != 0 {
				t.Fatalf("dump --page-server: exit %d: %s", code, out)
			}
			w.reapKilled(t)
			pagemap := "pagemap-" + strconv.Itoa(w.pid) + ".img"
			if _, err := os.Stat(filepath.Join(local, pagemap)); err == nil {
				t.Error("pages were written locally, not to the page server")
			}
			if _, err := os.Stat(filepath.Join(srv, pagemap)); err != nil {
				t.Fatalf("the page server has no %s: %v", pagemap, err)
			}
			copyMissing(t, local, srv)
			r := restore(t, w, srv)
			w.waitTicks(3)
			if code := r.finish(t, w); code != 0 {
				t.Fatalf("program restored from the page server's images: exit %d\n%s", code, w.tail())
			}
			w.checkLog(0)
		})
	}
}

// A dump whose page server is unreachable fails and leaves the program
// running.
func TestDumpPageServerDown(t *testing.T) {
	needRoot(t)
	w := startC(t, false)
	code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir(), "--page-server",
		"--address", "127.0.0.1", "--port", "1")
	oneLineError(t, code, out, "page server")
	w.waitTicks(3)
	if state, tracer := procState(t, w.pid); tracer != 0 || state == "t" || state == "T" {
		t.Fatalf("after a failed dump: state %s, tracer %d", state, tracer)
	}
}
