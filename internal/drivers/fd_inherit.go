package drivers

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
)

// --inherit-fd fd[N]:RESOURCE: the file of the tree that is RESOURCE is
// godwit's fd N (handed to the task as it is, flags and all) instead of a
// new object: the other end of a pipe or socket outside the tree, or a
// file the caller opened. RESOURCE is pipe[INODE] or pipe:[INODE] (a pipe
// end dumped as that inode), socket[INODE] or socket:[INODE] (a unix
// socket), or an absolute path (a file reopened by path, or a deleted one
// by its old path), tty[RDEV:DEV] (a tty the dump left out with
// --external tty[RDEV:DEV]) or file[MNT_ID:INODE] (a file the dump left
// out with --external file[MNT_ID:INODE]).

// ParseExternalFile parses the MNT_ID:INODE of file[MNT_ID:INODE], both
// in hex as CRIU prints them.
func ParseExternalFile(id string) (mnt uint32, ino uint64, err error) {
	a, b, ok := strings.Cut(id, ":")
	if !ok {
		return 0, 0, fmt.Errorf("want MNT_ID:INODE")
	}
	m, err := strconv.ParseUint(a, 16, 32)
	if err != nil {
		return 0, 0, err
	}
	ino, err = strconv.ParseUint(b, 16, 64)
	return uint32(m), ino, err
}

// ExternalFileKey is the name of an external file: CRIU's
// file[%x:%x] of its mount id and inode.
func ExternalFileKey(mnt uint32, ino uint64) string { return fmt.Sprintf("file[%x:%x]", mnt, ino) }

// InheritKey is the key of a resource in Restore.Inherit.
func InheritKey(res string) (string, error) {
	for _, kind := range []string{"pipe", "socket"} {
		for _, open := range []string{kind + "[", kind + ":["} {
			if inner, ok := strings.CutPrefix(res, open); ok {
				ino, ok := strings.CutSuffix(inner, "]")
				if _, err := strconv.ParseUint(ino, 10, 32); !ok || err != nil {
					return "", fmt.Errorf("want %s[INODE]", kind)
				}
				return kind + ":[" + ino + "]", nil
			}
		}
	}
	if inner, ok := strings.CutPrefix(res, "tty["); ok {
		id, ok := strings.CutSuffix(inner, "]")
		rdev, dev, err := ParseExternalTTY(id)
		if !ok || err != nil {
			return "", fmt.Errorf("want tty[RDEV:DEV], both in hex")
		}
		return externalTTYKey(rdev, dev), nil
	}
	if inner, ok := strings.CutPrefix(res, "file["); ok {
		id, ok := strings.CutSuffix(inner, "]")
		mnt, ino, err := ParseExternalFile(id)
		if !ok || err != nil {
			return "", fmt.Errorf("want file[MNT_ID:INODE], both in hex")
		}
		return ExternalFileKey(mnt, ino), nil
	}
	if !strings.HasPrefix(res, "/") {
		return "", fmt.Errorf("want an absolute path, pipe[INODE], socket[INODE] or tty[RDEV:DEV]")
	}
	return res, nil
}

// inheritKeyOf is f's key among InheritKey's, "" when it has none.
func inheritKeyOf(f *model.File) string {
	switch {
	case f.External:
		return f.Path
	case f.Pipe != nil && f.Kind == model.Pipe:
		return fmt.Sprintf("pipe:[%d]", f.Pipe.ID)
	case f.Unix != nil:
		return fmt.Sprintf("socket:[%d]", f.Unix.Ino)
	case f.Kind == model.Path || f.Kind == model.Ghost:
		return f.Path
	case f.Tty != nil && f.Tty.Other != nil && f.Tty.Other.Kind == model.TtyExternal:
		return externalTTYKey(f.Tty.Other.Rdev, f.Tty.Other.Dev)
	}
	return ""
}

// inherited returns godwit's descriptor given for f, if any. A resource
// that names several files of the tree (both ends of a pipe) is refused:
// which one the caller meant is not known.
func inherited(r *Restore, f *model.File) (int, bool, error) {
	if len(r.Inherit) == 0 {
		return 0, false, nil
	}
	key := inheritKeyOf(f)
	fd, ok := r.Inherit[key]
	if !ok || key == "" {
		return 0, false, nil
	}
	for _, o := range r.Tree.Files {
		if o.ID != f.ID && inheritKeyOf(o) == key && o.Kind == f.Kind {
			return 0, false, fmt.Errorf("--inherit-fd %s names files %d and %d of the dump: ambiguous", key, f.ID, o.ID)
		}
	}
	if f.Kind == model.Tty {
		if _, err := unix.IoctlGetTermios(fd, unix.TCGETS); err != nil {
			return 0, false, fmt.Errorf("--inherit-fd %s: godwit's fd %d is not a terminal: %w", key, fd, err)
		}
	}
	return fd, true, nil
}
