package drivers

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"godwit/internal/abi/linux"
	"godwit/internal/inject"
	"godwit/internal/model"
	"godwit/internal/procfs"
)

// filesDriver dumps and restores a task's file descriptors, by kind
// (fdKinds on the dump side, fileRestorers on the restore side).
type filesDriver struct{}

func (filesDriver) Name() string    { return "files" }
func (filesDriver) After() []string { return []string{PhaseThreads, "session"} }

// Collect reads every fd (an unsupported kind fails the dump before any
// injection) and gives each open file description a file.
func (filesDriver) Collect(d *Dump) error {
	fds, err := CollectFDs(d.Pid)
	if err != nil {
		return err
	}
	d.Task.FDs = d.Files.fdTable(d.Pid, fds)
	return nil
}

// fileRestorer opens one file description in the task and returns its
// fd there.
type fileRestorer func(r *Restore, s *inject.Session, what string, f *model.File) (uint64, error)

// fileRestorers restore each model.FileKind.
var fileRestorers = map[model.FileKind]fileRestorer{model.Path: openPath}

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

// Restore closes the puppet's fds, then opens every file and dup3s it to
// its number; fds of one open file description share it again.
func (filesDriver) Restore(r *Restore, s *inject.Session) error {
	if _, err := s.Call("close puppet's fds", unix.SYS_CLOSE_RANGE, 0, uint64(^uint32(0)), 0); err != nil {
		return err
	}
	first := map[model.ID]uint64{}
	for _, e := range r.Task.FDs {
		fd := uint64(e.Num)
		what := fmt.Sprintf("fd %d", fd)
		dupFlags := uint64(0)
		if e.Cloexec {
			dupFlags = unix.O_CLOEXEC
		}
		if f, ok := first[e.File]; ok {
			// Another fd of the same open file description.
			if _, err := s.Call(what+": dup3", unix.SYS_DUP3, f, fd, dupFlags); err != nil {
				return err
			}
			continue
		}
		f := r.Tree.Files[e.File]
		open := fileRestorers[f.Kind]
		if open == nil {
			return fmt.Errorf("%s: files of kind %d cannot be restored", what, f.Kind)
		}
		tmp, err := open(r, s, what, f)
		if err != nil {
			return err
		}
		if tmp != fd {
			if _, err := s.Call(what+": dup3", unix.SYS_DUP3, tmp, fd, dupFlags); err != nil {
				return err
			}
			if _, err := s.Call(what+": close", unix.SYS_CLOSE, tmp); err != nil {
				return err
			}
		} else if dupFlags != 0 {
			if _, err := s.Call(what+": set close-on-exec", unix.SYS_FCNTL, fd, unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
				return err
			}
		}
		first[e.File] = fd
	}
	return nil
}

// Files allocates the ids of the tree's files: one per open file
// description (fd), and one per distinct (file, flags) of the exe, cwd,
// root and file-backed mappings, the file known by its device and inode.
type Files struct {
	byID  map[model.ID]*model.File
	byKey map[fileKey]model.ID
	next  model.ID
}

type fileKey struct {
	dev, ino uint64
	flags    uint32
}

func NewFiles() *Files {
	return &Files{byID: map[model.ID]*model.File{}, byKey: map[fileKey]model.ID{}, next: 1}
}

// Reg adds a file and returns its id. st describes the file (from a
// stat of /proc/PID/… links, so that it is the task's file even if the
// path now names another).
func (f *Files) Reg(path string, flags uint32, pos uint64, st *unix.Stat_t, mntID int) model.ID {
	id := f.next
	f.next++
	mf := &model.File{ID: id, Kind: model.Path, Path: path, Flags: flags, Pos: pos, MntID: mntID}
	if st != nil {
		mf.Mode = st.Mode
		mf.Dev, mf.Ino = st.Dev, st.Ino
		if st.Mode&unix.S_IFMT == unix.S_IFREG {
			recordIdentity(mf, path, flags, st)
		}
	}
	f.byID[id] = mf
	return id
}

