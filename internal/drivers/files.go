package drivers

import (
	"fmt"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"godwit/internal/abi/linux"
	"godwit/internal/inject"
	"godwit/internal/model"
	"godwit/internal/netlock"
	"godwit/internal/opts"
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
	// Runs with the first call placing an fd (in its stop); until then
	// nothing in the task looks at its fd table.
	s.Later("close puppet's fds", unix.SYS_CLOSE_RANGE, 0, uint64(^uint32(0)), 0)
	first := map[model.ID]uint64{}
	var made []model.FD // the fds whose description this task made
	rs := newRestoreFDs(r, s)
	defer func() {
		if cerr := rs.close(); err == nil {
			err = cerr
		}
	}()
	if err := rs.premakeConns(); err != nil {
		return err
	}
	// The fd table once the puppet's fds are closed (premakeConns works
	// in godwit): empty.
	rs.group.used, rs.group.low = map[uint64]bool{}, 0
	for _, e := range r.Task.FDs {
		fd := uint64(e.Num)
		what := fmt.Sprintf("fd %d", fd)
		dupFlags := uint64(0)
		if e.Cloexec {
			dupFlags = unix.O_CLOEXEC
		}
		if _, dup := first[e.File]; !dup && len(r.Inherit) == 0 {
			if at, ok := r.Opened[e.File]; !ok || at.Pid == r.Task.Pid {
				f := r.Tree.Files[e.File]
				if k := fdKindOf(f.Kind); k != nil {
					queued, err := rs.tryQueue(what, e, f, k)
					if err != nil {
						return err
					}
					if queued {
						first[e.File] = fd
						made = append(made, e)
						if r.Opened != nil {
							r.Opened[e.File] = OpenedAt{Pid: r.Task.Pid, FD: e.Num}
						}
						continue
					}
				}
			}
		}
		// Another fd of a description placed already, in this task or
		// in another of the tree: a dup3, or the description taken by
		// godwit and passed, queued.
		if queued, err := rs.tryQueueShared(what, e, first); err != nil {
			return err
		} else if queued {
			if _, ok := first[e.File]; !ok {
				first[e.File] = fd
			}
			continue
		}
		// The fd-by-fd way, after what was queued.
		if err := rs.flush(); err != nil {
			return err
		}
		rs.unknown()
		if f, ok := first[e.File]; ok {
			// Another fd of the same open file description.
			if _, err := s.Call(what+": dup3", unix.SYS_DUP3, f, fd, dupFlags); err != nil {
				return err
			}
			if err := lockPOSIX(s, what, fd, e.Locks); err != nil {
				return err
			}
			continue
		}
		if at, ok := r.Opened[e.File]; ok && at.Pid != r.Task.Pid {
			// Made in another task of the tree (inherited by fork,
			// passed): share that very description.
			if err := takeFD(s, what, at, fd, e.Cloexec); err != nil {
				return err
			}
			if err := lockPOSIX(s, what, fd, e.Locks); err != nil {
				return err
			}
			first[e.File] = fd
			continue
		}
		f := r.Tree.Files[e.File]
		k := fdKindOf(f.Kind)
		if k == nil {
			return fmt.Errorf("%s: files of kind %d cannot be restored", what, f.Kind)
		}
		var tmp uint64
		if in, ok, err := inherited(r, f); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		} else if ok {
			tmp, err = rs.install(what+" (--inherit-fd)", in)
			if err != nil {
				return err
			}
		} else if tmp, err = k.open(rs, what, f); err != nil {
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
		if err := lockDescription(s.Pid(), fd, f); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if err := lockPOSIX(s, what, fd, e.Locks); err != nil {
			return err
		}
		first[e.File] = fd
		made = append(made, e)
		if r.Opened != nil {
			r.Opened[e.File] = OpenedAt{Pid: r.Task.Pid, FD: e.Num}
		}
	}
	if err := rs.flush(); err != nil {
		return err
	}
	// Kinds that refer to other fds of the task (epoll targets) are
	// completed once every fd is in place.
	for _, e := range made {
		f := r.Tree.Files[e.File]
		if fin, ok := fdKindOf(f.Kind).(fdFinisher); ok {
			if err := fin.finish(rs, fmt.Sprintf("fd %d", e.Num), uint64(e.Num), f); err != nil {
				return err
			}
		}
		if hasOwnerState(f) {
			if err := restoreOwner(r, s, fmt.Sprintf("fd %d", e.Num), uint64(e.Num), f); err != nil {
				return err
			}
		}
	}
	return nil
}

