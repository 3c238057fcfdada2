// Package daemon runs a godwit server in the background the way criu(8)'s
// --daemon does, and reports readiness the way its --status-fd does.
//
// A Go process cannot fork safely, so Start re-executes godwit with the same
// arguments, minus --daemon and plus --status-fd, in a new session; the
// parent returns once the child writes its ready byte.
package daemon

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

// Start re-executes this program in the background with args (without
// --daemon). It returns the daemon's pid once the daemon reports ready, or
// the error that stopped it.
func Start(args []string) (int, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return 0, fmt.Errorf("daemon: %w", err)
	}
	defer r.Close()
	self, err := os.Executable()
	if err != nil {
		w.Close()
		return 0, fmt.Errorf("daemon: %w", err)
	}
	// The child sees the pipe as fd 3 (ExtraFiles[0]).
	cmd := exec.Command(self, append(stripDaemon(args), "--status-fd", "3")...)
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		w.Close()
		return 0, fmt.Errorf("daemon: %w", err)
	}
	defer devnull.Close()
	// Until it is ready the daemon keeps the caller's stdout and stderr:
	// startup errors, and what it prints for the caller (page-server's
	// "Port: N"), reach the user. Ready detaches them.
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{w}
	cmd.Env = append(os.Environ(), envDaemon+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return 0, fmt.Errorf("daemon: start: %w", err)
	}
	w.Close()
	pid := cmd.Process.Pid
	buf := make([]byte, 1)
	n, _ := r.Read(buf)
	if n == 1 && buf[0] == 0 {
		cmd.Process.Release()
		return pid, nil
	}
	// Closed without the ready byte: the daemon failed to start.
	werr := cmd.Wait()
	if werr == nil {
		werr = errors.New("exited before it was ready")
	}
	return 0, fmt.Errorf("daemon did not start: %w", werr)
}

// stripDaemon removes --daemon (and a --status-fd the caller cannot have
// combined with it) from args.
func stripDaemon(args []string) []string {
	out := make([]string, 0, len(args))
	for _, a := range args {
		if a == "--daemon" || a == "--daemon=true" || strings.HasPrefix(a, "--daemon=") {
			continue
		}
		out = append(out, a)
	}
	return out
}

// envDaemon marks the re-executed daemon, which lets go of the caller's
// standard streams once it is ready.
const envDaemon = "GODWIT_DAEMON"

// Ready tells whoever waits on the status fd that the server accepts
// requests: criu(8) writes one \0 byte and closes the fd. fd < 0 is a no-op.
// In a daemon started by Start it also detaches the standard streams (until
// then startup errors reach the user), so that a caller reading our stderr
// through a pipe is not kept waiting for the daemon's whole life.
func Ready(fd int) error {
	if os.Getenv(envDaemon) == "1" {
		if err := detachStdio(); err != nil {
			return err
		}
	}
	if fd < 0 {
		return nil
	}
	f := os.NewFile(uintptr(fd), "status-fd")
	if f == nil {
		return fmt.Errorf("--status-fd %d: not a descriptor", fd)
	}
	defer f.Close()
	if _, err := f.Write([]byte{0}); err != nil {
		return fmt.Errorf("--status-fd %s: %w", strconv.Itoa(fd), err)
	}
	return nil
}

func detachStdio() error {
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	defer null.Close()
	for fd := 0; fd <= 2; fd++ {
		if err := syscall.Dup3(int(null.Fd()), fd, 0); err != nil {
			return fmt.Errorf("daemon: detach fd %d: %w", fd, err)
		}
	}
	return nil
}

// Detached makes cmd, a godwit server started by another way than Start
// (the RPC's PAGE_SERVER), let go of its standard streams once ready, as
// a daemon Start made does.
func Detached(cmd *exec.Cmd) {
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	cmd.Env = append(cmd.Env, envDaemon+"=1")
}
