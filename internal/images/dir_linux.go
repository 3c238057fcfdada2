// Package images reads and writes CRIU-format image directories.
//
// The framing (magics, u32 size + protobuf entries) and the messages are
// CRIU's, via github.com/checkpoint-restore/go-criu/v8; this package adds
// what CRIU keeps in C: the file name → magic table, bounded streaming
// readers and writers, the pagemap/pages pair, inventory and stats.
//
// Every file is opened relative to the directory's fd, and names must be
// plain file names: the page server takes them from the network.
package images

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Image files hold the dumped program's memory (keys included): only their
// owner may read them. CRIU uses 0644 (CR_FD_PERM); godwit is stricter.
const (
	FilePerm = 0o600
	DirPerm  = 0o700
)

// Dir is an open images directory. Its methods are safe for concurrent use
// (they only issue *at syscalls on a fixed fd).
type Dir struct {
	fd      int
	path    string
	pagesID atomic.Uint32
	// stage: the Staging whose directory this is (WriteBulk).
	stage *Staging
}

// Open opens the images directory at path, creating it (and its parents)
// first when create is set. Directories it creates are DirPerm; an existing
// directory keeps the mode its owner gave it.
func Open(path string, create bool) (*Dir, error) {
	if create {
		if err := os.MkdirAll(path, DirPerm); err != nil {
			return nil, fmt.Errorf("images: create dir: %w", err)
		}
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("images: open dir %s: %w", path, err)
	}
	return &Dir{fd: fd, path: path}, nil
}

// OpenFD makes a Dir of an already open directory fd, as CRIU's RPC passes
// images_dir_fd. The fd is duplicated: the caller keeps ownership of fd.
func OpenFD(fd int) (*Dir, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("images: fd %d: %w", fd, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil, fmt.Errorf("images: fd %d is not a directory", fd)
	}
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("images: dup fd %d: %w", fd, err)
	}
	path, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(nfd))
	if err != nil {
		path = "/proc/self/fd/" + strconv.Itoa(nfd)
	}
	return &Dir{fd: nfd, path: path}, nil
}

// Path is the directory's path (for messages and for tools that need one).
func (d *Dir) Path() string { return d.path }

// FD is the directory's fd, valid until Close.
func (d *Dir) FD() int { return d.fd }

// Close closes the directory fd. Files already opened stay usable.
func (d *Dir) Close() error {
	if d.fd < 0 {
		return nil
	}
	err := unix.Close(d.fd)
	d.fd = -1
	return err
}

// ErrBadName is returned for names that are not plain file names.
var ErrBadName = errors.New("not a plain file name")

// CheckName accepts plain file names only: no "/", no NUL, not "." or "..".
func CheckName(name string) error {
	if name == "" || name == "." || name == ".." || len(name) > 255 ||
		strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("images: %q: %w", name, ErrBadName)
	}
	return nil
}

// OpenFile opens name in the directory with open(2) flags. Symlinks are not
// followed (O_NOFOLLOW): a name always means a file inside this directory.
// perm is limited to FilePerm: no image is ever group- or world-accessible.
// With O_CREAT, a file left wider by an older dump is narrowed too.
func (d *Dir) OpenFile(name string, flag int, perm uint32) (*os.File, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	fd, err := unix.Openat(d.fd, name, flag|unix.O_CLOEXEC|unix.O_NOFOLLOW, perm&FilePerm)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: d.join(name), Err: err}
	}
	if flag&unix.O_CREAT != 0 {
		var st unix.Stat_t
		err := unix.Fstat(fd, &st)
		if err == nil && st.Mode&0o077 != 0 {
			err = unix.Fchmod(fd, st.Mode&FilePerm)
		}
		if err != nil {
			unix.Close(fd)
			return nil, &os.PathError{Op: "chmod", Path: d.join(name), Err: err}
		}
	}
	return os.NewFile(uintptr(fd), d.join(name)), nil
}