// OpenedAt is an fd of a restored task that holds an open file
// description.
type OpenedAt struct {
	Pid, FD int
}

// takeFD gives the task fd, a copy of fd at.FD of task at.Pid (one open
// file description in both), by injected pidfd_open and pidfd_getfd: the
// task, still root, may take it.
func takeFD(s *inject.Session, what string, at OpenedAt, fd uint64, cloexec bool) error {
	pfd, err := s.Call(fmt.Sprintf("%s: pidfd_open(%d)", what, at.Pid), unix.SYS_PIDFD_OPEN, uint64(at.Pid), 0)
	if err != nil {
		return err
	}
	tmp, err := s.Call(fmt.Sprintf("%s: pidfd_getfd(%d, %d)", what, at.Pid, at.FD), unix.SYS_PIDFD_GETFD, pfd, uint64(at.FD), 0)
	if _, cerr := s.Call(what+": close pidfd", unix.SYS_CLOSE, pfd); cerr != nil && err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if tmp != fd {
		flags := uint64(0)
		if cloexec {
			flags = unix.O_CLOEXEC
		}
		if _, err := s.Call(what+": dup3", unix.SYS_DUP3, tmp, fd, flags); err != nil {
			return err
		}
		_, err := s.Call(what+": close", unix.SYS_CLOSE, tmp)
		return err
	}
	if !cloexec { // pidfd_getfd sets close-on-exec
		_, err := s.Call(what+": clear close-on-exec", unix.SYS_FCNTL, fd, unix.F_SETFD, 0)
		return err
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
	// descs are the open file descriptions, by inode (only fds of one
	// inode can share one), each list in kcmp order.
	descs map[inodeKey][]descRef
	// GhostLimit is the largest deleted file whose contents the dump
	// carries (--ghost-limit).
	GhostLimit uint64
	// FileLocks: dump the file locks (--file-locks); without it a held
	// lock fails the dump, as in CRIU.
	FileLocks bool
	// TCPEstablished dumps established TCP connections in repair mode
	// (--tcp-established); SkipInFlight leaves out the connections
	// waiting in listeners' accept queues (--skip-in-flight).
	TCPEstablished, SkipInFlight bool
	// ExtTTY are the ttys left out of the dump, by st_rdev and st_dev
	// (--external tty[rdev:dev]): the restore is given them.
	ExtTTY map[[2]uint64]bool
	// pipes are the pipes peeked, by inode (fd_pipe.go); buildIDs the
	// build-ids of regular files read, by device and inode.
	pipes    map[uint64]pipePeek
	buildIDs map[[2]uint64][]byte
	inet     *inetDump                 // fd_inet.go
	ghosts   map[[2]uint64]*model.File // deleted files read, by device and inode
	FDOptions
	links []string // made by --link-remap, as seen from godwit (RemoveLinks)
	// roots are the tasks' roots (nsRoot), by pid.
	roots   map[int]nsRoot
	rootsMu sync.Mutex

	// TreeNetns is the network namespace of the tree's root: the one
	// the network lock is made in and the restore recreates the sockets
	// in. An inet socket elsewhere is refused (inetStateOf).
	TreeNetns NetnsID

	// NetLock is the dump's network lock: a socket driver adds each TCP
	// connection to it (Lock) before the connection goes into repair
	// mode. nil: nothing to lock.
	NetLock *netlock.Lock
	memfds  map[[2]uint64]*model.MemfdState
	ptys    map[uint32]*model.PtyState // by index
	cttys   map[int]uint64             // controlling terminals' devices, by pid
	// cloexec are the fds (indexes in the task's FDs) whose
	// close-on-exec flag is still to be read in the task, by pid
	// (CollectCloexec).
	cloexec map[int][]int
	// cloexecMu guards cloexec: a dump reads the tasks' fds one at a
	// time, but their close-on-exec flags in the tasks at once.
	cloexecMu sync.Mutex
}

// FDOptions are the dump's options for files that cannot be saved as
// they are by default.
type FDOptions struct {
	// LinkRemap links a file whose name was removed but that has other
	// links back to a hidden name instead of failing (--link-remap).
	LinkRemap bool
	// EvasiveDevices dumps a device fd whose path no longer leads to its
	// device by another node of it under /dev (--evasive-devices).
	EvasiveDevices bool
	// ForceIrmap finds the path of each inotify watch by name on its
	// mount rather than by its file handle (--force-irmap).
	ForceIrmap bool
	// NoGhostFiemap finds the holes of deleted files with lseek
	// SEEK_DATA/SEEK_HOLE alone, not FIEMAP first (--no-ghost-fiemap).
	NoGhostFiemap bool
	// ExtFiles are the files left out of the dump, by mount id and inode
	// (--external file[mnt_id:inode]): the restore is given them.
	ExtFiles map[ExtFile]bool
}

// ExtFile is a file --external names: its mount id (fdinfo's mnt_id) and
// inode.
type ExtFile struct {
	MntID uint32
	Ino   uint64
}

type fileKey struct {
	dev, ino uint64
	flags    uint32
}

func NewFiles() *Files {
	return &Files{byID: map[model.ID]*model.File{}, byKey: map[fileKey]model.ID{}, next: 1, GhostLimit: opts.DefaultGhostLimit}
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
			if f.buildIDs == nil {
				f.buildIDs = map[[2]uint64][]byte{}
			}
			recordIdentity(mf, path, flags, st, f.buildIDs)
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
	// frozen task pid, and sets f.Kind; fl is the tree's file table.
	collect(fl *Files, pid int, fd *FD, f *model.File) error
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
	Info    *procfs.FDInfo // nil: not read (not needed)
	kind    fdKind
	// cloexecUnknown: fdinfo was not read, so Cloexec is read in the
	// task (collectCloexec).
	cloexecUnknown bool
	posKnown       bool // lseek told Pos
	// pipe: a pipe's size and queued bytes (pipeKnown), read on
	// godwit's copy of the fd.
	pipeKnown            bool
	pipeSize, pipeQueued int
	owner                model.FileOwner
}

// descRef is an fd that holds an open file description of the tree.
type descRef struct {
	pid, fd int
	id      model.ID
}

// kcmpFile orders the open file descriptions of fd a of pid and fd b of
// qid as the kernel does (kcmp KCMP_FILE: 0 equal, 1 less, 2 greater).
func kcmpFile(pid, a, qid, b int) (int, error) {
	r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(pid), uintptr(qid), linux.KcmpFile, uintptr(a), uintptr(b), 0)
	if e != 0 {
		return 0, fmt.Errorf("kcmp fd %d of %d with fd %d of %d: %w", a, pid, b, qid, e)
	}
	return int(r), nil
}

