package e2e

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	criu "github.com/checkpoint-restore/go-criu/v8"
	"github.com/checkpoint-restore/go-criu/v8/rpc"
	"golang.org/x/sys/unix"
)

func ptr[T any](v T) *T { return &v }

// goCriu is go-criu, the library runc and podman use, driving godwit.
func goCriu() *criu.Criu {
	c := criu.MakeCriu()
	c.SetCriuPath(godwitBin)
	return c
}

// recorder is a go-criu Notify that records the callbacks and fails the
// one named in fail.
type recorder struct {
	mu    sync.Mutex
	calls []string
	pid   int32
	fail  string
}

func (r *recorder) call(name string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, name)
	if name == r.fail {
		return errors.New("callback refuses " + name)
	}
	return nil
}

func (r *recorder) PreDump() error       { return r.call("pre-dump") }
func (r *recorder) PostDump() error      { return r.call("post-dump") }
func (r *recorder) PreRestore() error    { return r.call("pre-restore") }
func (r *recorder) NetworkLock() error   { return r.call("network-lock") }
func (r *recorder) NetworkUnlock() error { return r.call("network-unlock") }
func (r *recorder) PostResume() error    { return r.call("post-resume") }
func (r *recorder) PostRestore(pid int32) error {
	r.pid = pid
	return r.call("post-restore")
}
func (r *recorder) SetupNamespaces(pid int32) error { return r.call("setup-namespaces") }
func (r *recorder) PostSetupNamespaces() error      { return r.call("post-setup-namespaces") }

func openDir(t *testing.T, p string) *os.File {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// swrk is a raw RPC connection to `godwit swrk`, for what go-criu's API
// does not return (the restored pid, WAIT_PID).
type swrk struct {
	conn net.Conn
	cmd  *exec.Cmd
}

func startSwrk(t *testing.T) *swrk {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	srv, cln := os.NewFile(uintptr(fds[1]), "srv"), os.NewFile(uintptr(fds[0]), "cln")
	cmd := exec.Command(godwitBin, "swrk", "3")
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
	s := &swrk{conn: conn, cmd: cmd}
	t.Cleanup(func() {
		conn.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Error("swrk did not exit when the client closed")
		}
	})
	return s
}

func (s *swrk) call(t *testing.T, req *rpc.CriuReq) *rpc.CriuResp {
	t.Helper()
	b, err := req.MarshalVT()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.conn.Write(b); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	s.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	n, err := s.conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	resp := &rpc.CriuResp{}
	if err := resp.UnmarshalVT(buf[:n]); err != nil {
		t.Fatal(err)
	}
	return resp
}

// waitGone waits until the restored program, which is not the test's
// child, has exited after SIGUSR1.
func (w *workload) finishDetached(t *testing.T) {
	t.Helper()
	if err := syscall.Kill(w.pid, syscall.SIGUSR1); err != nil {
		t.Fatalf("signal restored pid %d: %v", w.pid, err)
	}
	for deadline := time.Now().Add(30 * time.Second); alive(w.pid); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("restored pid %d did not finish\n%s", w.pid, w.tail())
		}
	}
}

// go-criu dumps a running program through godwit's RPC with its
// notify_scripts callbacks answered, and restores it; the restored
// program loses no tick, and the response carries its pid.
func TestRPCDumpRestore(t *testing.T) {
	needRoot(t)
	w := startC(t, false, "-t", "2")
	dir := t.TempDir()
	d := openDir(t, dir)
	rec := &recorder{}
	err := goCriu().Dump(&rpc.CriuOpts{Pid: ptr(int32(w.pid)), ImagesDirFd: ptr(int32(d.Fd())), LogLevel: ptr(int32(4)), LogFile: ptr("dump.log")}, rec)
	if err != nil {
		t.Fatalf("Dump: %v\n%s", err, readFile(filepath.Join(dir, "dump.log")))
	}
	w.reapKilled(t)
	if want := []string{"pre-dump", "post-dump"}; !slices.Equal(rec.calls, want) {
		t.Errorf("dump callbacks %v, want %v", rec.calls, want)
	}
	if !strings.Contains(readFile(filepath.Join(dir, "dump.log")), "pages written") {
		t.Errorf("dump.log lacks the engine's lines:\n%s", readFile(filepath.Join(dir, "dump.log")))
	}

	rec = &recorder{}
	if err := goCriu().Restore(&rpc.CriuOpts{ImagesDirFd: ptr(int32(d.Fd())), LogLevel: ptr(int32(4)), LogFile: ptr("restore.log")}, rec); err != nil {
		t.Fatalf("Restore: %v\n%s", err, readFile(filepath.Join(dir, "restore.log")))
	}
	if want := []string{"pre-restore", "post-restore"}; !slices.Equal(slices.DeleteFunc(rec.calls, func(s string) bool { return s == "pre-resume" }), want) {
		t.Errorf("restore callbacks %v, want %v", rec.calls, want)
	}
	if rec.pid != int32(w.pid) {
		t.Errorf("post-restore pid %d, want %d", rec.pid, w.pid)
	}
	w.waitTicks(3)
	w.finishDetached(t)
	w.checkLog(0)
}

