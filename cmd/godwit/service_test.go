package main

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	criu "github.com/checkpoint-restore/go-criu/v8"
	"github.com/checkpoint-restore/go-criu/v8/rpc"
	"golang.org/x/sys/unix"

	"godwit/internal/kerndat"
)

func ptr[T any](v T) *T { return &v }

// rpcCall sends one request on a SOCK_SEQPACKET connection and reads the response.
func rpcCall(t *testing.T, conn net.Conn, req *rpc.CriuReq) *rpc.CriuResp {
	t.Helper()
	b, err := req.MarshalVT()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(b); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	resp := &rpc.CriuResp{}
	if err := resp.UnmarshalVT(buf[:n]); err != nil {
		t.Fatal(err)
	}
	return resp
}

// startSwrk runs `godwit swrk FD` on one end of a socketpair, as go-criu
// does, and returns the other end. At cleanup swrk must exit with 0, or
// with an error when wantFail.
func startSwrk(t *testing.T, wantFail bool) net.Conn {
	bin := godwitBin(t)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	srv := os.NewFile(uintptr(fds[1]), "srv")
	cln := os.NewFile(uintptr(fds[0]), "cln")
	cmd := exec.Command(bin, "swrk", "3")
	cmd.ExtraFiles = []*os.File{srv}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	srv.Close()
	conn, err := net.FileConn(cln)
	cln.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if (err != nil) != wantFail {
				t.Errorf("swrk exited with %v (want failure: %v)", err, wantFail)
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Error("swrk did not exit when the client closed")
		}
	})
	return conn
}

// go-criu, the library runc and podman use, drives godwit as it drives criu.
func TestSwrkWithGoCriu(t *testing.T) {
	c := criu.MakeCriu()
	c.SetCriuPath(godwitBin(t))
	v, err := c.GetCriuVersion()
	if err != nil {
		t.Fatalf("GetCriuVersion: %v", err)
	}
	if v != 40100 {
		t.Errorf("version %d, want 40100", v)
	}
	ok, err := c.IsCriuAtLeast(31700)
	if err != nil || !ok {
		t.Errorf("IsCriuAtLeast(3.17) = %v, %v", ok, err)
	}
}

func TestSwrkRequests(t *testing.T) {
	needRoot(t)
	conn := startSwrk(t, false)

	resp := rpcCall(t, conn, &rpc.CriuReq{Type: rpc.CriuReqType_VERSION.Enum()})
	if !resp.GetSuccess() || resp.GetVersion().GetName() == "" {
		t.Errorf("VERSION: %v", resp)
	}

	resp = rpcCall(t, conn, &rpc.CriuReq{Type: rpc.CriuReqType_CHECK.Enum()})
	if !resp.GetSuccess() {
		t.Errorf("CHECK failed: %s", resp.GetCrErrmsg())
	}

	// FEATURE_CHECK says yes only when godwit's command that needs the
	// feature works: pre-dump, lazy restore and pidfd_store_sk are not
	// built, so every answer is no whatever the kernel has.
	resp = rpcCall(t, conn, &rpc.CriuReq{
		Type:     rpc.CriuReqType_FEATURE_CHECK.Enum(),
		Features: &rpc.CriuFeatures{MemTrack: ptr(false), LazyPages: ptr(false), PidfdStore: ptr(false)},
	})
	f := resp.GetFeatures()
	if !resp.GetSuccess() || f.MemTrack == nil || f.LazyPages == nil || f.PidfdStore == nil {
		t.Fatalf("FEATURE_CHECK: %v", resp)
	}
	for name, got := range map[string]bool{"mem_dirty_track": f.GetMemTrack(), "lazy_pages": f.GetLazyPages(), "pidfd_store": f.GetPidfdStore()} {
		c, ok := kerndat.Needs(name)
		if !ok {
			t.Fatalf("%s: kerndat has no command for it", name)
		}
		if got && !c.Built {
			t.Errorf("FEATURE_CHECK says %s works but %s is not built", name, c.Name)
		}
	}
	// Asking nothing gets nothing.
	resp = rpcCall(t, conn, &rpc.CriuReq{Type: rpc.CriuReqType_FEATURE_CHECK.Enum(), Features: &rpc.CriuFeatures{}})
	if f := resp.GetFeatures(); !resp.GetSuccess() || f.MemTrack != nil || f.LazyPages != nil || f.PidfdStore != nil {
		t.Errorf("empty FEATURE_CHECK: %v", resp)
	}

	// images_dir_fd is a descriptor of the client, as CRIU's clients pass it.
	dir := t.TempDir()
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	resp = rpcCall(t, conn, &rpc.CriuReq{
		Type: rpc.CriuReqType_CPUINFO_DUMP.Enum(),
		Opts: &rpc.CriuOpts{ImagesDirFd: ptr(int32(d.Fd()))},
	})
	if !resp.GetSuccess() {
		t.Fatalf("CPUINFO_DUMP: %s", resp.GetCrErrmsg())
	}
	if _, err := os.Stat(filepath.Join(dir, "cpuinfo.img")); err != nil {
		t.Errorf("CPUINFO_DUMP wrote nothing: %v", err)
	}
	resp = rpcCall(t, conn, &rpc.CriuReq{
		Type: rpc.CriuReqType_CPUINFO_CHECK.Enum(),
		Opts: &rpc.CriuOpts{ImagesDirFd: ptr(int32(-1)), ImagesDir: ptr(dir)},
	})
	if !resp.GetSuccess() {
		t.Errorf("CPUINFO_CHECK: %s", resp.GetCrErrmsg())
	}

	// WAIT_PID of a process that is not swrk's child: waitpid's ECHILD,
	// as CRIU answers.
	resp = rpcCall(t, conn, &rpc.CriuReq{Type: rpc.CriuReqType_WAIT_PID.Enum(), Pid: ptr(uint32(1))})
	if resp.GetSuccess() || resp.GetCrErrno() != int32(unix.ECHILD) || !strings.Contains(resp.GetCrErrmsg(), "wait 1") {
		t.Errorf("WAIT_PID 1: want ECHILD, got %v", resp)
	}
}