// Table is every file allocated so far, by id.
func (f *Files) Table() map[model.ID]*model.File { return f.byID }

// Shared returns the id of a (file, flags) entry, adding it once.
func (f *Files) Shared(path string, flags uint32, st *unix.Stat_t, mntID int) model.ID {
	key := fileKey{st.Dev, st.Ino, flags}
	if id, ok := f.byKey[key]; ok {
		return id
	}
	id := f.Reg(path, flags, 0, st, mntID)
	f.byKey[key] = id
	return id
}

// LinkFile stats and names the target of a /proc/PID/… magic link.
func LinkFile(pid int, name string) (string, *unix.Stat_t, error) {
	p := procfs.Path(pid, name)
	target, err := os.Readlink(p)
	if err != nil {
		return "", nil, err
	}
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return "", nil, fmt.Errorf("stat %s: %w", p, err)
	}
	return target, &st, nil
}

// statelessDevices are the character devices whose fds reopening the path
// restores whole.
var statelessDevices = map[string]bool{
	"/dev/null": true, "/dev/zero": true, "/dev/full": true,
	"/dev/random": true, "/dev/urandom": true,
}

// fdKind is a sub-driver of the files driver: one kind of fd, as the
// dumper finds it. A new kind (eventfd, epoll, pipes …) is a new value in
// fdKinds, with its model.FileKind and a restorer in fileRestorers.
type fdKind interface {
	name() string
	// match reports whether an fd on target (stat st) is of this kind.
	match(target string, st *unix.Stat_t) bool
	// check refuses an fd of this kind that cannot be restored exactly.
	check(pid, fd int, flags uint64) error
}

// fdKinds are the kinds godwit dumps. Files, directories, named FIFOs and
// stateless character devices are reopened by path (model.Path).
var fdKinds = []fdKind{regularKind{}, dirKind{}, fifoKind{}, charDevKind{}}

type regularKind struct{}

func (regularKind) name() string                         { return "regular file" }
func (regularKind) match(_ string, st *unix.Stat_t) bool { return st.Mode&unix.S_IFMT == unix.S_IFREG }
func (regularKind) check(int, int, uint64) error         { return nil }

type dirKind struct{}

func (dirKind) name() string                         { return "directory" }
func (dirKind) match(_ string, st *unix.Stat_t) bool { return st.Mode&unix.S_IFMT == unix.S_IFDIR }
func (dirKind) check(int, int, uint64) error         { return nil }

type charDevKind struct{}

func (charDevKind) name() string { return "character device" }

// match accepts only devices without per-open state; a tun, kvm, fuse or
// tty fd reopened would be another object.
func (charDevKind) match(target string, st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFCHR && statelessDevices[target]
}
func (charDevKind) check(int, int, uint64) error { return nil }

type fifoKind struct{}

func (fifoKind) name() string                         { return "fifo" }
func (fifoKind) match(_ string, st *unix.Stat_t) bool { return st.Mode&unix.S_IFMT == unix.S_IFIFO }

