package drivers

import (
	"fmt"

	"golang.org/x/sys/unix"

	"godwit/internal/inject"
	"godwit/internal/model"
)

// The fd kinds reopened by path: regular files, directories and
// stateless character devices (named FIFOs, also reopened by path, are
// in fd_fifo.go). Reopening the path in the task (its
// own root and mounts) restores them whole, with their flags and offset.

// statelessDevices are the character devices whose fds reopening the path
// restores whole.
var statelessDevices = map[string]bool{
	"/dev/null": true, "/dev/zero": true, "/dev/full": true,
	"/dev/random": true, "/dev/urandom": true,
}

// pathKind is the part the kinds reopened by path share: the model's
// Path files, restored by openPath.
type pathKind struct{ noCollect }

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

type dirKind struct{ pathKind }

func (dirKind) name() string { return "directory" }
func (dirKind) match(target string, st *unix.Stat_t) bool {
	return byPath(target) && st.Mode&unix.S_IFMT == unix.S_IFDIR
}
func (dirKind) check(int, int, uint64) error { return nil }

type charDevKind struct{ pathKind }

func (charDevKind) name() string { return "character device" }

// match accepts only devices without per-open state; a tun, kvm, fuse or
// tty fd reopened would be another object.
func (charDevKind) match(target string, st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFCHR && statelessDevices[target]
}
func (charDevKind) check(int, int, uint64) error { return nil }

// openPath opens a file by path, with an injected openat (the file is
// opened with the task's own root and mounts, and no descriptor passing
// is needed), and seeks it.
func openPath(r *Restore, s *inject.Session, what string, f *model.File) (uint64, error) {
	flags := int(f.Flags) &^ (unix.O_CREAT | unix.O_TRUNC | unix.O_EXCL | unix.O_CLOEXEC)
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
