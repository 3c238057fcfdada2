package drivers

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
)

// nsRoot reaches the paths of a task's mount namespace as the images hold
// them: as /proc/PID/fd and /proc/PID/maps name files, that is from
// godwit's root when the task shares godwit's mount namespace (a chrooted
// task too: its root is a directory of that path, not "/"), and from the
// namespace's root otherwise (reached through /proc/PID/root, with the
// task's chroot directory, if any, taken off).
type nsRoot struct {
	dir   string // the directory the paths are resolved in
	strip string // the task's root in its namespace when chrooted there
}

// nsRootOf is the nsRoot of task pid.
func nsRootOf(pid int) (nsRoot, error) {
	var self, task unix.Stat_t
	if err := unix.Stat("/proc/self/ns/mnt", &self); err != nil {
		return nsRoot{}, fmt.Errorf("own mount namespace: %w", err)
	}
	if err := unix.Stat(procfs.Path(pid, "ns/mnt"), &task); err != nil {
		return nsRoot{}, fmt.Errorf("mount namespace of task %d: %w", pid, err)
	}
	if self.Dev == task.Dev && self.Ino == task.Ino {
		return nsRoot{dir: "/"}, nil
	}
	root, err := os.Readlink(procfs.Path(pid, "root"))
	if err != nil {
		return nsRoot{}, fmt.Errorf("root of task %d: %w", pid, err)
	}
	n := nsRoot{dir: procfs.Path(pid, "root")}
	if root != "/" {
		n.strip = root
	}
	return n, nil
}

// rel is p (absolute, in the task's namespace) relative to n.dir; false
// when n cannot reach it (outside the chroot of a task of another mount
// namespace).
func (n nsRoot) rel(p string) (string, bool) {
	if n.strip != "" {
		if p != n.strip && !strings.HasPrefix(p, n.strip+"/") {
			return "", false
		}
		p = p[len(n.strip):]
	}
	return "." + p, true
}

// path is p as a path godwit can open; false as for rel.
func (n nsRoot) path(p string) (string, bool) {
	r, ok := n.rel(p)
	if !ok {
		return "", false
	}
	if n.dir == "/" {
		return r[1:], true
	}
	return n.dir + r[1:], true
}