// check accepts the named FIFOs that reopening by path restores whole:
// opened read-write (so that the open does not wait for a peer) and with
// nothing in the pipe (its contents are not saved yet).
func (fifoKind) check(pid, n int, flags uint64) error {
	if flags&unix.O_ACCMODE != unix.O_RDWR {
		return fmt.Errorf("opened read-only or write-only is not supported yet")
	}
	f, err := os.OpenFile(procfs.Path(pid, "fd/"+strconv.Itoa(n)), unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	queued, err := unix.IoctlGetInt(int(f.Fd()), unix.TIOCINQ) // FIONREAD
	if err != nil {
		return fmt.Errorf("FIONREAD: %w", err)
	}
	if queued != 0 {
		return fmt.Errorf("%d bytes in the pipe: saving them is not supported yet", queued)
	}
	return nil
}

// classify finds the kind of an fd; for a kind godwit cannot dump yet,
// it names it instead.
func classify(target string, st *unix.Stat_t) (fdKind, string) {
	switch {
	case strings.HasPrefix(target, "pipe:"):
		return nil, "pipe"
	case strings.HasPrefix(target, "socket:"):
		return nil, "socket"
	case strings.HasPrefix(target, "anon_inode:"):
		return nil, strings.Trim(strings.TrimPrefix(target, "anon_inode:"), "[]")
	case strings.HasPrefix(target, "/memfd:"):
		return nil, "memfd"
	case strings.HasSuffix(target, " (deleted)"):
		return nil, "deleted file"
	case !strings.HasPrefix(target, "/"):
		return nil, target
	}
	for _, k := range fdKinds {
		if k.match(target, st) {
			return k, ""
		}
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFCHR:
		if strings.HasPrefix(target, "/dev/pts/") || target == "/dev/ptmx" || strings.HasPrefix(target, "/dev/tty") {
			return nil, "tty"
		}
		return nil, "character device " + target
	case unix.S_IFBLK:
		return nil, "block device"
	case unix.S_IFSOCK:
		return nil, "socket"
	}
	return nil, "unknown file"
}

// FD is one collected file descriptor.
type FD struct {
	Num     int
	Path    string
	Flags   uint32 // open flags without O_CLOEXEC
	Cloexec bool
	Pos     uint64
	Stat    unix.Stat_t
	MntID   int
}

// CollectFDs reads every fd of pid. A kind godwit cannot dump yet fails
// with "fd N: KIND is not supported yet".
func CollectFDs(pid int) ([]FD, error) {
	nums, err := procfs.FDs(pid)
	if err != nil {
		return nil, err
	}
	sort.Ints(nums)
	var out []FD
	for _, n := range nums {
		target, st, err := LinkFile(pid, "fd/"+strconv.Itoa(n))
		if err != nil {
			return nil, fmt.Errorf("fd %d: %w", n, err)
		}
		k, unsupported := classify(target, st)
		if k == nil {
			return nil, fmt.Errorf("fd %d: %s is not supported yet", n, unsupported)
		}
		fi, err := procfs.ReadFDInfo(pid, n)
		if err != nil {
			return nil, fmt.Errorf("fd %d: %w", n, err)
		}
		if err := k.check(pid, n, fi.Flags); err != nil {
			return nil, fmt.Errorf("fd %d: %s %s: %w", n, k.name(), target, err)
		}
		out = append(out, FD{
			Num:     n,
			Path:    target,
			Flags:   uint32(fi.Flags &^ unix.O_CLOEXEC),
			Cloexec: fi.Flags&unix.O_CLOEXEC != 0,
			Pos:     uint64(fi.Pos),
			Stat:    *st,
			MntID:   fi.MntID,
		})
	}
	return out, nil
}

// sameFile reports whether fds a and b of pid share one open file
// description (dup, fork): they must then share one file id, as in CRIU,
// so that the restored fds share offset and flags again.
func sameFile(pid, a, b int) bool {
	r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(pid), uintptr(pid), linux.KcmpFile, uintptr(a), uintptr(b), 0)
	return e == 0 && r == 0
}

// fdTable adds a file per open file description and returns the fds.
func (f *Files) fdTable(pid int, fds []FD) []model.FD {
	out := make([]model.FD, 0, len(fds))
	for i := range fds {
		fd := &fds[i]
		id := model.ID(0)
		// Only fds on the same inode can share a description.
		for j := 0; j < i && id == 0; j++ {
			if fds[j].Stat.Dev == fd.Stat.Dev && fds[j].Stat.Ino == fd.Stat.Ino && sameFile(pid, fds[j].Num, fd.Num) {
				id = out[j].File
			}
		}
		if id == 0 {
			id = f.Reg(fd.Path, fd.Flags, fd.Pos, &fd.Stat, fd.MntID)
		}
		out = append(out, model.FD{Num: fd.Num, File: id, Cloexec: fd.Cloexec})
	}
	return out
}

// NoMntID leaves mnt_id unset (the exe, cwd, root and mapped files have no
// fdinfo to read it from).
const NoMntID = -1
