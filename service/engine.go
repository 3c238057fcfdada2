package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"github.com/checkpoint-restore/go-criu/v8/rpc"
	"golang.org/x/sys/unix"

	"godwit/dumper"
	"godwit/internal/actions"
	"godwit/internal/daemon"
	"godwit/internal/engineopts"
	"godwit/internal/logging"
	"godwit/internal/netlock"
	"godwit/internal/opts"
	"godwit/restorer"
)

// Hooks connect the RPC to the command line's own decisions, which live in
// cmd/godwit: a request is accepted, refused and run exactly as the
// command with the same options would be.
type Hooks struct {
	// Unsupported reports whether the CLI refuses command's option
	// (criu(8)'s long name) as not supported yet.
	Unsupported func(command, option string) bool
	// PreDump runs that command (the CLI's own function); nil: refused.
	// (Lazy pages have no request of their own in CRIU's RPC: they are
	// DUMP's and RESTORE's lazy_pages, --lazy-pages of those commands.)
	PreDump func(ctx context.Context, o *opts.Options, s *actions.Scripts) error
	// Executable is the godwit binary that PAGE_SERVER runs as
	// `godwit page-server`.
	Executable string
}

// commandOf is the criu(8) command a request type runs.
var commandOf = map[rpc.CriuReqType]string{
	rpc.CriuReqType_DUMP:             "dump",
	rpc.CriuReqType_PRE_DUMP:         "pre-dump",
	rpc.CriuReqType_SINGLE_PRE_DUMP:  "pre-dump",
	rpc.CriuReqType_RESTORE:          "restore",
	rpc.CriuReqType_PAGE_SERVER:      "page-server",
	rpc.CriuReqType_PAGE_SERVER_CHLD: "page-server",
}

// request is one engine request's setup: its options and the directories
// they name, open until done.
type request struct {
	o         *opts.Options
	dir, work *os.File
	ps        *os.File // the client's page-server socket (ps.fd), or nil
}

func (q *request) close() {
	q.dir.Close()
	if q.work != q.dir {
		q.work.Close()
	}
	if q.ps != nil {
		q.ps.Close()
	}
}

// options maps req's criu_opts onto the CLI's options for command, with
// -D and -W naming the directories the request passes (as /proc/self/fd
// paths that stay bound to them, whatever happens to their names).
func (c *Conn) options(command string, r *rpc.CriuOpts) (*request, error) {
	o, err := mapOptions(command, r, c.hooks.Unsupported)
	if err != nil {
		return nil, err
	}
	create := command != "restore"
	d, err := c.imagesDir(r, create)
	if err != nil {
		return nil, err
	}
	dir := os.NewFile(uintptr(d.FD()), "images_dir") // owns d's descriptor now
	q := &request{o: o, dir: dir, work: dir}
	if r.WorkDirFd != nil {
		wfd, err := c.clientFD(r.GetWorkDirFd(), "work_dir_fd", unix.S_IFDIR)
		if err != nil {
			dir.Close()
			return nil, err
		}
		q.work = os.NewFile(uintptr(wfd), "work_dir")
		if err := c.peer.mayUseDir(wfd); err != nil {
			q.close()
			return nil, fmt.Errorf("work_dir_fd: %w", err)
		}
	}
	if ps := r.GetPs(); ps != nil && ps.Fd != nil {
		// CRIU takes ps.fd in swrk mode only, as its own inherited
		// descriptor; godwit takes the client's descriptor of that
		// number (the same socket when it was inherited), in either mode.
		sfd, err := c.clientFD(ps.GetFd(), "ps.fd", unix.S_IFSOCK)
		if err != nil {
			q.close()
			return nil, err
		}
		q.ps = os.NewFile(uintptr(sfd), "ps_socket")
		o.PsSocket = sfd
	}
	o.ImagesDir = "/proc/self/fd/" + strconv.Itoa(int(q.dir.Fd()))
	o.WorkDir = "/proc/self/fd/" + strconv.Itoa(int(q.work.Fd()))
	return q, nil
}