// inodeKey is what every fd of one open file description shows alike
// and no one can change: the file's device and inode, its mount, its
// access mode and, for the anon inode all eventfds, epolls, timerfds …
// share, the link target (its kind) and an eventfd's id. Only fds of one
// key are told apart with kcmp. (The offset and the other flags would
// split it further, but a process outside the tree sharing the
// description may change them between two reads.)
type inodeKey struct {
	dev, ino uint64
	mnt      int
	acc      uint32
	anon     string
}

func descKey(fd *FD) inodeKey {
	k := inodeKey{dev: fd.Stat.Dev, ino: fd.Stat.Ino, mnt: fd.MntID, acc: fd.Flags & unix.O_ACCMODE}
	if strings.HasPrefix(fd.Path, "anon_inode:") {
		k.anon = fd.Path
		if fd.Info != nil {
			// One eventfd context, one file (it cannot be reopened).
			if id, ok := fd.Info.Get("eventfd-id"); ok {
				k.anon += " " + id
			}
		}
	}
	return k
}

// describe returns the id of the open file description behind fd of pid:
// that of an fd of the tree seen before which shares it (dup, fork, fds
// passed between tasks: they must share one file id, as in CRIU, so that
// the restored fds share offset and flags again), or 0 if none does. The
// descriptions seen so far are kept sorted by the kernel's own order
// (kcmp) among those of the same inode, so this is a binary search:
// O(log n) kcmp calls per fd (n: the descriptions of its inode), not one
// per fd seen before.
func (f *Files) describe(pid, fd int, descs []descRef) (model.ID, int, error) {
	lo, hi := 0, len(descs)
	for lo < hi {
		m := (lo + hi) / 2
		r := descs[m]
		c, err := kcmpFile(pid, fd, r.pid, r.fd)
		if err != nil {
			return 0, 0, err
		}
		switch c {
		case 0:
			return r.id, m, nil
		case 1:
			hi = m
		case 2:
			lo = m + 1
		default:
			return 0, 0, fmt.Errorf("kcmp fd %d of %d: no order (%d)", fd, pid, c)
		}
	}
	return 0, lo, nil
}

