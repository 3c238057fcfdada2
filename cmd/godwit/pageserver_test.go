package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"godwit/internal/images"
	"godwit/pageserver"
)

// startPageServer runs `godwit page-server --port 0 ARGS` in the
// background and returns its address once it printed its port.
func startPageServer(t *testing.T, dir string, args ...string) string {
	t.Helper()
	bin := godwitBin(t)
	cmd := exec.Command(bin, append([]string{"page-server", "-D", dir, "--address", "127.0.0.1", "--port", "0"}, args...)...)
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
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("page-server did not stop cleanly on SIGTERM: %v", err)
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Error("page-server ignored SIGTERM")
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("page-server printed no port: %v", err)
	}
	port, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "Port:")))
	if err != nil {
		t.Fatalf("page-server printed %q", line)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

// pushPages sends two ranges of one task and returns the bytes sent.
func pushPages(t *testing.T, addr string, o pageserver.TransportOptions) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pageserver.Dial(ctx, addr, o)
	if err != nil {
		t.Fatal(err)
	}
	sink, err := c.OpenTask(ctx, pageserver.TaskDst(4242), false)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 3*4096)
	for i := range data {
		data[i] = byte(i * 7)
	}
	if err := sink.AddPagesBytes(0x7f0000000000, pageserver.FlagPresent, data[:2*4096]); err != nil {
		t.Fatal(err)
	}
	if err := sink.AddPagesBytes(0x7f0000010000, pageserver.FlagPresent, data[2*4096:]); err != nil {
		t.Fatal(err)
	}
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	return data
}

// checkPages reads the task's pages back from the server's images.
func checkPages(t *testing.T, dir string, want []byte) {
	t.Helper()
	d, err := images.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	r, err := images.OpenPages(d, images.PagemapImg(4242))
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if _, err := r.ReadAt(got[:2*4096], 0x7f0000000000); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReadAt(got[2*4096:], 0x7f0000010000); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Error("pages written by the page server differ from those sent")
	}
}

func TestPageServerTCP(t *testing.T) {
	dir := t.TempDir()
	metrics := freePort(t)
	addr := startPageServer(t, dir, "--metrics-address", metrics)
	checkPages(t, dir, pushPages(t, addr, pageserver.TransportOptions{}))

	resp, err := http.Get("http://" + metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "godwit_page_server_pages_total") {
		t.Errorf("metrics endpoint lacks page counters:\n%s", body)
	}
}

func TestPageServerQUICMutualTLS(t *testing.T) {
	certs := t.TempDir()
	if code, _, stderr := runGodwit("certs", certs, "127.0.0.1"); code != 0 {
		t.Fatalf("certs: %s", stderr)
	}
	host := filepath.Join(certs, "127.0.0.1", "server")
	tlsArgs := []string{"--transport", "quic", "--tls-cacert", filepath.Join(certs, "cacert.pem"),
		"--tls-cert", filepath.Join(host, "cert.pem"), "--tls-key", filepath.Join(host, "key.pem")}
	host = filepath.Join(certs, "127.0.0.1", "client")
	dir := t.TempDir()
	addr := startPageServer(t, dir, tlsArgs...)
	o := pageserver.TransportOptions{
		Transport: pageserver.TransportQUIC,
		CACert:    filepath.Join(certs, "cacert.pem"),
		Cert:      filepath.Join(host, "cert.pem"),
		Key:       filepath.Join(host, "key.pem"),
	}
	checkPages(t, dir, pushPages(t, addr, o))

	// A client whose certificate another CA signed is refused.
	other := t.TempDir()
	if code, _, stderr := runGodwit("certs", other, "127.0.0.1"); code != 0 {
		t.Fatalf("certs: %s", stderr)
	}
	stranger := o
	stranger.Cert = filepath.Join(other, "127.0.0.1", "client", "cert.pem")
	stranger.Key = filepath.Join(other, "127.0.0.1", "client", "key.pem")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := tryPush(ctx, addr, stranger); err == nil {
		t.Error("a client with a stranger's certificate was served")
	}
	if _, err := os.Stat(filepath.Join(dir, images.PagemapImg(1))); err == nil {
		t.Error("the stranger's pages were written")
	}
}