// clientFD takes descriptor fd of the client (pidfd_getfd through the
// pidfd of the process that connected), which must be of file type mode
// (unix.S_IFDIR, unix.S_IFSOCK).
func (c *Conn) clientFD(fd int32, what string, mode uint32) (int, error) {
	if fd < 0 {
		return -1, fmt.Errorf("%s %d: bad descriptor", what, fd)
	}
	if c.pidfd < 0 {
		return -1, fmt.Errorf("%s %d: the client's pidfd is unknown (SO_PEERPIDFD needs Linux 6.5)", what, fd)
	}
	nfd, err := unix.PidfdGetfd(c.pidfd, int(fd), 0)
	if err != nil {
		return -1, fmt.Errorf("%s %d of the client: %w", what, fd, err)
	}
	unix.CloseOnExec(nfd)
	var st unix.Stat_t
	if err := unix.Fstat(nfd, &st); err != nil || st.Mode&unix.S_IFMT != mode {
		unix.Close(nfd)
		kind := "a directory"
		if mode == unix.S_IFSOCK {
			kind = "a socket"
		}
		return -1, fmt.Errorf("%s %d of the client is not %s", what, fd, kind)
	}
	return nfd, nil
}

// runEngine answers DUMP, PRE_DUMP, SINGLE_PRE_DUMP, RESTORE and
// PAGE_SERVER(_CHLD).
func (c *Conn) runEngine(t rpc.CriuReqType, req *rpc.CriuReq) (*rpc.CriuResp, error) {
	command := commandOf[t]
	q, err := c.options(command, req.GetOpts())
	if err != nil {
		return nil, err
	}
	defer q.close()
	o := q.o
	if t == rpc.CriuReqType_DUMP || t == rpc.CriuReqType_PRE_DUMP || t == rpc.CriuReqType_SINGLE_PRE_DUMP {
		if c.peer.delegated && t != rpc.CriuReqType_DUMP {
			// A round reads the tree while it runs: a task may change
			// owners (exec a set-user-ID program) while it is read, and
			// without track_mem and parent_img (below) the round is of
			// no use to a later dump anyway.
			return nil, fmt.Errorf("%s: not allowed to clients admitted by --service-group (a round reads a running tree)", command)
		}
		if o.Tree == 0 {
			o.Tree = int(c.peer.cred.Pid) // as CRIU: no pid dumps the client
		}
		if err := c.peer.mayDump(o.Tree); err != nil {
			return nil, err
		}
	}
	if c.peer.delegated {
		if err := refuseDelegated(o); err != nil {
			return nil, err
		}
	}
	if t == rpc.CriuReqType_RESTORE {
		if c.peer.delegated {
			return nil, errors.New("restore: not allowed to clients admitted by --service-group (a restore opens files and sets credentials as root)")
		}
		o.RestoreDetach = true // the RPC's restore never waits
	}
	if err := o.Validate(command); err != nil {
		return nil, err
	}
	if t == rpc.CriuReqType_PAGE_SERVER || t == rpc.CriuReqType_PAGE_SERVER_CHLD {
		if c.peer.delegated && q.ps == nil {
			if err := mayBindPort(o.Port); err != nil {
				return nil, err
			}
		}
		return c.startPageServer(q, t == rpc.CriuReqType_PAGE_SERVER)
	}

	l, closeLog, err := logging.Open(o)
	if err != nil {
		return nil, err
	}
	defer closeLog()
	resp, err := c.run(t, q, l, req.GetOpts().GetNotifyScripts())
	if err != nil && l.ToFile() {
		// The log's last line names the failure, as the CLI's does.
		l.Errorf("%v", err)
	}
	return resp, err
}

// run runs the request's command with l its log. Each request has its own
// log (in its context) and its own state, so requests of several clients
// run side by side: none waits for another, neither while a client's
// notify callback runs nor after it, so no request stretches the time
// another one keeps its tree frozen.
func (c *Conn) run(t rpc.CriuReqType, q *request, l *logging.Logger, notify bool) (*rpc.CriuResp, error) {
	o := q.o
	ctx := logging.NewContext(context.Background(), l)
	scripts := &actions.Scripts{ImagesDir: o.ImagesDir}
	if notify {
		// The engine waits for this client's answer (its steps stay in
		// order: this request's goroutine is blocked here until then).
		scripts.Notify = c.notify
	}
	resp := &rpc.CriuResp{Type: t.Enum(), Success: ptr(true)}
	switch t {
	case rpc.CriuReqType_DUMP:
		do, err := engineopts.Dump(o)
		if err != nil {
			return nil, err
		}
		do.Admit = func(pids []int) error {
			if err := c.peer.mayDumpFrozen(o.Tree, pids); err != nil {
				return err
			}
			if do.NetworkLock == netlock.Skip {
				return nil
			}
			return c.peer.mayLockNetns(o.Tree)
		}
		res, err := dumper.DumpContext(ctx, do, scripts)
		if err != nil {
			return nil, err
		}
		if o.DisplayStats {
			l.Warnf("%s", strings.TrimSuffix(res.FormatStats(), "\n"))
		}
		resp.Dump = &rpc.CriuDumpResp{Restored: ptr(false)}
	case rpc.CriuReqType_RESTORE:
		var stats strings.Builder
		ro, err := engineopts.Restore(o, &stats)
		if err != nil {
			return nil, err
		}
		r, err := restorer.RestoreContext(ctx, ro, scripts)
		if err != nil {
			return nil, err
		}
		pid := r.PID()
		r.Close()
		c.children[pid] = true
		if stats.Len() > 0 {
			l.Warnf("%s", strings.TrimSuffix(stats.String(), "\n"))
		}
		resp.Restore = &rpc.CriuRestoreResp{Pid: ptr(int32(pid))}
	case rpc.CriuReqType_PRE_DUMP, rpc.CriuReqType_SINGLE_PRE_DUMP:
		if c.hooks.PreDump == nil {
			return nil, errors.New("pre-dump is not supported yet")
		}
		if err := c.hooks.PreDump(ctx, o, scripts); err != nil {
			return nil, err
		}
	}
	return resp, nil
}

