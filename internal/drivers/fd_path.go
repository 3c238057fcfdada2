package drivers

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"godwit/internal/inject"
	"godwit/internal/model"
)

// The fd kinds reopened by path: regular files, directories and
// stateless character devices (named FIFOs, also reopened by path, are
// in fd_fifo.go). Reopening the path in the task (its
// own root and mounts) restores them whole, with their flags and offset.

// pathKind is the part the kinds reopened by path share: the model's
// Path files, restored by openPath. Each kind's collect checks that the
// path still leads to the fd's file.
type pathKind struct{}

func (pathKind) fileKind() model.FileKind { return model.Path }
func (pathKind) open(rs *restoreFDs, what string, f *model.File) (uint64, error) {
	if f.External {
		return 0, fmt.Errorf("%s: external file %s: restore with --inherit-fd fd[N]:%s", what, f.Path, f.Path)
	}
	if f.Pipe != nil {
		return openFIFO(rs, what, f)
	}
	return openPath(rs.r, rs.s, what, f)
}

func init() {
	registerFDKind(regularKind{})
	registerFDKind(dirKind{})
	registerFDKind(charDevKind{})
}

type regularKind struct{ pathKind }

func (regularKind) name() string { return "regular file" }
func (regularKind) match(target string, st *unix.Stat_t) bool {
	return byPath(target) && st.Mode&unix.S_IFMT == unix.S_IFREG
}
func (regularKind) check(int, int, uint64) error { return nil }

// collect checks that the path still leads to the file: the restore
// reopens it by that path.
func (regularKind) collect(fl *Files, pid int, fd *FD, _ *model.File) error {
	n, err := fl.nsRoot(pid)
	if err != nil {
		return err
	}
	return pathLeadsTo(n, fd.Path, &fd.Stat)
}

type dirKind struct{ pathKind }

func (dirKind) name() string { return "directory" }
func (dirKind) match(target string, st *unix.Stat_t) bool {
	return byPath(target) && st.Mode&unix.S_IFMT == unix.S_IFDIR
}
func (dirKind) check(int, int, uint64) error { return nil }

func (dirKind) collect(fl *Files, pid int, fd *FD, _ *model.File) error {
	// F_NOTIFY (dnotify) makes the registering process the directory
	// file's owner; no /proc file or fcntl shows the registration itself,
	// so a directory file with an owner or a signal is refused rather
	// than restored without its notifications.
	if fd.owner.Pid != 0 || fd.owner.Signum != 0 {
		return fmt.Errorf("it has an owner (F_SETOWN %d) or signal (F_SETSIG %d), as a dnotify (F_NOTIFY) registration sets: dnotify cannot be read, so it cannot be restored", fd.owner.Pid, fd.owner.Signum)
	}
	n, err := fl.nsRoot(pid)
	if err != nil {
		return err
	}
	return pathLeadsTo(n, fd.Path, &fd.Stat)
}

// nsRoot is nsRootOf(pid), looked up once per task of the dump.
func (fl *Files) nsRoot(pid int) (nsRoot, error) {
	fl.rootsMu.Lock()
	defer fl.rootsMu.Unlock()
	if n, ok := fl.roots[pid]; ok {
		return n, nil
	}
	n, err := nsRootOf(pid)
	if err != nil {
		return n, err
	}
	if fl.roots == nil {
		fl.roots = map[int]nsRoot{}
	}
	fl.roots[pid] = n
	return n, nil
}

// PathLeadsTo checks that path (as /proc/PID/fd names a file of task
// pid) leads, in the task's root and mounts, to the file of stat st:
// by device and inode, as the restore's open by path would find it. A
// path that now leads to another file (a mount over its directory, a
// file renamed over it) or to none is refused: reopened, it would be
// another file. (CRIU refuses it too: "Unaccessible path opened".)
func PathLeadsTo(pid int, path string, st *unix.Stat_t) error {
	n, err := nsRootOf(pid)
	if err != nil {
		return err
	}
	return pathLeadsTo(n, path, st)
}

