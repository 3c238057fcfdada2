// Package service speaks CRIU's RPC protocol (criu_req / criu_resp protobufs,
// one per SOCK_SEQPACKET message) so that go-criu, runc and podman can drive
// godwit: `godwit swrk FD` over an inherited socket, and `godwit service`
// on a unix socket.
package service

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/rpc"
	"golang.org/x/sys/unix"

	"godwit/internal/cpuinfo"
	"godwit/internal/images"
	"godwit/internal/kerndat"
	"godwit/internal/logging"
)

// maxRequest bounds one request message. CRIU's own requests are far below
// this; a peer cannot make the service allocate more.
const maxRequest = 1 << 20

// CRIU RPC level godwit answers VERSION with: clients such as runc gate
// features on it, and godwit speaks the go-criu v8 (CRIU 4.x) protocol.
const (
	rpcMajor = 4
	rpcMinor = 1
)

// maxPassedFDs is how many descriptors one request may carry (SCM_RIGHTS):
// the images directory.
const maxPassedFDs = 1

// Version is godwit's own version, reported in criu_version.name.
var Version = "godwit"

// Conn is one RPC peer.
type Conn struct {
	uc    *net.UnixConn
	raw   syscall.RawConn
	peer  peer
	pidfd int           // the peer's pidfd (SO_PEERPIDFD), -1 if unknown
	idle  time.Duration // longest wait for a request; 0: no limit
	// passed is the descriptor that came with the request being handled
	// (SCM_RIGHTS), -1 if none.
	passed int
	hooks  Hooks
	// children are the processes this connection's requests made that
	// WAIT_PID may wait for: restored tasks, PAGE_SERVER_CHLD servers.
	children map[int]bool
}

// NewConn wraps a connected SOCK_SEQPACKET socket, as `swrk FD` inherits
// it. The peer must pass the same check as a service client (see Policy);
// f stays the caller's. h connects requests to the command line's code.
func NewConn(f *os.File, h Hooks) (*Conn, error) {
	nc, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("rpc socket: %w", err)
	}
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		nc.Close()
		return nil, errors.New("rpc socket: not a unix socket")
	}
	c, err := newConn(uc, Policy{Group: -1}, 0, h)
	if err != nil {
		uc.Close()
		return nil, err
	}
	return c, nil
}

// newConn checks the peer of uc against p and wraps it. idle bounds the
// wait for each request.
func newConn(uc *net.UnixConn, p Policy, idle time.Duration, h Hooks) (*Conn, error) {
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("rpc socket: %w", err)
	}
	c := &Conn{uc: uc, raw: raw, pidfd: -1, passed: -1, idle: idle, hooks: h, children: map[int]bool{}}
	var typ int
	var serr error
	err = raw.Control(func(fd uintptr) {
		typ, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
		if serr != nil || typ != unix.SOCK_SEQPACKET {
			return
		}
		c.peer, serr = peerOf(int(fd))
		if serr != nil {
			return
		}
		// The peer's pidfd, taken from the socket, names the process that
		// connected even if its pid is reused later: images_dir_fd is
		// fetched through it (pidfd_getfd), never through /proc/PID.
		if pfd, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD); err == nil {
			unix.CloseOnExec(pfd)
			c.pidfd = pfd
		}
	})
	if err == nil {
		err = serr
	}
	if err == nil && typ != unix.SOCK_SEQPACKET {
		err = fmt.Errorf("type %d is not SOCK_SEQPACKET", typ)
	}
	if err != nil {
		c.closePidfd()
		return nil, fmt.Errorf("rpc socket: %w", err)
	}
	if err := p.admit(&c.peer); err != nil {
		c.closePidfd()
		return nil, err
	}
	return c, nil
}

func (c *Conn) closePidfd() {
	if c.pidfd >= 0 {
		unix.Close(c.pidfd)
		c.pidfd = -1
	}
}

// Close closes the connection.
func (c *Conn) Close() error {
	c.closePidfd()
	return c.uc.Close()
}

// errIdle ends a connection that sent no request within the idle timeout.
var errIdle = errors.New("client idle for too long")