// tryPush sends one page and closes, returning the first error: with QUIC
// the server refuses a bad certificate after the client's handshake, so
// the refusal shows at the first exchange that needs an answer.
func tryPush(ctx context.Context, addr string, o pageserver.TransportOptions) error {
	c, err := pageserver.Dial(ctx, addr, o)
	if err != nil {
		return err
	}
	defer c.Close()
	sink, err := c.OpenTask(ctx, pageserver.TaskDst(1), false)
	if err != nil {
		return err
	}
	if err := sink.AddPagesBytes(0x10000, pageserver.FlagPresent, make([]byte, 4096)); err != nil {
		return err
	}
	if err := sink.Close(); err != nil {
		return err
	}
	return c.Close()
}

func TestPageServerDaemon(t *testing.T) {
	bin := godwitBin(t)
	dir := t.TempDir()
	cmd := exec.Command(bin, "page-server", "--daemon", "-D", dir, "--address", "127.0.0.1", "--port", "0", "--pidfile", "ps.pid", "-o", "ps.log")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("page-server --daemon: %v: %s", err, out)
	}
	pidText, err := os.ReadFile(filepath.Join(dir, "ps.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(string(pidText))
	t.Cleanup(func() {
		syscall.Kill(pid, syscall.SIGKILL)
		for i := 0; i < 500; i++ {
			if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err != nil {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	// The daemon tells its caller the port it picked.
	port, ok := strings.CutPrefix(strings.TrimSpace(string(out)), "Port: ")
	if !ok {
		t.Fatalf("page-server --daemon --port 0 printed %q", out)
	}
	checkPages(t, dir, pushPages(t, net.JoinHostPort("127.0.0.1", port), pageserver.TransportOptions{}))
}

// freePort returns a loopback address with a port nobody listens on now.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestPageServerTLS: CRIU's --tls option set end to end, with
// --tls-allowed-client admitting one host's client certificate only.
func TestPageServerTLS(t *testing.T) {
	certs := t.TempDir()
	if code, _, stderr := runGodwit("certs", certs, "127.0.0.1", "other"); code != 0 {
		t.Fatalf("certs: %s", stderr)
	}
	srv := filepath.Join(certs, "127.0.0.1", "server")
	dir := t.TempDir()
	addr := startPageServer(t, dir, "--tls", "--tls-cacert", filepath.Join(certs, "cacert.pem"),
		"--tls-cert", filepath.Join(srv, "cert.pem"), "--tls-key", filepath.Join(srv, "key.pem"),
		"--tls-allowed-client", "127.0.0.1")
	client := func(host string) pageserver.TransportOptions {
		d := filepath.Join(certs, host, "client")
		return pageserver.TransportOptions{TLS: true, CACert: filepath.Join(certs, "cacert.pem"),
			Cert: filepath.Join(d, "cert.pem"), Key: filepath.Join(d, "key.pem")}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := tryPush(ctx, addr, client("other")); err == nil {
		t.Error("a client not in --tls-allowed-client was served")
	}
	if _, err := os.Stat(filepath.Join(dir, images.PagemapImg(1))); err == nil {
		t.Error("the other client's pages were written")
	}
	checkPages(t, dir, pushPages(t, addr, client("127.0.0.1")))
}

// TestPageServerLoopbackByDefault: without TLS and --address, the page
// server listens on 127.0.0.1 only.
func TestPageServerLoopbackByDefault(t *testing.T) {
	bin := godwitBin(t)
	cmd := exec.Command(bin, "page-server", "-D", t.TempDir(), "--port", "0")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("page-server printed no port: %v", err)
	}
	port, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "Port:")))
	if err != nil {
		t.Fatalf("page-server printed %q", line)
	}
	tcp, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	want := strings.ToUpper("0100007F:" + strconv.FormatInt(int64(port)+0x10000, 16)[1:])
	if !strings.Contains(string(tcp), want+" 00000000:0000 0A") {
		t.Errorf("no listener on 127.0.0.1:%d in\n%s", port, tcp)
	}
}