// pathLeadsTo is PathLeadsTo in the root n of the task.
func pathLeadsTo(n nsRoot, path string, st *unix.Stat_t) error {
	hp, ok := n.path(path)
	if !ok {
		return fmt.Errorf("its path %s is outside the task's root: it cannot be reopened by path", path)
	}
	var now unix.Stat_t
	if err := unix.Stat(hp, &now); err != nil {
		return fmt.Errorf("its path %s no longer leads to it (%w): it cannot be reopened by path", path, err)
	}
	if now.Dev != st.Dev || now.Ino != st.Ino {
		return fmt.Errorf("its path %s now leads to another file (device %d:%d inode %d, not %d:%d inode %d; a mount over it?): it cannot be reopened by path",
			path, unix.Major(now.Dev), unix.Minor(now.Dev), now.Ino, unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	}
	return nil
}

type charDevKind struct{ pathKind }

func (charDevKind) name() string { return "character device" }

// memDevices are the character devices whose fds reopening the path
// restores whole, by number: memory devices of drivers/char/mem.c
// (major 1), with their usual paths.
var memDevices = map[uint64]string{
	unix.Mkdev(1, 3): "/dev/null", unix.Mkdev(1, 5): "/dev/zero", unix.Mkdev(1, 7): "/dev/full",
	unix.Mkdev(1, 8): "/dev/random", unix.Mkdev(1, 9): "/dev/urandom",
}

// match accepts only devices without per-open state (a tun, kvm, fuse or
// tty fd reopened would be another object), known by their number:
// whatever path the fd shows, collect checks it still leads to the device.
func (charDevKind) match(target string, st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFCHR && memDevices[st.Rdev] != ""
}
func (charDevKind) check(int, int, uint64) error { return nil }

// collect checks that the fd's path leads to its device in the task's
// root. Where it does not (the node was removed, or the path now names
// another device), --evasive-devices takes any node of the device under
// /dev instead, as CRIU does; without it the dump is refused.
func (charDevKind) collect(fl *Files, pid int, fd *FD, f *model.File) error {
	// The fd's path is as /proc/PID/fd names it: not always from the
	// task's root (a chrooted task's is a directory of godwit's).
	n, err := nsRootOf(pid)
	if err != nil {
		return err
	}
	isDev := func(p string) bool {
		hp, ok := n.path(p)
		var st unix.Stat_t
		return ok && unix.Lstat(hp, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == fd.Stat.Rdev
	}
	if byPath(fd.Path) && isDev(fd.Path) {
		return nil
	}
	if !fl.EvasiveDevices {
		return fmt.Errorf("its path no longer leads to device %d:%d: dump with --evasive-devices", unix.Major(fd.Stat.Rdev), unix.Minor(fd.Stat.Rdev))
	}
	if p := memDevices[fd.Stat.Rdev]; isDev(p) {
		f.Path = p
		return nil
	}
	var found string
	errFound := errors.New("found")
	top, ok := n.path("/dev")
	if !ok {
		return fmt.Errorf("its path no longer leads to device %d:%d, and /dev is outside the task's root", unix.Major(fd.Stat.Rdev), unix.Minor(fd.Stat.Rdev))
	}
	err = filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Type()&fs.ModeCharDevice == 0 {
			return nil // unreadable parts are skipped: only a node is sought
		}
		if rel := "/dev" + strings.TrimPrefix(p, top); isDev(rel) {
			found = rel
			return errFound
		}
		return nil
	})
	if found == "" {
		return fmt.Errorf("--evasive-devices: no node of device %d:%d under /dev (%v)", unix.Major(fd.Stat.Rdev), unix.Minor(fd.Stat.Rdev), err)
	}
	f.Path = found
	return nil
}

// openPath opens a file by path, with an injected openat (the file is
// opened with the task's own root and mounts, and no descriptor passing
// is needed), and seeks it.
func openPath(r *Restore, s *inject.Session, what string, f *model.File) (uint64, error) {
	flags := int(f.Flags) &^ (unix.O_CREAT | unix.O_TRUNC | unix.O_EXCL | unix.O_CLOEXEC)
	if isTmpfile(f.Flags) && f.Mode&unix.S_IFMT == unix.S_IFREG {
		// An O_TMPFILE file linked since: opened by its name now.
		flags &^= unix.O_TMPFILE
	}
	fd, err := s.Openat(what, f.Path, flags|unix.O_NOCTTY)
	if err != nil {
		return 0, err
	}
	if err := r.verifyOpened(s, fd, f); err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	if pos := f.Pos; pos != 0 && f.Mode&unix.S_IFMT != unix.S_IFCHR {
		if _, err := s.Call(fmt.Sprintf("%s: seek %s to %d", what, f.Path, pos), unix.SYS_LSEEK, fd, pos, unix.SEEK_SET); err != nil {
			return 0, err
		}
	}
	return fd, nil
}