// fdTable adds a file per open file description, with its kind's state,
// and returns the fds.
func (f *Files) fdTable(pid int, fds []FD) ([]model.FD, error) {
	places, pending, err := f.describeAll(pid, fds)
	if err != nil {
		return nil, err
	}
	f.prefetchInet(pid, fds, func(i int) bool { return places[i].id == 0 && places[i].leader == i })
	ids := make([]model.ID, len(fds))
	out := make([]model.FD, 0, len(fds))
	var unknown []int // indexes in out whose Cloexec the task tells
	for i := range fds {
		fd := &fds[i]
		id := places[i].id
		switch {
		case id != 0:
		case places[i].leader != i:
			id = ids[places[i].leader] // the leader is a lower fd: done
		default:
			id = f.Reg(fd.Path, fd.Flags, fd.Pos, &fd.Stat, fd.MntID)
			f.byID[id].Owner = fd.owner
			if f.external(fd, f.byID[id]) {
				break
			}
			if fd.kind != nil {
				if err := fd.kind.collect(f, pid, fd, f.byID[id]); err != nil {
					return nil, fmt.Errorf("fd %d: %s %s: %w", fd.Num, fd.kind.name(), fd.Path, err)
				}
			}
		}
		ids[i] = id
		e := model.FD{Num: fd.Num, File: id, Cloexec: fd.Cloexec}
		if fd.cloexecUnknown {
			unknown = append(unknown, len(out))
		}
		if fd.Info != nil {
			posix, desc, err := fdLocks(fd.Info)
			if err == nil && len(posix)+len(desc) > 0 && !f.FileLocks {
				err = fmt.Errorf("a file lock is held: dump with --file-locks (-l)")
			}
			if err != nil {
				return nil, fmt.Errorf("fd %d: %s: %w", fd.Num, fd.Path, err)
			}
			e.Locks = posix
			if mf := f.byID[id]; len(mf.Locks) == 0 {
				mf.Locks = desc
			}
		}
		out = append(out, e)
	}
	f.mergeDescs(pid, fds, ids, pending)
	if len(unknown) > 0 {
		f.cloexecMu.Lock()
		if f.cloexec == nil {
			f.cloexec = map[int][]int{}
		}
		f.cloexec[pid] = unknown
		f.cloexecMu.Unlock()
	}
	return out, nil
}

// external makes mf, the file of fd, external if --external names it: a
// file by path (regular, directory, device) or a deleted one.
func (f *Files) external(fd *FD, mf *model.File) bool {
	if len(f.ExtFiles) == 0 || fd.MntID < 0 || fd.kind == nil {
		return false
	}
	if k := fd.kind.fileKind(); k != model.Path && k != model.Ghost {
		return false
	}
	if !f.ExtFiles[ExtFile{uint32(fd.MntID), fd.Stat.Ino}] {
		return false
	}
	mf.Kind, mf.Path, mf.External = model.Path, ExternalFileKey(uint32(fd.MntID), fd.Stat.Ino), true
	mf.Size, mf.BuildID = nil, nil
	return true
}

// NoMntID leaves mnt_id unset (the exe, cwd, root and mapped files have no
// fdinfo to read it from).
const NoMntID = -1