// notify runs one notify_scripts callback: the action goes to the client
// as a NOTIFY response, and the client's NOTIFY request says whether its
// callback succeeded (CRIU's protocol; the pid goes with setup-namespaces
// and post-restore, as CRIU sends it).
func (c *Conn) notify(action string, pid int) error {
	n := &rpc.CriuNotify{Script: ptr(action)}
	if action == actions.SetupNamespaces || action == actions.PostRestore {
		n.Pid = ptr(int32(pid))
	}
	if err := c.writeResponse(&rpc.CriuResp{Type: rpc.CriuReqType_NOTIFY.Enum(), Success: ptr(true), Notify: n}); err != nil {
		return err
	}
	outer := c.passed // the request's own descriptor stays the request's
	c.passed = -1
	req, err := c.readRequest()
	if c.passed >= 0 {
		unix.Close(c.passed)
	}
	c.passed = outer
	if errors.Is(err, io.EOF) {
		return errors.New("the RPC client closed the connection")
	}
	if err != nil {
		return err
	}
	if req.GetType() != rpc.CriuReqType_NOTIFY {
		return fmt.Errorf("the RPC client answered with %v, not NOTIFY", req.GetType())
	}
	if !req.GetNotifySuccess() {
		return errors.New("the RPC client's callback failed")
	}
	return nil
}

// waitPid answers WAIT_PID: the wait status of a child of this process
// (a task it restored, a page server it started). A client admitted by
// --service-group may wait only for what its own requests started.
func (c *Conn) waitPid(pid uint32) (*rpc.CriuResp, error) {
	if pid == 0 || pid > 1<<22 { // PID_MAX_LIMIT
		return nil, fmt.Errorf("wait_pid: bad pid %d", pid)
	}
	if c.peer.delegated && !c.children[int(pid)] {
		return nil, fmt.Errorf("wait_pid %d: not started by this client", pid)
	}
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(int(pid), &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return &rpc.CriuResp{Type: rpc.CriuReqType_WAIT_PID.Enum(), Success: ptr(false),
				CrErrno: ptr(int32(err.(unix.Errno))), CrErrmsg: ptr(fmt.Sprintf("wait %d: %v", pid, err))}, nil
		}
		break
	}
	delete(c.children, int(pid))
	return &rpc.CriuResp{Type: rpc.CriuReqType_WAIT_PID.Enum(), Success: ptr(true), Status: ptr(int32(ws))}, nil
}

// refuseDelegated refuses the options that make godwit, as root, open a
// path a client admitted by --service-group names: the path is reached
// with root's rights, through directories and links the client controls.
func refuseDelegated(o *opts.Options) error {
	if o.PrevImages != "" || o.AutoDedup || o.TrackMem {
		// A parent chain is followed (and, with auto_dedup, punched):
		// it could reach another user's images.
		return errors.New("parent_img, track_mem and auto_dedup are not allowed to clients admitted by --service-group (the parent chain is read and punched as root)")
	}
	if o.FreezeCgroup != "" {
		// The cgroup's files are read and written: it could freeze
		// another user's cgroup.
		return errors.New("freeze_cgroup: not allowed to clients admitted by --service-group (the cgroup's files are written as root)")
	}
	if o.TLSCACert != "" || o.TLSCACRL != "" || o.TLSCert != "" || o.TLSKey != "" {
		// Read as root: a client could name root's own key.
		return errors.New("tls_cacert, tls_cacrl, tls_cert and tls_key: not allowed to clients admitted by --service-group (the files are read as root)")
	}
	return nil
}

