// Package joinns is restore --join-ns (criu(8): NS:PID|NS_FILE[,EXTRA_OPTS]):
// godwit restores the tree into namespaces that exist already, given by
// a task's PID or a namespace file (/run/netns/NAME, /proc/PID/ns/net).
//
// godwit makes the tree's sockets and tasks itself, on many threads, so
// the whole process must be in those namespaces: Enter joins them on one
// locked thread and execs godwit again from it (execve keeps the calling
// thread's namespaces for the new program, same PID, same arguments); the
// new process finds itself in them and goes on. Joined: net (sockets and
// tasks in that network namespace), uts and ipc. Refused by name: mnt and
// user (setns refuses them to a multi-threaded process), pid, cgroup and
// time (not supported yet), and EXTRA_OPTS (CRIU's are for mnt and user).
package joinns

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// nsGetNSType is NS_GET_NSTYPE, _IO(0xb7, 0x3) (include/uapi/linux/nsfs.h):
// the CLONE_NEW* type of a namespace file.
const nsGetNSType = 0xb703

// Spec is one --join-ns argument.
type Spec struct {
	Kind string // net, uts, ipc
	Path string // the namespace file
	Flag int    // CLONE_NEWNET, ...
}

var supported = map[string]int{"net": unix.CLONE_NEWNET, "uts": unix.CLONE_NEWUTS, "ipc": unix.CLONE_NEWIPC}

var unsupported = map[string]string{
	"mnt":    "a multi-threaded process cannot join a mount namespace",
	"user":   "a multi-threaded process cannot join a user namespace",
	"pid":    "not supported yet",
	"cgroup": "not supported yet",
	"time":   "not supported yet",
}

// Parse parses NS:PID|NS_FILE[,EXTRA_OPTS].
func Parse(s string) (Spec, error) {
	kind, target, ok := strings.Cut(s, ":")
	if !ok || kind == "" || target == "" {
		return Spec{}, fmt.Errorf("bad --join-ns %q: want NS:PID or NS:NS_FILE", s)
	}
	if why, ok := unsupported[kind]; ok {
		return Spec{}, fmt.Errorf("--join-ns %s: %s (net, uts and ipc are supported)", kind, why)
	}
	flag, ok := supported[kind]
	if !ok {
		return Spec{}, fmt.Errorf("bad --join-ns %q: unknown namespace %q (net, uts and ipc are supported)", s, kind)
	}
	if _, extra, ok := strings.Cut(target, ","); ok {
		return Spec{}, fmt.Errorf("--join-ns %s: extra options %q: not supported", kind, extra)
	}
	path := target
	if pid, err := strconv.Atoi(target); err == nil {
		if pid <= 0 {
			return Spec{}, fmt.Errorf("bad --join-ns %q: pid %d", s, pid)
		}
		path = "/proc/" + target + "/ns/" + kind
	} else if !strings.HasPrefix(target, "/") {
		return Spec{}, fmt.Errorf("bad --join-ns %q: want a PID or an absolute path", s)
	}
	return Spec{Kind: kind, Path: path, Flag: flag}, nil
}

// Enter puts godwit in the namespaces args name (--join-ns values): it
// returns nil when godwit is in all of them already (no args, or the
// process Enter re-executed), and otherwise re-executes godwit with its
// own arguments from a thread that joined them: it returns only on
// error. Every kind at most once.
func Enter(args []string) error {
	if len(args) == 0 {
		return nil
	}
	var specs []Spec
	seen := map[string]bool{}
	for _, a := range args {
		s, err := Parse(a)
		if err != nil {
			return err
		}
		if seen[s.Kind] {
			return fmt.Errorf("--join-ns %s given twice", s.Kind)
		}
		seen[s.Kind] = true
		specs = append(specs, s)
	}
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	joined := true
	for _, s := range specs {
		fd, in, err := open(s)
		if err != nil {
			return err
		}
		fds = append(fds, fd)
		joined = joined && in
	}
	if joined {
		return nil
	}
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: a thread left in other namespaces by a failed
		// join ends with this goroutine.
		runtime.LockOSThread()
		for i, s := range specs {
			if err := unix.Setns(fds[i], s.Flag); err != nil {
				errc <- fmt.Errorf("--join-ns %s:%s: setns: %w", s.Kind, s.Path, err)
				return
			}
		}
		err := unix.Exec("/proc/self/exe", os.Args, os.Environ())
		errc <- fmt.Errorf("--join-ns: exec godwit in the joined namespaces: %w", err)
	}()
	return <-errc
}

// open opens the namespace file of s, checks its type, and says whether
// godwit is in that namespace already.
func open(s Spec) (fd int, in bool, err error) {
	fd, err = unix.Open(s.Path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, false, fmt.Errorf("--join-ns %s:%s: %w", s.Kind, s.Path, err)
	}
	typ, err := unix.IoctlRetInt(fd, nsGetNSType)
	if err != nil || typ != s.Flag {
		unix.Close(fd)
		if err == nil || errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EINVAL) {
			return -1, false, fmt.Errorf("--join-ns %s:%s: not a %s namespace", s.Kind, s.Path, s.Kind)
		}
		return -1, false, fmt.Errorf("--join-ns %s:%s: NS_GET_NSTYPE: %w", s.Kind, s.Path, err)
	}
	var a, b unix.Stat_t
	if err := unix.Fstat(fd, &a); err != nil {
		unix.Close(fd)
		return -1, false, fmt.Errorf("--join-ns %s:%s: %w", s.Kind, s.Path, err)
	}
	if err := unix.Stat("/proc/thread-self/ns/"+s.Kind, &b); err != nil {
		unix.Close(fd)
		return -1, false, fmt.Errorf("godwit's %s namespace: %w", s.Kind, err)
	}
	return fd, a.Dev == b.Dev && a.Ino == b.Ino, nil
}