// readRequest reads one message and the descriptor that may come with it.
// It returns io.EOF when the peer closed.
func (c *Conn) readRequest() (*rpc.CriuReq, error) {
	if c.idle > 0 {
		c.uc.SetReadDeadline(time.Now().Add(c.idle))
	}
	var (
		n, oobn, flags int
		buf            []byte
		oob            = make([]byte, unix.CmsgSpace(4*maxPassedFDs))
		rerr           error
	)
	err := c.raw.Read(func(fd uintptr) bool {
		// Peek at the size first so that a request is read whole or refused.
		n, _, _, _, rerr = unix.Recvmsg(int(fd), nil, nil, unix.MSG_PEEK|unix.MSG_TRUNC|unix.MSG_DONTWAIT)
		if rerr == unix.EAGAIN {
			return false
		}
		if rerr != nil || n == 0 {
			return true
		}
		if n > maxRequest {
			buf = make([]byte, 1) // drop it, and any descriptors with it
		} else {
			buf = make([]byte, n)
		}
		_, oobn, flags, _, rerr = unix.Recvmsg(int(fd), buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
		return rerr != unix.EAGAIN
	})
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil, errIdle
	}
	if err == nil {
		err = rerr
	}
	if err != nil {
		return nil, fmt.Errorf("read request: %w", err)
	}
	if n == 0 {
		return nil, io.EOF
	}
	fds, ferr := parseRights(oob[:oobn])
	if ferr == nil && flags&unix.MSG_CTRUNC != 0 {
		ferr = fmt.Errorf("more than %d descriptor passed with a request", maxPassedFDs)
	}
	if ferr == nil && n > maxRequest {
		ferr = fmt.Errorf("request of %d bytes is larger than %d", n, maxRequest)
	}
	if ferr != nil {
		closeAll(fds)
		return nil, ferr
	}
	req, err := decodeRequest(buf)
	if err != nil {
		closeAll(fds)
		return nil, err
	}
	if len(fds) == 1 {
		c.passed = fds[0]
	}
	return req, nil
}

// parseRights returns the descriptors of SCM_RIGHTS messages in oob.
func parseRights(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("request control data: %w", err)
	}
	var fds []int
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_RIGHTS {
			continue
		}
		r, err := unix.ParseUnixRights(&m)
		if err != nil {
			closeAll(fds)
			return nil, fmt.Errorf("request control data: %w", err)
		}
		fds = append(fds, r...)
	}
	if len(fds) > maxPassedFDs {
		closeAll(fds)
		return nil, fmt.Errorf("more than %d descriptor passed with a request", maxPassedFDs)
	}
	return fds, nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// decodeRequest parses one criu_req message: untrusted bytes of a client.
func decodeRequest(b []byte) (*rpc.CriuReq, error) {
	req := &rpc.CriuReq{}
	if err := req.UnmarshalVT(b); err != nil {
		return nil, fmt.Errorf("decode request: %w", err)
	}
	return req, nil
}

func (c *Conn) writeResponse(resp *rpc.CriuResp) error {
	b, err := resp.MarshalVT()
	if err != nil {
		return fmt.Errorf("encode response: %w", err)
	}
	if c.idle > 0 {
		c.uc.SetWriteDeadline(time.Now().Add(c.idle))
	}
	if _, err := c.uc.Write(b); err != nil {
		return fmt.Errorf("write response: %w", err)
	}
	return nil
}

// refuse answers with an error, so that the client is not left waiting,
// before the connection is dropped.
func (c *Conn) refuse(err error) {
	refuse(c.uc, err)
}

// refuse sends err as a response and ends the connection gently: closing
// a socket with requests still unread would make the kernel reset the
// client's side (ECONNRESET) before it reads the answer, so the rest of
// what it sends is read and dropped, for a second at most.
func refuse(uc *net.UnixConn, err error) {
	uc.SetWriteDeadline(time.Now().Add(time.Second))
	if b, merr := errorResponse(err).MarshalVT(); merr == nil {
		uc.Write(b)
	}
	uc.CloseWrite()
	uc.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 4096)
	for {
		if _, err := uc.Read(buf); err != nil {
			return
		}
	}
}

func errorResponse(err error) *rpc.CriuResp {
	return &rpc.CriuResp{Type: rpc.CriuReqType_EMPTY.Enum(), Success: ptr(false), CrErrmsg: ptr(err.Error())}
}

// Serve answers requests until the peer closes the connection, or stays
// idle longer than the connection allows.
func (c *Conn) Serve() error {
	for {
		req, err := c.readRequest()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			// Give up on a peer that speaks garbage or says nothing.
			c.refuse(err)
			return err
		}
		resp := c.handle(req)
		if c.passed >= 0 {
			unix.Close(c.passed)
			c.passed = -1
		}
		if err := c.writeResponse(resp); err != nil {
			return err
		}
	}
}