// mayBindPort refuses a page server port a client admitted by
// --service-group could not bind itself (below
// net.ipv4.ip_unprivileged_port_start): the server binds it as root.
func mayBindPort(port int) error {
	if port == 0 {
		return nil // the kernel picks an unprivileged one
	}
	start := 1024
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start"); err == nil {
		if v, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			start = v
		}
	}
	if port < start {
		return fmt.Errorf("page-server: port %d: not allowed to clients admitted by --service-group (below net.ipv4.ip_unprivileged_port_start %d)", port, start)
	}
	return nil
}

// startPageServer answers PAGE_SERVER and PAGE_SERVER_CHLD: it runs
// `godwit page-server` with the request's options (the CLI's own code
// path), the images and work directories passed as descriptors, and
// answers once the server is ready, with its pid and port. As CRIU's, the
// server exits after one session (its callers wait for that). PAGE_SERVER's
// server gets a session of its own (CRIU daemonizes it); PAGE_SERVER_CHLD's
// stays this process's child, for WAIT_PID.
func (c *Conn) startPageServer(q *request, detach bool) (*rpc.CriuResp, error) {
	if c.hooks.Executable == "" {
		return nil, errors.New("page-server: no godwit executable to run")
	}
	o := q.o
	args := []string{"page-server", "--single-session", "-D", "/proc/self/fd/3", "-W", "/proc/self/fd/4", "--status-fd", "5",
		"-v" + strconv.Itoa(o.Verbosity), "-o", o.LogFile, "--port", strconv.Itoa(o.Port)}
	if o.Address != "" && q.ps == nil {
		args = append(args, "--address", o.Address)
	}
	if q.ps != nil {
		args = append(args, "--ps-socket", "6") // ExtraFiles[3]
	}
	if o.PrevImages != "" {
		args = append(args, "--prev-images-dir", o.PrevImages)
	}
	if o.LazyPages {
		args = append(args, "--lazy-pages")
	}
	if o.TLS {
		args = append(args, "--tls")
	}
	if o.TLSNoCNVerify {
		args = append(args, "--tls-no-cn-verify")
	}
	for _, f := range []struct{ name, v string }{{"--tls-cacert", o.TLSCACert}, {"--tls-cacrl", o.TLSCACRL}, {"--tls-cert", o.TLSCert}, {"--tls-key", o.TLSKey}} {
		if f.v != "" {
			args = append(args, f.name, f.v)
		}
	}
	sr, sw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("page-server: %w", err)
	}
	defer sr.Close()
	cmd := exec.Command(c.hooks.Executable, args...)
	cmd.ExtraFiles = []*os.File{q.dir, q.work, sw}
	if q.ps != nil {
		cmd.ExtraFiles = append(cmd.ExtraFiles, q.ps)
	}
	var out, errOut strings.Builder
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		sw.Close()
		return nil, fmt.Errorf("page-server: %w", err)
	}
	cmd.Stderr = &errOut
	daemon.Detached(cmd)
	if detach {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	err = cmd.Start()
	sw.Close()
	if err != nil {
		return nil, fmt.Errorf("page-server: %w", err)
	}
	// Until it is ready the server prints "Port: N" (--port 0) and any
	// startup error; at Ready it lets go of both streams.
	io.Copy(&out, stdout)
	var ready [1]byte
	if n, _ := sr.Read(ready[:]); n != 1 || ready[0] != 0 {
		werr := cmd.Wait()
		msg := strings.TrimSpace(errOut.String())
		if msg == "" {
			msg = fmt.Sprint(werr)
		}
		return nil, fmt.Errorf("page-server did not start: %s", msg)
	}
	port := o.Port
	for _, ln := range strings.Split(out.String(), "\n") {
		if v, ok := strings.CutPrefix(ln, "Port: "); ok {
			port, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	pid := cmd.Process.Pid
	if detach {
		go cmd.Wait() // reaped here: nobody will ask for it
	} else {
		c.children[pid] = true
	}
	return &rpc.CriuResp{Success: ptr(true), Ps: &rpc.CriuPageServerInfo{Pid: ptr(int32(pid)), Port: ptr(int32(port))}}, nil
}
