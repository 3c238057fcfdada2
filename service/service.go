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
	"strconv"
	"strings"

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

// maxClients bounds the clients served at once; more wait to be accepted.
const maxClients = 16

// Version is godwit's own version, reported in criu_version.name.
var Version = "godwit"

// Conn is one RPC peer.
type Conn struct {
	f    *os.File
	peer int // pid of the client, for resolving fds it names (images_dir_fd)
}

// NewConn wraps a connected SOCK_SEQPACKET socket.
func NewConn(f *os.File) (*Conn, error) {
	typ, err := unix.GetsockoptInt(int(f.Fd()), unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return nil, fmt.Errorf("rpc socket: %w", err)
	}
	if typ != unix.SOCK_SEQPACKET {
		return nil, fmt.Errorf("rpc socket: type %d is not SOCK_SEQPACKET", typ)
	}
	c := &Conn{f: f}
	if cred, err := unix.GetsockoptUcred(int(f.Fd()), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
		c.peer = int(cred.Pid)
	}
	return c, nil
}

// readRequest reads one message. It returns io.EOF when the peer closed.
func (c *Conn) readRequest() (*rpc.CriuReq, error) {
	fd := int(c.f.Fd())
	// Peek at the size first so that a request is read whole or refused.
	n, _, _, _, err := unix.Recvmsg(fd, nil, nil, unix.MSG_PEEK|unix.MSG_TRUNC)
	if err != nil {
		return nil, fmt.Errorf("read request: %w", err)
	}
	if n == 0 {
		return nil, io.EOF
	}
	if n > maxRequest {
		unix.Recvmsg(fd, make([]byte, 1), nil, 0) // drop it
		return nil, fmt.Errorf("request of %d bytes is larger than %d", n, maxRequest)
	}
	buf := make([]byte, n)
	m, _, _, _, err := unix.Recvmsg(fd, buf, nil, 0)
	if err != nil {
		return nil, fmt.Errorf("read request: %w", err)
	}
	req := &rpc.CriuReq{}
	if err := req.UnmarshalVT(buf[:m]); err != nil {
		return nil, fmt.Errorf("decode request: %w", err)
	}
	return req, nil
}

func (c *Conn) writeResponse(resp *rpc.CriuResp) error {
	b, err := resp.MarshalVT()
	if err != nil {
		return fmt.Errorf("encode response: %w", err)
	}
	if _, err := unix.Write(int(c.f.Fd()), b); err != nil {
		return fmt.Errorf("write response: %w", err)
	}
	return nil
}

// Serve answers requests until the peer closes the connection.
func (c *Conn) Serve() error {
	for {
		req, err := c.readRequest()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			// Answer once so that the client is not left waiting, then
			// give up on a peer that speaks garbage.
			c.writeResponse(&rpc.CriuResp{Type: rpc.CriuReqType_EMPTY.Enum(), Success: ptr(false), CrErrmsg: ptr(err.Error())})
			return err
		}
		if err := c.writeResponse(c.handle(req)); err != nil {
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

// imagesDir opens the images directory a request names: images_dir_fd is a
// descriptor in the client's process (reached through /proc/PID/fd), as
// CRIU's clients pass it; images_dir is a path.
func (c *Conn) imagesDir(o *rpc.CriuOpts, create bool) (*images.Dir, error) {
	if o == nil {
		return nil, errors.New("request has no options")
	}
	if fd := o.GetImagesDirFd(); fd >= 0 {
		if c.peer <= 0 {
			return nil, errors.New("images_dir_fd given but the peer's pid is unknown")
		}
		return images.Open("/proc/"+strconv.Itoa(c.peer)+"/fd/"+strconv.Itoa(int(fd)), false)
	}
	if o.ImagesDir == nil {
		return nil, errors.New("request names no images directory")
	}
	return images.Open(o.GetImagesDir(), create)
}

// Listen serves CRIU RPC on a unix SOCK_SEQPACKET socket at path, one
// goroutine per client, until the listener fails. ready, if not nil, is
// called once the socket accepts connections.
func Listen(path string, ready func()) error {
	os.Remove(path) // a stale socket of an earlier run
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return fmt.Errorf("listen on %s: %w", path, err)
	}
	defer l.Close()
	if ready != nil {
		ready()
	}
	// Each client holds an OS thread in a blocking recvmsg: bound them.
	slots := make(chan struct{}, maxClients)
	for {
		uc, err := l.AcceptUnix()
		if err != nil {
			return fmt.Errorf("accept on %s: %w", path, err)
		}
		slots <- struct{}{}
		go func() {
			defer func() { <-slots }()
			defer uc.Close()
			f, err := uc.File()
			if err != nil {
				logging.Errorf("rpc: %v", err)
				return
			}
			defer f.Close()
			c, err := NewConn(f)
			if err == nil {
				err = c.Serve()
			}
			if err != nil {
				logging.Errorf("rpc: %v", err)
			}
		}()
	}
}

func ptr[T any](v T) *T { return &v }