// A peer that sends garbage gets an error response and the server stops.
func TestSwrkGarbage(t *testing.T) {
	conn := startSwrk(t, true)
	if _, err := conn.Write([]byte{0xff, 0xff, 0xff, 0x01, 0x02}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	resp := &rpc.CriuResp{}
	if err := resp.UnmarshalVT(buf[:n]); err != nil || resp.GetSuccess() || resp.GetCrErrmsg() == "" {
		t.Errorf("garbage request: %v, %v", resp, err)
	}
}

func TestServiceDaemon(t *testing.T) {
	bin := godwitBin(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "svc.sock")
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "service", "--daemon", "--address", sock, "--pidfile", "svc.pid", "-W", dir, "-o", "svc.log")
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("service --daemon: %v: %s", err, stderr.String())
	}
	pidText, err := os.ReadFile(filepath.Join(dir, "svc.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(pidText)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(pid, syscall.SIGKILL)
		// Not our child (it left our session): wait for /proc/PID to go.
		for i := 0; i < 500; i++ {
			if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err != nil {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	if fi, err := os.Lstat(sock); err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("service socket: %v, %v; want a 0600 socket", fi.Mode(), err)
	}
	for i := 0; i < 2; i++ { // two clients, one after the other
		conn, err := net.Dial("unixpacket", sock)
		if err != nil {
			t.Fatal(err)
		}
		resp := rpcCall(t, conn, &rpc.CriuReq{Type: rpc.CriuReqType_VERSION.Enum()})
		conn.Close()
		if !resp.GetSuccess() || resp.GetVersion().GetMajorNumber() != 4 {
			t.Errorf("VERSION over the service socket: %v", resp)
		}
	}
}

// `godwit service` never deletes what is at --address unless it is a
// socket: it refuses with one line.
func TestServiceAddressNotSocket(t *testing.T) {
	bin := godwitBin(t)
	file := filepath.Join(t.TempDir(), "precious")
	if err := os.WriteFile(file, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "service", "--address", file).CombinedOutput()
	if err == nil {
		t.Fatalf("service started on a regular file: %s", out)
	}
	if lines := strings.Split(strings.TrimSpace(string(out)), "\n"); len(lines) != 1 || !strings.Contains(lines[0], "not a socket") {
		t.Errorf("want one line saying it is not a socket, got %q", out)
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "keep" {
		t.Errorf("the file at --address changed: %q, %v", b, err)
	}
}

func TestServiceGroupFlag(t *testing.T) {
	bin := godwitBin(t)
	out, err := exec.Command(bin, "service", "--address", filepath.Join(t.TempDir(), "s"), "--service-group", "no-such-group-godwit").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--service-group") {
		t.Errorf("unknown group: %v %s", err, out)
	}
}