// The restored pid is in RESTORE's response; WAIT_PID reports how the
// restored task ended.
func TestRPCRestorePidAndWaitPid(t *testing.T) {
	needRoot(t)
	w := startC(t, true)
	dir := w.dump(t)
	w.reapKilled(t)
	s := startSwrk(t)
	d := openDir(t, dir)
	resp := s.call(t, &rpc.CriuReq{Type: rpc.CriuReqType_RESTORE.Enum(), Opts: &rpc.CriuOpts{ImagesDirFd: ptr(int32(d.Fd())), LogFile: ptr("restore.log")}})
	if !resp.GetSuccess() || resp.GetType() != rpc.CriuReqType_RESTORE {
		t.Fatalf("restore: %v\n%s", resp, readFile(filepath.Join(dir, "restore.log")))
	}
	if got := resp.GetRestore().GetPid(); got != int32(w.pid) {
		t.Fatalf("restored pid %d, want %d", got, w.pid)
	}
	w.waitTicks(2)
	if err := syscall.Kill(w.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	resp = s.call(t, &rpc.CriuReq{Type: rpc.CriuReqType_WAIT_PID.Enum(), Pid: ptr(uint32(w.pid))})
	ws := unix.WaitStatus(resp.GetStatus())
	if !resp.GetSuccess() || !ws.Signaled() || ws.Signal() != unix.SIGKILL {
		t.Fatalf("wait_pid: %v (status %#x)", resp, resp.GetStatus())
	}
}

// A callback that fails fails the dump, and the program runs on
// untouched, as after any failed dump.
func TestRPCNotifyFailure(t *testing.T) {
	needRoot(t)
	w := startC(t, false)
	d := openDir(t, t.TempDir())
	rec := &recorder{fail: "post-dump"}
	err := goCriu().Dump(&rpc.CriuOpts{Pid: ptr(int32(w.pid)), ImagesDirFd: ptr(int32(d.Fd()))}, rec)
	if err == nil || !strings.Contains(err.Error(), "post-dump") {
		t.Fatalf("Dump = %v, want a post-dump failure", err)
	}
	if st, tracer := procState(t, w.pid); tracer != 0 || st == "T" || st == "t" {
		t.Fatalf("after the failed dump pid %d is %s, traced by %d", w.pid, st, tracer)
	}
	w.waitTicks(2)
}

// Options godwit does not support are refused by name, and the target
// is left alone.
func TestRPCRefusals(t *testing.T) {
	needRoot(t)
	w := startC(t, false)
	dir := t.TempDir()
	d := openDir(t, dir)
	base := func() *rpc.CriuOpts {
		return &rpc.CriuOpts{Pid: ptr(int32(w.pid)), ImagesDirFd: ptr(int32(d.Fd()))}
	}
	with := func(f func(o *rpc.CriuOpts)) *rpc.CriuOpts { o := base(); f(o); return o }
	for _, c := range []struct {
		typ  rpc.CriuReqType
		opts *rpc.CriuOpts
		want string
	}{
		{rpc.CriuReqType_DUMP, with(func(o *rpc.CriuOpts) { o.TcpClose = ptr(true) }), "criu_opts.tcp_close (--tcp-close) is not supported yet"},
		{rpc.CriuReqType_DUMP, with(func(o *rpc.CriuOpts) { o.External = []string{"dev[8/1]:disk"} }), "--external dev[8/1]:disk is not supported yet"},
		{rpc.CriuReqType_DUMP, with(func(o *rpc.CriuOpts) { o.Ps = &rpc.CriuPageServerInfo{Fd: ptr(int32(d.Fd()))} }), "is not a socket"},
		{rpc.CriuReqType_DUMP, with(func(o *rpc.CriuOpts) { o.LogFile = ptr("../x.log") }), "no subdirectories"},
		{rpc.CriuReqType_RESTORE, with(func(o *rpc.CriuOpts) { o.WeakSysctls = ptr(true) }), "criu_opts.weak_sysctls (--weak-sysctls)"},
		{rpc.CriuReqType_PRE_DUMP, with(func(o *rpc.CriuOpts) { o.TcpEstablished = ptr(true) }), "criu_opts.tcp_established (--tcp-established) is not supported yet"},
	} {
		s := startSwrk(t)
		resp := s.call(t, &rpc.CriuReq{Type: c.typ.Enum(), Opts: c.opts})
		if resp.GetSuccess() || !strings.Contains(resp.GetCrErrmsg(), c.want) {
			t.Errorf("%v %v: success=%v %q, want %q", c.typ, c.opts, resp.GetSuccess(), resp.GetCrErrmsg(), c.want)
		}
		if st, tracer := procState(t, w.pid); tracer != 0 || st == "T" || st == "t" {
			t.Fatalf("after %v pid %d is %s, traced by %d", c.typ, w.pid, st, tracer)
		}
	}
	w.waitTicks(2)
	if ents, _ := os.ReadDir(dir); len(ents) > 1 { // criu.log at most
		t.Errorf("refused requests left files in -D: %v", ents)
	}
}

// PAGE_SERVER_CHLD starts godwit's page server (port 0: one is chosen
// and returned); a DUMP sends it the pages, and the server exits; the
// program restores from the two directories put together.
func TestRPCPageServer(t *testing.T) {
	needRoot(t)
	w := startC(t, false, "-t", "2")
	psDir, dumpDir := t.TempDir(), t.TempDir()
	pd, dd := openDir(t, psDir), openDir(t, dumpDir)
	pid, port, err := goCriu().StartPageServerChld(&rpc.CriuOpts{ImagesDirFd: ptr(int32(pd.Fd())), LogFile: ptr("ps.log"), LogLevel: ptr(int32(4)),
		Ps: &rpc.CriuPageServerInfo{Address: ptr("127.0.0.1"), Port: ptr(int32(0))}})
	if err != nil {
		t.Fatalf("StartPageServerChld: %v", err)
	}
	t.Cleanup(func() { killAndForget(pid) })
	if pid <= 0 || port <= 0 || !alive(pid) {
		t.Fatalf("page server pid %d port %d", pid, port)
	}
	err = goCriu().Dump(&rpc.CriuOpts{Pid: ptr(int32(w.pid)), ImagesDirFd: ptr(int32(dd.Fd())), LogFile: ptr("dump.log"), LogLevel: ptr(int32(4)),
		Ps: &rpc.CriuPageServerInfo{Address: ptr("127.0.0.1"), Port: ptr(int32(port))}}, nil)
	if err != nil {
		t.Fatalf("Dump to the page server: %v\n%s", err, readFile(filepath.Join(dumpDir, "dump.log")))
	}
	w.reapKilled(t)
	// As CRIU's, the server exits once the dump's session is over (P.Haul
	// waits for it).
	for deadline := time.Now().Add(30 * time.Second); alive(pid); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("page server %d still running after the dump\n%s", pid, readFile(filepath.Join(psDir, "ps.log")))
		}
	}
	if got := readFile(filepath.Join(psDir, "ps.log")); !strings.Contains(got, "session over") {
		t.Errorf("ps.log does not show the session ending:\n%s", got)
	}
	ents, _ := os.ReadDir(psDir)
	var moved []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "pagemap-") || strings.HasPrefix(e.Name(), "pages-") {
			if err := os.Rename(filepath.Join(psDir, e.Name()), filepath.Join(dumpDir, e.Name())); err != nil {
				t.Fatal(err)
			}
			moved = append(moved, e.Name())
		}
	}
	sort.Strings(moved)
	if len(moved) != 2 || !strings.HasPrefix(moved[0], "pagemap-"+strconv.Itoa(w.pid)) {
		t.Fatalf("page server wrote %v", moved)
	}
	r := restore(t, w, dumpDir)
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("restored program exit %d: %s", code, w.tail())
	}
	w.checkLog(0)
}

// FEATURE_CHECK answers as `godwit check --feature` does. (Raw RPC:
// go-criu v8.3's FeatureCheck hands back the request's own struct, not
// the response's.)
func TestRPCFeatureCheck(t *testing.T) {
	needRoot(t)
	s := startSwrk(t)
	resp := s.call(t, &rpc.CriuReq{Type: rpc.CriuReqType_FEATURE_CHECK.Enum(),
		Features: &rpc.CriuFeatures{MemTrack: ptr(true), LazyPages: ptr(true), PidfdStore: ptr(true)}})
	f := resp.GetFeatures()
	if !resp.GetSuccess() || f == nil {
		t.Fatalf("FEATURE_CHECK: %v", resp)
	}
	for name, got := range map[string]*bool{"mem_dirty_track": f.MemTrack, "lazy_pages": f.LazyPages, "pidfd_store": f.PidfdStore} {
		code, out := godwit(t, "check", "--feature", name)
		if got == nil || *got != (code == 0) {
			t.Errorf("%s: FEATURE_CHECK %v, check --feature exit %d: %s", name, got, code, out)
		}
	}
}
