package service

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/logging"
)

// Defaults of Config.
const (
	DefaultIdleTimeout = time.Minute
	DefaultMaxClients  = 64
)

// Config is a service socket's setup.
type Config struct {
	Path string
	// Group, if >= 0, is a gid: the socket is made 0660 with that group,
	// and its members are admitted with limits (see Policy). Otherwise the
	// socket is 0600.
	Group int
	// IdleTimeout drops a client that sends no request for this long
	// (0: DefaultIdleTimeout).
	IdleTimeout time.Duration
	// MaxClients bounds the clients served at once; the accept loop never
	// waits for a slot: a client over the bound is told so and dropped
	// (0: DefaultMaxClients).
	MaxClients int
	// Hooks connect requests to the command line's code (see Hooks).
	Hooks Hooks
}

// Server serves CRIU RPC on a unix SOCK_SEQPACKET socket.
type Server struct {
	cfg    Config
	l      *net.UnixListener
	st     unix.Stat_t // the socket file, to remove only our own
	slots  chan struct{}
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// Listen creates the socket at cfg.Path. It is bound inside a new private
// (0700) directory next to the path, given its final mode and group there,
// and only then renamed into place: nobody else can connect to it before
// its mode is final. (The umask cannot do this safely: it is per process,
// and other goroutines create files.) Only a socket may be replaced at the
// path.
func Listen(cfg Config) (*Server, error) {
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxClients <= 0 {
		cfg.MaxClients = DefaultMaxClients
	}
	l, st, err := listenPrivate(cfg.Path, cfg.Group)
	if err != nil {
		return nil, err
	}
	return &Server{cfg: cfg, l: l, st: st, slots: make(chan struct{}, cfg.MaxClients)}, nil
}

func listenPrivate(path string, group int) (*net.UnixListener, unix.Stat_t, error) {
	var st unix.Stat_t
	replace := false
	switch fi, err := os.Lstat(path); {
	case err == nil && fi.Mode()&os.ModeSocket == 0:
		return nil, st, fmt.Errorf("service: %s exists and is not a socket: refusing to replace it", path)
	case err == nil:
		replace = true // a stale socket of an earlier run
	case !errors.Is(err, os.ErrNotExist):
		return nil, st, fmt.Errorf("service: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".godwit-service-")
	if err != nil {
		return nil, st, fmt.Errorf("service: private directory for %s: %w", path, err)
	}
	defer os.Remove(tmp)
	dfd, err := unix.Open(tmp, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, st, fmt.Errorf("service: %w", err)
	}
	defer unix.Close(dfd)
	// Bound through the directory's fd: the temporary path may be longer
	// than a socket address allows where the final one is not.
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: "/proc/self/fd/" + strconv.Itoa(dfd) + "/s", Net: "unixpacket"})
	if err != nil {
		return nil, st, fmt.Errorf("service: listen on %s: %w", path, err)
	}
	l.SetUnlinkOnClose(false)
	fail := func(err error) (*net.UnixListener, unix.Stat_t, error) {
		l.Close()
		unix.Unlinkat(dfd, "s", 0)
		return nil, st, fmt.Errorf("service: %s: %w", path, err)
	}
	mode := uint32(0o600)
	if group >= 0 {
		if err := unix.Fchownat(dfd, "s", -1, group, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fail(fmt.Errorf("chown to group %d: %w", group, err))
		}
		mode = 0o660
	}
	if err := unix.Fchmodat(dfd, "s", mode, 0); err != nil {
		return fail(fmt.Errorf("chmod: %w", err))
	}
	if err := unix.Fstatat(dfd, "s", &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fail(err)
	}
	if !replace {
		// RENAME_NOREPLACE: whatever appeared there meanwhile is kept.
		if err := unix.Renameat2(dfd, "s", unix.AT_FDCWD, path, unix.RENAME_NOREPLACE); err != nil {
			return fail(err)
		}
		return l, st, nil
	}
	// Swap with the stale socket, then look at what came out: if it was
	// replaced by something else since the Lstat above, swap it back.
	if err := unix.Renameat2(dfd, "s", unix.AT_FDCWD, path, unix.RENAME_EXCHANGE); err != nil {
		return fail(err)
	}
	var old unix.Stat_t
	if err := unix.Fstatat(dfd, "s", &old, unix.AT_SYMLINK_NOFOLLOW); err != nil || old.Mode&unix.S_IFMT != unix.S_IFSOCK {
		if err := unix.Renameat2(dfd, "s", unix.AT_FDCWD, path, unix.RENAME_EXCHANGE); err != nil {
			l.Close()
			return nil, st, fmt.Errorf("service: %s was replaced while starting, and putting it back failed (it is in %s/s): %w", path, tmp, err)
		}
		return fail(errors.New("it is no longer a socket: refusing to replace it"))
	}
	if err := unix.Unlinkat(dfd, "s", 0); err != nil {
		logging.Errorf("service: remove the stale socket: %v", err)
	}
	return l, st, nil
}

// Addr is the socket's path.
func (s *Server) Addr() string { return s.cfg.Path }

// Serve accepts clients until Close, serving each in its own goroutine.
func (s *Server) Serve() error {
	for {
		uc, err := s.l.AcceptUnix()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				s.wg.Wait()
				return nil
			}
			var errno unix.Errno
			if errors.As(err, &errno) && (errno == unix.EMFILE || errno == unix.ENFILE || errno == unix.ENOBUFS || errno == unix.ENOMEM) {
				// Out of descriptors or memory: clients ending free them.
				logging.Errorf("rpc: accept: %v", err)
				time.Sleep(100 * time.Millisecond)
				continue
			}
			return fmt.Errorf("accept on %s: %w", s.cfg.Path, err)
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveConn(uc)
		}()
	}
}

func (s *Server) serveConn(uc *net.UnixConn) {
	c, err := newConn(uc, Policy{Group: s.cfg.Group}, s.cfg.IdleTimeout, s.cfg.Hooks)
	if err != nil {
		logging.Errorf("rpc: %v", err)
		refuse(uc, err)
		uc.Close()
		return
	}
	defer c.Close()
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
	default:
		err := fmt.Errorf("too many clients (%d): try again later", s.cfg.MaxClients)
		logging.Errorf("rpc: %v", err)
		c.refuse(err)
		return
	}
	if err := c.Serve(); err != nil {
		logging.Errorf("rpc: %v", err)
	}
}

// Close stops accepting and removes the socket if it is still the one
// Listen made. Serve returns once the clients being served are done (their
// idle timeout bounds the wait).
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	var st unix.Stat_t
	if unix.Lstat(s.cfg.Path, &st) == nil && st.Dev == s.st.Dev && st.Ino == s.st.Ino {
		os.Remove(s.cfg.Path)
	}
	return s.l.Close()
}
