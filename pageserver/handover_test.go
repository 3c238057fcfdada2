package pageserver

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/logging"
)

// socketPair is a connected unix stream pair, closed when the test ends.
func socketPair(t *testing.T) [2]int {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return [2]int{fds[0], fds[1]}
}

// serveOnce runs one ServeConn session on fd into dir (parent: the
// previous round's directory, or ""), returning its result channel.
func serveOnce(t *testing.T, fd int, dir, parent string, log *syncBuf) <-chan error {
	t.Helper()
	conn, err := SocketConn(fd)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(Config{ImagesDir: dir, PrevImagesDir: parent, Log: logging.New(log, 4), Once: true})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.ServeConn(context.Background(), conn); srv.Close() }()
	return done
}

func waitServe(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("ServeConn did not return")
		return nil
	}
}

// Rounds as go-criu's phaul runs them: one connection, a new server and a
// new client per round, each session ended by FORCE_CLOSE; every round's
// images are complete, the second names the first as its parent, and the
// connection stays usable after each round although neither side closed.
func TestHandedOverSocketRounds(t *testing.T) {
	fds := socketPair(t)
	root := t.TempDir()
	log := &syncBuf{}
	for i, round := range []string{"0", "1", "2"} {
		dir := filepath.Join(root, round)
		parent := ""
		if i > 0 {
			parent = "../" + []string{"0", "1", "2"}[i-1]
		}
		done := serveOnce(t, fds[1], dir, parent, log)
		conn, err := SocketConn(fds[0])
		if err != nil {
			t.Fatal(err)
		}
		c := NewSocketClient(conn)
		s, err := c.OpenTask(context.Background(), TaskDst(100), true)
		if err != nil {
			t.Fatal(err)
		}
		if s.HasParent() != (i > 0) {
			t.Fatalf("round %s: has_parent %v", round, s.HasParent())
		}
		sendTask(t, s, taskRanges, uint64(i+1))
		if err := c.Close(); err != nil {
			t.Fatalf("round %s: Close: %v", round, err)
		}
		if err := waitServe(t, done); err != nil {
			t.Fatalf("round %s: ServeConn: %v\n%s", round, err, log.String())
		}
		checkSame(t, dir, "pagemap-100.img", taskRanges, uint64(i+1))
	}
	if n := strings.Count(log.String(), "session over"); n != 3 {
		t.Fatalf("%d sessions over, want 3:\n%s", n, log.String())
	}
	// The caller's descriptors are still open and connected.
	if _, err := unix.Getpeername(fds[0]); err != nil {
		t.Fatalf("the caller's socket: %v", err)
	}
}

// A client that aborts (a dump that failed half-way) shuts the shared
// connection down: the server drops the partial images at once instead
// of waiting for an EOF the caller's descriptor would hold back.
func TestHandedOverSocketAbort(t *testing.T) {
	fds := socketPair(t)
	dir := filepath.Join(t.TempDir(), "images")
	log := &syncBuf{}
	done := serveOnce(t, fds[1], dir, "", log)
	conn, err := SocketConn(fds[0])
	if err != nil {
		t.Fatal(err)
	}
	c := NewSocketClient(conn)
	s, err := c.OpenTask(context.Background(), TaskDst(100), true)
	if err != nil {
		t.Fatal(err)
	}
	sendTask(t, s, taskRanges[:2], 1)
	c.Abort()
	err = waitServe(t, done)
	if err == nil || !strings.Contains(err.Error(), "not flushed") {
		t.Fatalf("ServeConn after Abort = %v, want the unflushed error", err)
	}
	if exists(dir, "pagemap-100.img") {
		t.Fatal("partial pagemap-100.img kept after the aborted session")
	}
}

// Only a connected stream socket is taken.
func TestSocketConnRefuses(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "x")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dgram, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dgram[0])
	defer unix.Close(dgram[1])
	unconnected, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(unconnected)
	for _, c := range []struct {
		fd   int
		want string
	}{
		{-1, "bad descriptor"},
		{int(f.Fd()), "not a socket"},
		{dgram[0], "not a stream socket"},
		{unconnected, "not connected"},
	} {
		if conn, err := SocketConn(c.fd); err == nil || !strings.Contains(err.Error(), c.want) {
			if conn != nil {
				conn.Close()
			}
			t.Errorf("SocketConn(%d) = %v, want %q", c.fd, err, c.want)
		}
	}
}

// Over a handed-over TCP connection page data is spliced as on a dialled
// one, and the session still ends without waiting for the peer's EOF.
func TestHandedOverTCPSocket(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	fdOf := func(c net.Conn) *os.File {
		f, err := c.(*net.TCPConn).File()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	sf, cf := fdOf(sc), fdOf(cc)
	dir := filepath.Join(t.TempDir(), "images")
	log := &syncBuf{}
	done := serveOnce(t, int(sf.Fd()), dir, "", log)
	conn, err := SocketConn(int(cf.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	c := NewSocketClient(conn)
	s, err := c.OpenTask(context.Background(), TaskDst(7), false)
	if err != nil {
		t.Fatal(err)
	}
	sendTask(t, s, taskRanges, 9)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := waitServe(t, done); err != nil {
		t.Fatalf("ServeConn: %v\n%s", err, log.String())
	}
	checkSame(t, dir, "pagemap-7.img", taskRanges, 9)
}

// Cancelling the context ends a session that waits for requests.
func TestServeConnCancel(t *testing.T) {
	fds := socketPair(t)
	conn, err := SocketConn(fds[1])
	if err != nil {
		t.Fatal(err)
	}
	log := &syncBuf{}
	srv, err := NewServer(Config{ImagesDir: filepath.Join(t.TempDir(), "images"), Log: logging.New(log, 4), Once: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.ServeConn(ctx, conn) }()
	log.waitLog(t, "serving the handed-over connection")
	cancel()
	if err := waitServe(t, done); err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("ServeConn after cancel = %v, want interrupted", err)
	}
}
