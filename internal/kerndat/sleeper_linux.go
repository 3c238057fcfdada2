package kerndat

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Probes that trace, read or take descriptors from another process use a
// plain /bin/sleep as their target: godwit cannot assume it may re-exec
// itself in a helper role, and sleep is on every Debian machine. It is
// started with PR_SET_PDEATHSIG=SIGKILL, so it dies with us even if we are
// killed mid-probe, and it is always killed and reaped by the probe.

var sleepPaths = []string{"/bin/sleep", "/usr/bin/sleep"}

type sleeper struct {
	pid    int
	reaped bool
}

type sleeperOpts struct {
	stdin        *os.File // nil: /dev/null
	cloneflags   uintptr
	unshareflags uintptr
}

func startSleeper(o sleeperOpts) (*sleeper, error) {
	path := ""
	for _, p := range sleepPaths {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			path = p
			break
		}
	}
	if path == "" {
		return nil, fmt.Errorf("no sleep binary in %v to use as a probe target", sleepPaths)
	}
	null, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	defer null.Close()
	in := null
	if o.stdin != nil {
		in = o.stdin
	}
	attr := &syscall.ProcAttr{
		Dir:   "/",
		Env:   []string{},
		Files: []uintptr{in.Fd(), null.Fd(), null.Fd()},
		Sys: &syscall.SysProcAttr{
			Pdeathsig:    syscall.SIGKILL,
			Cloneflags:   o.cloneflags,
			Unshareflags: o.unshareflags,
		},
	}
	pid, err := syscall.ForkExec(path, []string{"sleep", "3600"}, attr)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", path, err)
	}
	s := &sleeper{pid: pid}
	if err := s.waitAsleep(); err != nil {
		s.kill()
		return nil, err
	}
	return s, nil
}

// waitAsleep waits until the sleeper blocks in its sleep system call.
// ForkExec returns as soon as the exec has begun, before the new program
// is mapped: its maps, memory and registers are only worth probing once it
// sleeps.
func (s *sleeper) waitAsleep() error {
	path := fmt.Sprintf("/proc/%d/syscall", s.pid)
	var last string
	for deadline := time.Now().Add(stopTimeout); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("sleeper %d: %w", s.pid, err)
		}
		last = string(b)
		nr, _, _ := strings.Cut(last, " ")
		if nr == strconv.Itoa(unix.SYS_CLOCK_NANOSLEEP) || nr == strconv.Itoa(unix.SYS_NANOSLEEP) {
			return nil
		}
	}
	return fmt.Errorf("sleeper %d did not go to sleep (last %s: %q)", s.pid, path, strings.TrimSpace(last))
}

// kill kills and reaps the sleeper; safe to call twice.
func (s *sleeper) kill() {
	if s == nil || s.reaped {
		return
	}
	_ = unix.Kill(s.pid, unix.SIGKILL)
	_, _ = reap(s.pid)
	s.reaped = true
}

// reap waits for pid to terminate, skipping stops, retrying on EINTR.
func reap(pid int) (unix.WaitStatus, error) {
	for {
		var ws unix.WaitStatus
		_, err := unix.Wait4(pid, &ws, unix.WALL, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return ws, fmt.Errorf("wait4 %d: %w", pid, err)
		}
		if ws.Exited() || ws.Signaled() {
			return ws, nil
		}
	}
}
