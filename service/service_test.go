package service

import (
	"encoding/hex"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/rpc"
	"golang.org/x/sys/unix"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: clients of other uids")
	}
}

// serve starts a Server on cfg (Path set to a new socket when empty) and
// stops it at cleanup.
func serve(t *testing.T, cfg Config) *Server {
	t.Helper()
	if cfg.Path == "" {
		cfg.Path = filepath.Join(t.TempDir(), "svc.sock")
	}
	s, err := Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	t.Cleanup(func() {
		s.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(2 * time.Minute):
			t.Error("Serve did not return after Close")
		}
	})
	return s
}

func dial(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// call sends req, with fd passed alongside when fd >= 0, and reads the
// response.
func call(t *testing.T, c *net.UnixConn, req *rpc.CriuReq, fd int) *rpc.CriuResp {
	t.Helper()
	b, err := req.MarshalVT()
	if err != nil {
		t.Fatal(err)
	}
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	if _, _, err := c.WriteMsgUnix(b, oob, nil); err != nil {
		t.Fatal(err)
	}
	return readResp(t, c)
}

func readResp(t *testing.T, c *net.UnixConn) *rpc.CriuResp {
	t.Helper()
	buf := make([]byte, 64<<10)
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	resp := &rpc.CriuResp{}
	if err := resp.UnmarshalVT(buf[:n]); err != nil {
		t.Fatal(err)
	}
	return resp
}

var versionReq = &rpc.CriuReq{Type: rpc.CriuReqType_VERSION.Enum()}

// pyClient is a client in another process, as uid:gid when cred is set: it
// connects to sock, sends req (passing an fd of dir, if given, with
// SCM_RIGHTS) and prints "connect ERRNO" or "resp HEX".
const pyClient = `
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("connect", e.errno); sys.exit(0)
req = bytes.fromhex(sys.argv[2])
try:
    if len(sys.argv) > 3:
        socket.send_fds(s, [req], [os.open(sys.argv[3], os.O_RDONLY | os.O_DIRECTORY)])
    else:
        s.send(req)
except OSError:
    pass  # refused peers may be closed already; the answer is queued
s.settimeout(30)
print("resp", s.recv(1 << 16).hex())
`

// runClient runs pyClient and returns the response, or nil and the errno
// of a failed connect.
func runClient(t *testing.T, cred *syscall.Credential, sock string, req *rpc.CriuReq, dir string) (*rpc.CriuResp, int) {
	t.Helper()
	b, err := req.MarshalVT()
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"-c", pyClient, sock, hex.EncodeToString(b)}
	if dir != "" {
		args = append(args, dir)
	}
	cmd := exec.Command("/usr/bin/python3", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client: %v\n%s", err, out)
	}
	f := strings.Fields(string(out))
	if len(f) == 2 && f[0] == "connect" {
		n, _ := strconv.Atoi(f[1])
		return nil, n
	}
	if len(f) != 2 || f[0] != "resp" {
		t.Fatalf("client printed %q", out)
	}
	raw, err := hex.DecodeString(f[1])
	if err != nil {
		t.Fatal(err)
	}
	resp := &rpc.CriuResp{}
	if err := resp.UnmarshalVT(raw); err != nil {
		t.Fatal(err)
	}
	return resp, 0
}

var nobody = &syscall.Credential{Uid: 65534, Gid: 65534}