// handle runs one request and builds its response.
func (c *Conn) handle(req *rpc.CriuReq) *rpc.CriuResp {
	t := req.GetType()
	resp := &rpc.CriuResp{Type: t.Enum(), Success: ptr(true)}
	fail := func(err error) *rpc.CriuResp {
		logging.Errorf("rpc %s: %v", t, err)
		resp.Success = ptr(false)
		resp.CrErrmsg = ptr(err.Error())
		return resp
	}
	switch t {
	case rpc.CriuReqType_VERSION:
		resp.Version = &rpc.CriuVersion{
			MajorNumber: ptr[int32](rpcMajor),
			MinorNumber: ptr[int32](rpcMinor),
			Name:        ptr(Version),
		}
	case rpc.CriuReqType_CHECK:
		code, err := kerndat.Run(io.Discard, kerndat.Options{})
		if err != nil {
			return fail(err)
		}
		if code != 0 {
			return fail(errors.New("kernel check failed: run `godwit check` for details"))
		}
	case rpc.CriuReqType_FEATURE_CHECK:
		resp.Features = featureCheck(req.GetFeatures())
	case rpc.CriuReqType_DUMP, rpc.CriuReqType_PRE_DUMP, rpc.CriuReqType_SINGLE_PRE_DUMP, rpc.CriuReqType_RESTORE,
		rpc.CriuReqType_PAGE_SERVER, rpc.CriuReqType_PAGE_SERVER_CHLD:
		r, err := c.runEngine(t, req)
		if err != nil {
			return fail(err)
		}
		r.Type = t.Enum()
		return r
	case rpc.CriuReqType_WAIT_PID:
		r, err := c.waitPid(req.GetPid())
		if err != nil {
			return fail(err)
		}
		return r
	case rpc.CriuReqType_CPUINFO_DUMP, rpc.CriuReqType_CPUINFO_CHECK:
		d, err := c.imagesDir(req.GetOpts(), t == rpc.CriuReqType_CPUINFO_DUMP)
		if err != nil {
			return fail(err)
		}
		defer d.Close()
		if t == rpc.CriuReqType_CPUINFO_DUMP {
			err = cpuinfo.Dump(d)
		} else {
			caps := cpuinfo.DefaultCaps
			if o := req.GetOpts(); o != nil && o.CpuCap != nil {
				caps = cpuinfo.Caps(o.GetCpuCap()) // CRIU's bit values
			}
			err = cpuinfo.Check(d, caps)
		}
		if err != nil {
			return fail(err)
		}
	default:
		name := strings.ToLower(strings.ReplaceAll(t.String(), "_", "-"))
		return fail(fmt.Errorf("%s is not supported yet", name))
	}
	return resp
}

// featureCheck answers FEATURE_CHECK: each feature the client asked about
// is set to whether godwit's command that needs it works on this kernel
// today (kerndat's table), not to kernel support alone.
func featureCheck(asked *rpc.CriuFeatures) *rpc.CriuFeatures {
	out := &rpc.CriuFeatures{}
	if asked == nil {
		return out
	}
	works := func(name string) *bool {
		r, err := kerndat.Probe(name)
		return ptr(err == nil && r.OK())
	}
	if asked.MemTrack != nil {
		out.MemTrack = works("mem_dirty_track")
	}
	if asked.LazyPages != nil {
		out.LazyPages = works("lazy_pages")
	}
	if asked.PidfdStore != nil {
		out.PidfdStore = works("pidfd_store")
	}
	return out
}

// imagesDir opens the images directory a request names. images_dir_fd is
// a descriptor of the client: the one it passed with the request
// (SCM_RIGHTS; its number is then not looked at), or else the client's own
// fd of that number, taken with pidfd_getfd through the pidfd of the
// process that connected, which cannot name another process even if the
// client's pid is reused. images_dir is a path, for fully admitted clients
// only (see Policy).
func (c *Conn) imagesDir(o *rpc.CriuOpts, create bool) (*images.Dir, error) {
	if o == nil {
		return nil, errors.New("request has no options")
	}
	if fd := o.GetImagesDirFd(); fd >= 0 || c.passed >= 0 {
		dfd := c.passed
		if dfd < 0 {
			if c.pidfd < 0 {
				return nil, fmt.Errorf("images_dir_fd %d: the client's pidfd is unknown (SO_PEERPIDFD needs Linux 6.5); pass the descriptor with the request (SCM_RIGHTS)", fd)
			}
			nfd, err := unix.PidfdGetfd(c.pidfd, int(fd), 0)
			if err != nil {
				return nil, fmt.Errorf("images_dir_fd %d of the client: %w", fd, err)
			}
			defer unix.Close(nfd)
			dfd = nfd
		}
		d, err := images.OpenFD(dfd)
		if err != nil {
			return nil, fmt.Errorf("images_dir_fd: %w", err)
		}
		if err := c.peer.mayUseDir(d.FD()); err != nil {
			d.Close()
			return nil, err
		}
		return d, nil
	}
	if o.ImagesDir == nil {
		return nil, errors.New("request names no images directory")
	}
	if c.peer.delegated {
		return nil, errors.New("images_dir: a client admitted by --service-group must pass images_dir_fd")
	}
	return images.Open(o.GetImagesDir(), create)
}

func ptr[T any](v T) *T { return &v }
