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

// filesDriver dumps and restores a task's file descriptors, by kind: each
// kind is an fdKind in a file of its own (fd_*.go) that registers itself.
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
	d.Task.FDs, err = d.Files.fdTable(d.Pid, fds)
	return err
}

// Restore closes the puppet's fds, then opens every file and dup3s it to
// its number; fds of one open file description share it again.
func (filesDriver) Restore(r *Restore, s *inject.Session) (err error) {
	if _, err := s.Call("close puppet's fds", unix.SYS_CLOSE_RANGE, 0, uint64(^uint32(0)), 0); err != nil {
		return err
	}
	first := map[model.ID]uint64{}
	rs := newRestoreFDs(r, s)
	defer func() {
		if cerr := rs.close(); err == nil {
			err = cerr
		}
	}()
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
		k := fdKindOf(f.Kind)
		if k == nil {
			return fmt.Errorf("%s: files of kind %d cannot be restored", what, f.Kind)
		}
		tmp, err := k.open(rs, what, f)
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
	// Kinds that refer to other fds of the task (epoll targets) are
	// completed once every fd is in place.
	for _, e := range r.Task.FDs {
		f := r.Tree.Files[e.File]
		if fin, ok := fdKindOf(f.Kind).(fdFinisher); ok && first[e.File] == uint64(e.Num) {
			if err := fin.finish(rs, fmt.Sprintf("fd %d", e.Num), uint64(e.Num), f); err != nil {
				return err
			}
		}
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

// fdKind is a sub-driver of the files driver: one kind of fd. A new kind
// (eventfd, epoll, pipes …) is a new file that registers an fdKind.
type fdKind interface {
	name() string
	// match reports whether an fd on target (stat st) is of this kind.
	match(target string, st *unix.Stat_t) bool
	// check refuses an fd of this kind that cannot be restored exactly.
	check(pid, fd int, flags uint64) error
	// fileKind is the model's kind of the files it makes.
	fileKind() model.FileKind
	// collect fills the kind's state into f, a new file of fd of the
	// frozen task pid (fi its fdinfo), and sets f.Kind.
	collect(pid int, fd *FD, f *model.File) error
	// open makes the file description in the task being restored and
	// returns its fd there.
	open(rs *restoreFDs, what string, f *model.File) (uint64, error)
}

// fdFinisher is a kind whose restore completes once every fd of the
// task is in place (an epoll set adds its targets); fd is the file's
// first number.
type fdFinisher interface {
	finish(rs *restoreFDs, what string, fd uint64, f *model.File) error
}

// noCollect is the collect of the kinds whose state is the path, flags
// and offset the files table keeps already.
type noCollect struct{}

func (noCollect) collect(int, *FD, *model.File) error { return nil }

// fdKinds are the kinds godwit dumps, in the order classify tries them.
var fdKinds []fdKind

// registerFDKind adds a kind; each kind's file calls it from init.
func registerFDKind(k fdKind) { fdKinds = append(fdKinds, k) }

// fdKindOf finds the kind that restores files of kind fk.
func fdKindOf(fk model.FileKind) fdKind {
	for _, k := range fdKinds {
		if k.fileKind() == fk {
			return k
		}
	}
	return nil
}

// classify finds the kind of an fd; for a kind godwit cannot dump yet,
// it names it instead.
func classify(target string, st *unix.Stat_t) (fdKind, string) {
	for _, k := range fdKinds {
		if k.match(target, st) {
			return k, ""
		}
	}
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

// byPath reports whether target is a path that reopening can find: not
// a pseudo-file (pipe:, anon_inode:), a memfd or a deleted file.
func byPath(target string) bool {
	return strings.HasPrefix(target, "/") && !strings.HasPrefix(target, "/memfd:") && !strings.HasSuffix(target, " (deleted)")
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
	Info    *procfs.FDInfo
	kind    fdKind
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
			Info:    fi,
			kind:    k,
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

// fdTable adds a file per open file description, with its kind's state,
// and returns the fds.
func (f *Files) fdTable(pid int, fds []FD) ([]model.FD, error) {
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
			if fd.kind != nil {
				if err := fd.kind.collect(pid, fd, f.byID[id]); err != nil {
					return nil, fmt.Errorf("fd %d: %s %s: %w", fd.Num, fd.kind.name(), fd.Path, err)
				}
			}
		}
		out = append(out, model.FD{Num: fd.Num, File: id, Cloexec: fd.Cloexec})
	}
	return out, nil
}

// NoMntID leaves mnt_id unset (the exe, cwd, root and mapped files have no
// fdinfo to read it from).
const NoMntID = -1
