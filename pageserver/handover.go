package pageserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// A handed-over socket (CRIU's --ps-socket FD, criu_opts.ps.fd) is a
// stream socket the caller already connected: the dump's page client and
// the page server each get one end, and the same connection may carry
// several sessions one after the other (go-criu's phaul runs one page
// server per pre-dump round on it). So each session ends with FORCE_CLOSE
// (the peer's end stays open in the caller, no EOF will come), and the
// server neither waits for the peer to close nor reads past the session.

// SocketConn wraps descriptor fd, a connected stream socket (unix or
// TCP), as a net.Conn on a duplicate of it: fd itself stays the caller's.
func SocketConn(fd int) (net.Conn, error) {
	if fd < 0 {
		return nil, fmt.Errorf("ps-socket %d: bad descriptor", fd)
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return nil, fmt.Errorf("ps-socket %d: not a socket: %w", fd, err)
	}
	if typ != unix.SOCK_STREAM {
		return nil, fmt.Errorf("ps-socket %d: not a stream socket (type %d)", fd, typ)
	}
	if _, err := unix.Getpeername(fd); err != nil {
		return nil, fmt.Errorf("ps-socket %d: not connected: %w", fd, err)
	}
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("ps-socket %d: %w", fd, err)
	}
	f := os.NewFile(uintptr(dup), "ps-socket")
	defer f.Close() // FileConn holds its own duplicate
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("ps-socket %d: %w", fd, err)
	}
	return c, nil
}

// NewSocketClient is a page-server client over conn, a connection the
// caller made (see SocketConn). It speaks CRIU's framing without TLS, as
// CRIU's client does on --ps-socket, and ends its session with
// FORCE_CLOSE. Client.Close closes conn, which does not end the
// connection while the caller holds the socket; Client.Abort shuts it
// down so that the server learns at once that the session failed.
func NewSocketClient(conn net.Conn) *Client { return NewSocketClientWith(conn, TransportOptions{}) }

// NewSocketClientWith is NewSocketClient with o's Dedup (the rest of o is
// about dialling: unused).
func NewSocketClientWith(conn net.Conn, o TransportOptions) *Client {
	c := &Client{transport: TransportTCP, sinks: map[*TaskSink]struct{}{}, conn: conn, handedOver: true, dedup: o.Dedup, zeroOnly: o.ZeroOnly}
	if tc, ok := conn.(*net.TCPConn); ok {
		c.raw = tc
	}
	return c
}

// ServeConn serves one session on conn, a connection the caller made
// (see SocketConn), until FORCE_CLOSE or CLOSE, and returns its error. It
// does not wait for the peer to close (another session may follow on the
// same connection) and closes conn on return. Cancelling ctx drops the
// session. Lazy page servers are not served this way.
func (s *Server) ServeConn(ctx context.Context, conn net.Conn) error {
	defer conn.Close()
	if s.cfg.Lazy {
		return errors.New("page server: --lazy-pages on a handed-over socket (--ps-socket) is not supported")
	}
	// Closing our duplicate wakes the session (the caller's descriptor
	// keeps the connection itself).
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	s.m.conn("ps-socket")
	defer s.m.connDone()
	peer := "ps-socket"
	if tc, ok := conn.(*net.TCPConn); ok {
		peer += " " + tc.RemoteAddr().String()
	}
	s.log.Infof("page-server: %s: serving the handed-over connection", peer)
	raw, _ := conn.(*net.TCPConn)
	ss := s.newSession(peer, conn, conn, raw)
	ss.dl = conn
	// The client waits for FORCE_CLOSE's status before anything else goes
	// on the connection, so the session's buffered reader never holds
	// bytes of the next session.
	err := ss.run()
	if err == nil && ss.task != nil && !ss.closed {
		err = reqErr(reasonUnflushed, errors.New("the data were not flushed (no FORCE_CLOSE)"))
	}
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("%w (interrupted)", err)
	}
	s.finish(ss, err)
	if err != nil {
		return fmt.Errorf("page server: %s: %w", peer, err)
	}
	return nil
}