// WriteNew writes b as the new file name, which must not exist (O_EXCL:
// made here, so its mode is FilePerm at most and nothing needs checking,
// unlike OpenFile's): an open, a write and a close, for the thousands of
// small images a dump of many connections makes. An existing name
// fails with an error wrapping EEXIST.
func (d *Dir) WriteNew(name string, b []byte) error { return d.writeNew(name, b, nil) }

// WriteBulk is WriteNew for the images a dump makes by the thousand
// (tcp-stream-*.img, one per connection). In a Staging's directory, a
// name the images directory does not hold yet is written straight into
// the images directory instead, where Commit would have moved it: a
// rename between directories costs as much as making the file. Such a
// file is to be read from the images directory; Staging.Abort (and
// Rollback after Commit) removes it again.
func (d *Dir) WriteBulk(name string, b []byte) error {
	if d.stage != nil {
		if err := CheckName(name); err != nil {
			return err
		}
		if ok, err := d.stage.writeDirect(name, b); ok {
			return err
		}
	}
	return d.WriteNew(name, b)
}

// writeNew is WriteNew calling made (if not nil) once the file exists.
func (d *Dir) writeNew(name string, b []byte, made func()) error {
	if err := CheckName(name); err != nil {
		return err
	}
	fd, err := unix.Openat(d.fd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC|unix.O_NOFOLLOW, FilePerm)
	if err != nil {
		return &os.PathError{Op: "create", Path: d.join(name), Err: err}
	}
	if made != nil {
		made()
	}
	for len(b) > 0 && err == nil {
		var n int
		if n, err = unix.Write(fd, b); err == nil {
			b = b[n:]
		} else if err == unix.EINTR {
			err = nil
		}
	}
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err != nil {
		return &os.PathError{Op: "write", Path: d.join(name), Err: err}
	}
	return nil
}

// Create creates (or truncates) name for writing.
func (d *Dir) Create(name string) (*os.File, error) {
	return d.OpenFile(name, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC, FilePerm)
}

// OpenRead opens name read-only.
func (d *Dir) OpenRead(name string) (*os.File, error) {
	return d.OpenFile(name, unix.O_RDONLY, 0)
}

// Exists reports whether name exists in the directory.
func (d *Dir) Exists(name string) bool {
	if CheckName(name) != nil {
		return false
	}
	var st unix.Stat_t
	return unix.Fstatat(d.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil
}

// Remove unlinks name; a missing file is not an error.
func (d *Dir) Remove(name string) error {
	if err := CheckName(name); err != nil {
		return err
	}
	if err := unix.Unlinkat(d.fd, name, 0); err != nil && err != unix.ENOENT {
		return &os.PathError{Op: "remove", Path: d.join(name), Err: err}
	}
	return nil
}

// OpenSubdir opens a directory entry of d as a Dir, following a symlink:
// CRIU's previous images are reached through the "parent" symlink.
func (d *Dir) OpenSubdir(name string) (*Dir, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	fd, err := unix.Openat(d.fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: d.join(name), Err: err}
	}
	return &Dir{fd: fd, path: d.join(name)}, nil
}

// Symlink creates name in d pointing at target (e.g. "parent" → "../pre1").
func (d *Dir) Symlink(target, name string) error {
	if err := CheckName(name); err != nil {
		return err
	}
	if err := unix.Symlinkat(target, d.fd, name); err != nil {
		return &os.PathError{Op: "symlink", Path: d.join(name), Err: err}
	}
	return nil
}

// NextPagesID returns a pages id (for pages-<id>.img) not used yet in this
// directory, counting from 1 as CRIU does. Ids are unique per Dir value.
func (d *Dir) NextPagesID() uint32 {
	for {
		id := d.pagesID.Add(1)
		if !d.Exists(PagesImg(id)) {
			return id
		}
	}
}

// List returns the names in the directory.
func (d *Dir) List() ([]string, error) {
	fd, err := unix.Openat(d.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("images: list %s: %w", d.path, err)
	}
	f := os.NewFile(uintptr(fd), d.path)
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("images: list %s: %w", d.path, err)
	}
	return names, nil
}

func (d *Dir) join(name string) string {
	if d.path == "" {
		return name
	}
	return strings.TrimSuffix(d.path, "/") + "/" + name
}