// openDirs makes dir and its parents up to the test's temporary root
// traversable, so that only the socket's own mode can stop other users.
func openDirs(t *testing.T, dir string) {
	t.Helper()
	for d := dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSocketMode(t *testing.T) {
	needRoot(t)
	// Under umask 000 the socket is still 0600: its mode never comes from
	// the umask. (The umask is process-wide: this test does not run in
	// parallel with others of this package.)
	old := syscall.Umask(0)
	s := serve(t, Config{Group: -1})
	syscall.Umask(old)
	var st unix.Stat_t
	if err := unix.Lstat(s.Addr(), &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK || st.Mode&0o777 != 0o600 || st.Uid != 0 {
		t.Errorf("socket mode %o uid %d, want a 0600 socket of root", st.Mode, st.Uid)
	}
	if ents, _ := os.ReadDir(filepath.Dir(s.Addr())); len(ents) != 1 {
		t.Errorf("the private directory was left behind: %v", ents)
	}

	g := serve(t, Config{Group: 65534})
	if err := unix.Lstat(g.Addr(), &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o777 != 0o660 || st.Gid != 65534 {
		t.Errorf("group socket mode %o gid %d, want 0660 and gid 65534", st.Mode&0o777, st.Gid)
	}
}

// An unprivileged user cannot use the socket: the mode stops it at
// connect, and if the socket were wider, the peer check still refuses it.
func TestUnprivilegedClient(t *testing.T) {
	needRoot(t)
	s := serve(t, Config{Group: -1})
	openDirs(t, filepath.Dir(s.Addr()))
	if resp, errno := runClient(t, nobody, s.Addr(), versionReq, ""); errno != int(unix.EACCES) {
		t.Fatalf("uid 65534 on a 0600 socket: got %v, errno %d; want EACCES", resp, errno)
	}
	if err := os.Chmod(s.Addr(), 0o666); err != nil {
		t.Fatal(err)
	}
	resp, errno := runClient(t, nobody, s.Addr(), versionReq, "")
	if resp == nil || resp.GetSuccess() || !strings.Contains(resp.GetCrErrmsg(), "may not use this service") {
		t.Fatalf("uid 65534 on a 0666 socket: got %v, errno %d; want a refusal", resp, errno)
	}
	// Root still is served.
	if resp := call(t, dial(t, s.Addr()), versionReq, -1); !resp.GetSuccess() {
		t.Errorf("root refused: %v", resp)
	}
}

// Members of --service-group are served, but only with images directories
// they pass and own.
func TestGroupClient(t *testing.T) {
	needRoot(t)
	s := serve(t, Config{Group: 65534})
	openDirs(t, filepath.Dir(s.Addr()))
	if resp, _ := runClient(t, nobody, s.Addr(), versionReq, ""); !resp.GetSuccess() {
		t.Fatalf("group member VERSION: %v", resp)
	}
	// Root's directory, by path: refused, nothing written.
	rootDir := t.TempDir()
	openDirs(t, rootDir)
	dump := &rpc.CriuReq{Type: rpc.CriuReqType_CPUINFO_DUMP.Enum(), Opts: &rpc.CriuOpts{ImagesDirFd: ptr(int32(-1)), ImagesDir: ptr(rootDir)}}
	if resp, _ := runClient(t, nobody, s.Addr(), dump, ""); resp.GetSuccess() || !strings.Contains(resp.GetCrErrmsg(), "images_dir_fd") {
		t.Errorf("group member, images_dir by path: %v", resp)
	}
	// Root's directory, passed (the client may read it, not write it).
	dump.Opts = &rpc.CriuOpts{ImagesDirFd: ptr(int32(0))}
	if resp, _ := runClient(t, nobody, s.Addr(), dump, rootDir); resp.GetSuccess() || !strings.Contains(resp.GetCrErrmsg(), "not owned") {
		t.Errorf("group member, root's directory passed: %v", resp)
	}
	if _, err := os.Stat(filepath.Join(rootDir, "cpuinfo.img")); err == nil {
		t.Error("the service wrote into root's directory for uid 65534")
	}
	// Its own directory, passed: served.
	own := filepath.Join(rootDir, "own")
	if err := os.Mkdir(own, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(own, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if resp, _ := runClient(t, nobody, s.Addr(), dump, own); !resp.GetSuccess() {
		t.Errorf("group member, own directory passed: %v", resp)
	}
	if _, err := os.Stat(filepath.Join(own, "cpuinfo.img")); err != nil {
		t.Errorf("cpuinfo.img not written: %v", err)
	}
}

// Only a socket may be replaced at the address.
func TestAddressNotASocket(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "dir")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{file, sub} {
		s, err := Listen(Config{Path: p, Group: -1})
		if err == nil {
			s.Close()
			t.Errorf("Listen replaced %s", p)
		} else if !strings.Contains(err.Error(), "not a socket") {
			t.Errorf("Listen on %s: %v", p, err)
		}
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "keep" {
		t.Errorf("the file at the address changed: %q, %v", b, err)
	}
	if fi, err := os.Stat(sub); err != nil || !fi.IsDir() {
		t.Errorf("the directory at the address changed: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("left behind: %v", ents)
	}

	// A stale socket of an earlier run is replaced.
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: stale, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	s := serve(t, Config{Path: stale, Group: -1})
	if resp := call(t, dial(t, s.Addr()), versionReq, -1); !resp.GetSuccess() {
		t.Errorf("VERSION on the replaced socket: %v", resp)
	}
}

// Idle clients are dropped, and while they wait others are served: they
// do not stall the accept loop.
func TestIdleClients(t *testing.T) {
	s := serve(t, Config{Group: -1, IdleTimeout: 300 * time.Millisecond, MaxClients: 64})
	var idle []*net.UnixConn
	for range 20 { // more than the 16 that stalled the old accept loop
		idle = append(idle, dial(t, s.Addr()))
	}
	if resp := call(t, dial(t, s.Addr()), versionReq, -1); !resp.GetSuccess() {
		t.Fatalf("VERSION with 20 idle clients: %v", resp)
	}
	for i, c := range idle {
		resp := readResp(t, c) // the server says why, then closes
		if resp.GetSuccess() || !strings.Contains(resp.GetCrErrmsg(), "idle") {
			t.Errorf("idle client %d: %v", i, resp)
		}
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if n, err := c.Read(make([]byte, 16)); n != 0 || err == nil {
			t.Errorf("idle client %d not closed: %d, %v", i, n, err)
		}
	}
}

// Clients over the bound are told so at once, and a freed slot is reused.
func TestClientBound(t *testing.T) {
	s := serve(t, Config{Group: -1, MaxClients: 4})
	var held []*net.UnixConn
	for range 4 {
		c := dial(t, s.Addr())
		if resp := call(t, c, versionReq, -1); !resp.GetSuccess() { // it holds a slot now
			t.Fatal(resp)
		}
		held = append(held, c)
	}
	resp := readResp(t, dial(t, s.Addr()))
	if resp.GetSuccess() || !strings.Contains(resp.GetCrErrmsg(), "too many clients") {
		t.Fatalf("fifth client: %v", resp)
	}
	held[0].Close()
	for i := 0; ; i++ { // the slot is freed once the server sees the close
		c := dial(t, s.Addr())
		if resp := call(t, c, versionReq, -1); resp.GetSuccess() {
			break
		}
		c.Close()
		if i == 300 {
			t.Fatal("a freed slot was not reused")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func cpuinfoDump(fd int32) *rpc.CriuReq {
	return &rpc.CriuReq{Type: rpc.CriuReqType_CPUINFO_DUMP.Enum(), Opts: &rpc.CriuOpts{ImagesDirFd: ptr(fd)}}
}

// images_dir_fd is the client's own descriptor: by number (fetched through
// the pidfd of the connected process) or passed with the request.
func TestImagesDirFD(t *testing.T) {
	needRoot(t)
	s := serve(t, Config{Group: -1})
	c := dial(t, s.Addr())

	byNumber := t.TempDir()
	d, err := os.Open(byNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if resp := call(t, c, cpuinfoDump(int32(d.Fd())), -1); !resp.GetSuccess() {
		t.Fatalf("images_dir_fd by number: %v", resp)
	}
	fi, err := os.Stat(filepath.Join(byNumber, "cpuinfo.img"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("cpuinfo.img mode %v, want 0600", fi.Mode().Perm())
	}

	passed := t.TempDir()
	p, err := os.Open(passed)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	// The number is not looked at when a descriptor comes with the request.
	if resp := call(t, c, cpuinfoDump(int32(d.Fd())), int(p.Fd())); !resp.GetSuccess() {
		t.Fatalf("images_dir_fd passed: %v", resp)
	}
	if _, err := os.Stat(filepath.Join(passed, "cpuinfo.img")); err != nil {
		t.Errorf("passed directory not used: %v", err)
	}

	// A number open in this process (the service's) but not in the client
	// names nothing of the client's.
	other := t.TempDir()
	o, err := os.Open(other)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	high, err := unix.FcntlInt(o.Fd(), unix.F_DUPFD_CLOEXEC, 300)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(high)
	resp, _ := runClient(t, nil, s.Addr(), cpuinfoDump(int32(high)), "")
	if resp.GetSuccess() || !strings.Contains(resp.GetCrErrmsg(), "bad file descriptor") {
		t.Errorf("fd %d of another process: %v", high, resp)
	}
	if _, err := os.Stat(filepath.Join(other, "cpuinfo.img")); err == nil {
		t.Error("the service wrote through another process's descriptor")
	}
}

// A request may carry one descriptor at most; more are refused and closed.
func TestTooManyFDs(t *testing.T) {
	s := serve(t, Config{Group: -1})
	c := dial(t, s.Addr())
	b, _ := versionReq.MarshalVT()
	if _, _, err := c.WriteMsgUnix(b, unix.UnixRights(0, 1), nil); err != nil {
		t.Fatal(err)
	}
	if resp := readResp(t, c); resp.GetSuccess() || !strings.Contains(resp.GetCrErrmsg(), "descriptor") {
		t.Errorf("two descriptors: %v", resp)
	}
}

// A --service-group client may dump only a process it could ptrace itself
// (its uids and gids, no capabilities, dumpable), and may not restore (a
// restore opens files and sets credentials as root).
func TestGroupClientActsOnProcesses(t *testing.T) {
	needRoot(t)
	s := serve(t, Config{Group: 65534, Hooks: Hooks{Unsupported: func(string, string) bool { return false }}})
	openDirs(t, filepath.Dir(s.Addr()))
	own := filepath.Join(t.TempDir(), "own")
	if err := os.Mkdir(own, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(own, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	openDirs(t, filepath.Dir(own))
	sleeper := func(cred *syscall.Credential) *exec.Cmd {
		cmd := exec.Command("/bin/sleep", "600")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setsid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}
	tracer := func(pid int) string {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		for _, ln := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(ln, "TracerPid:"); ok {
				return strings.TrimSpace(v)
			}
		}
		return "gone"
	}
	dump := func(pid int) *rpc.CriuReq {
		return &rpc.CriuReq{Type: rpc.CriuReqType_DUMP.Enum(), Opts: &rpc.CriuOpts{ImagesDirFd: ptr(int32(0)), Pid: ptr(int32(pid)), LeaveRunning: ptr(true)}}
	}
	root := sleeper(nil)
	resp, _ := runClient(t, nobody, s.Addr(), dump(root.Process.Pid), own)
	if resp.GetSuccess() || !strings.Contains(resp.GetCrErrmsg(), "uid 65534 may not dump it") {
		t.Errorf("group member dumping root's process: %v", resp)
	}
	if tr := tracer(root.Process.Pid); tr != "0" {
		t.Errorf("root's process after the refusal: tracer %s", tr)
	}
	if _, err := os.Stat(filepath.Join(own, "inventory.img")); err == nil {
		t.Error("images written for a refused dump")
	}
	mine := sleeper(nobody)
	resp, _ = runClient(t, nobody, s.Addr(), dump(mine.Process.Pid), own)
	if !resp.GetSuccess() {
		t.Fatalf("group member dumping its own process: %v", resp)
	}
	if _, err := os.Stat(filepath.Join(own, "inventory.img")); err != nil {
		t.Errorf("dump of its own process: %v", err)
	}
	if tr := tracer(mine.Process.Pid); tr != "0" {
		t.Errorf("its process after dump -R: tracer %s", tr)
	}
	restore := &rpc.CriuReq{Type: rpc.CriuReqType_RESTORE.Enum(), Opts: &rpc.CriuOpts{ImagesDirFd: ptr(int32(0))}}
	if resp, _ := runClient(t, nobody, s.Addr(), restore, own); resp.GetSuccess() || !strings.Contains(resp.GetCrErrmsg(), "not allowed to clients admitted by --service-group") {
		t.Errorf("group member restoring: %v", resp)
	}
	// A parent chain is read and punched as root: not for group members
	// (parent_img could name another user's images).
	for name, set := range map[string]func(*rpc.CriuOpts){
		"parent_img": func(o *rpc.CriuOpts) { o.ParentImg = ptr("/root") },
		"auto_dedup": func(o *rpc.CriuOpts) { o.AutoDedup = ptr(true) },
		"track_mem":  func(o *rpc.CriuOpts) { o.TrackMem = ptr(true) },
	} {
		req := dump(mine.Process.Pid)
		set(req.Opts)
		if resp, _ := runClient(t, nobody, s.Addr(), req, own); resp.GetSuccess() || !strings.Contains(resp.GetCrErrmsg(), "not allowed to clients admitted by --service-group") {
			t.Errorf("group member dumping with %s: %v", name, resp)
		}
	}
	// A page server reads the parent chain as root too.
	ps := &rpc.CriuReq{Type: rpc.CriuReqType_PAGE_SERVER.Enum(), Opts: &rpc.CriuOpts{ImagesDirFd: ptr(int32(0)), ParentImg: ptr("/root")}}
	if resp, _ := runClient(t, nobody, s.Addr(), ps, own); resp.GetSuccess() || !strings.Contains(resp.GetCrErrmsg(), "not allowed to clients admitted by --service-group") {
		t.Errorf("group member starting a page server with parent_img: %v", resp)
	}
	// Nor bind a port the client could not bind itself.
	ps = &rpc.CriuReq{Type: rpc.CriuReqType_PAGE_SERVER.Enum(), Opts: &rpc.CriuOpts{ImagesDirFd: ptr(int32(0)), Ps: &rpc.CriuPageServerInfo{Port: ptr(int32(80))}}}
	if resp, _ := runClient(t, nobody, s.Addr(), ps, own); resp.GetSuccess() || !strings.Contains(resp.GetCrErrmsg(), "port 80: not allowed to clients admitted by --service-group") {
		t.Errorf("group member starting a page server on port 80: %v", resp)
	}
	// freeze_cgroup names a directory the client made, looking like a
	// cgroup holding its process, whose cgroup.freeze links to a file
	// only root may write: the dump must not write through it.
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cg := filepath.Join(own, "cg")
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(mine.Process.Pid)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cg, "cgroup.events"), []byte("populated 1\nfrozen 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(cg, "cgroup.freeze")); err != nil {
		t.Fatal(err)
	}
	req := dump(mine.Process.Pid)
	req.Opts.FreezeCgroup = ptr(cg)
	if resp, _ := runClient(t, nobody, s.Addr(), req, own); resp.GetSuccess() || !strings.Contains(resp.GetCrErrmsg(), "freeze_cgroup: not allowed to clients admitted by --service-group") {
		t.Errorf("group member dumping with freeze_cgroup: %v", resp)
	}
	if b, err := os.ReadFile(victim); err != nil || string(b) != "precious\n" {
		t.Errorf("file behind the client's cgroup.freeze link: %q, %v", b, err)
	}
	if tr := tracer(mine.Process.Pid); tr != "0" {
		t.Errorf("its process after the refused freeze_cgroup dump: tracer %s", tr)
	}
}

// A --service-group client's process in a network namespace the client
// does not administer: the dump's network lock would lock that namespace
// whole, so the dump is refused (untouched) unless network_lock is SKIP.
func TestGroupClientForeignNetns(t *testing.T) {
	needRoot(t)
	s := serve(t, Config{Group: 65534, Hooks: Hooks{Unsupported: func(string, string) bool { return false }}})
	openDirs(t, filepath.Dir(s.Addr()))
	own := filepath.Join(t.TempDir(), "own")
	if err := os.Mkdir(own, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(own, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	openDirs(t, filepath.Dir(own))
	// Made by root: the namespace belongs to the initial user namespace.
	cmd := exec.Command("/bin/sleep", "600")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: nobody, Setsid: true, Cloneflags: syscall.CLONE_NEWNET}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	pid := cmd.Process.Pid
	req := &rpc.CriuReq{Type: rpc.CriuReqType_DUMP.Enum(), Opts: &rpc.CriuOpts{ImagesDirFd: ptr(int32(0)), Pid: ptr(int32(pid)), LeaveRunning: ptr(true)}}
	resp, _ := runClient(t, nobody, s.Addr(), req, own)
	if resp.GetSuccess() || !strings.Contains(resp.GetCrErrmsg(), "is not the client's (its user namespace belongs to uid 0)") {
		t.Errorf("group member dumping its process in root's network namespace: %v", resp)
	}
	if _, err := os.Stat(filepath.Join(own, "inventory.img")); err == nil {
		t.Error("images written for a refused dump")
	}
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if !strings.Contains(string(b), "TracerPid:\t0\n") {
		t.Errorf("its process after the refusal:\n%s", b)
	}
	req.Opts.NetworkLock = rpc.CriuNetworkLockMethod_SKIP.Enum()
	if resp, _ := runClient(t, nobody, s.Addr(), req, own); !resp.GetSuccess() {
		t.Errorf("group member dumping it with network_lock SKIP: %v", resp)
	}
}
