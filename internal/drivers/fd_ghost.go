package drivers

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/inject"
	"godwit/internal/model"
	"godwit/internal/procfs"
)

// Deleted files (ghosts): a regular file open in the task whose last name
// was unlinked. Its contents and attributes are saved (up to
// --ghost-limit, as CRIU's ghost files). The restore creates the file
// again at its old path, by an injected openat in the task (its own
// mounts), fills it and sets its owner, mode and times from godwit
// through the task's fd, unlinks it, and opens each description from
// godwit's copy. Where the old path is taken by another file, the file is
// made under a temporary name in the same directory (unlinked as well):
// /proc/PID/fd then names that instead of the old path.

func init() { registerFDKind(ghostKind{}) }

type ghostKind struct{}

func (ghostKind) name() string             { return "deleted file" }
func (ghostKind) fileKind() model.FileKind { return model.Ghost }
func (ghostKind) match(target string, st *unix.Stat_t) bool {
	return strings.HasPrefix(target, "/") && !strings.HasPrefix(target, "/memfd:") &&
		strings.HasSuffix(target, " (deleted)") && st.Mode&unix.S_IFMT == unix.S_IFREG
}
func (ghostKind) check(int, int, uint64) error { return nil }

func (ghostKind) collect(fl *Files, pid int, fd *FD, f *model.File) error {
	return fl.readGhost(pid, procfs.Path(pid, "fd/"+strconv.Itoa(fd.Num)), strings.TrimSuffix(fd.Path, " (deleted)"), &fd.Stat, f)
}

// SharedGhost returns the id of a (deleted file, flags) entry for a file
// mapping (of path, whose name was removed), adding it once; its contents
// are read from src (the mapping's map_files link) once per inode, so the
// mappings and fds of one deleted file in the tree stay one object.
func (fl *Files) SharedGhost(pid int, src, path string, flags uint32, st *unix.Stat_t) (model.ID, error) {
	key := fileKey{st.Dev, st.Ino, flags}
	if id, ok := fl.byKey[key]; ok {
		return id, nil
	}
	id := fl.Reg(path, flags, 0, st, NoMntID)
	if err := fl.readGhost(pid, src, path, st, fl.byID[id]); err != nil {
		delete(fl.byID, id)
		return 0, fmt.Errorf("deleted file %s: %w", path, err)
	}
	fl.byKey[key] = id
	return id, nil
}

// readGhost makes f the deleted file path (stat st) of task pid, reading
// its contents from src unless another description of the inode already
// did; with --link-remap, a file that still has links elsewhere is linked
// back instead (linkRemap).
func (fl *Files) readGhost(pid int, src, path string, st *unix.Stat_t, f *model.File) error {
	// The same inode, already read for another description, is shared.
	key := [2]uint64{st.Dev, st.Ino}
	if o := fl.ghosts[key]; o != nil {
		f.Kind, f.Path, f.Size, f.BuildID, f.Ghost = model.Ghost, o.Path, nil, nil, o.Ghost
		return nil
	}
	if st.Nlink != 0 {
		if !fl.LinkRemap {
			return fmt.Errorf("its name was removed but it has %d other links: dump with --link-remap", st.Nlink)
		}
		return fl.linkRemap(pid, src, path, st, f)
	}
	// A file of no link at all cannot be linked again (the kernel's
	// linkat refuses an inode of i_nlink 0 that is not O_TMPFILE): it is
	// saved as a ghost even with --link-remap, as CRIU does.
	fd, err := unix.Open(src, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return fmt.Errorf("open to save its contents: %w", err)
	}
	defer unix.Close(fd)
	if err := ghostXattrs(fd); err != nil {
		return err
	}
	// Only the data is saved, its holes stay holes (--ghost-limit
	// bounds the data, as CRIU's bounds the blocks).
	chunks, err := ghostChunks(fd, uint64(st.Size), !fl.NoGhostFiemap)
	if err != nil {
		return fmt.Errorf("find its data and holes: %w", err)
	}
	var total uint64
	for _, c := range chunks {
		total += c.Len
	}
	if total > fl.GhostLimit {
		return fmt.Errorf("%d bytes of data, over --ghost-limit (%d)", total, fl.GhostLimit)
	}
	data := make([]byte, total)
	at := 0
	for _, c := range chunks {
		for off := uint64(0); off < c.Len; {
			n, err := unix.Pread(fd, data[at:at+int(c.Len-off)], int64(c.Off+off))
			if err != nil || n == 0 {
				return fmt.Errorf("read its contents at %d of %d: %v", c.Off+off, st.Size, err)
			}
			off += uint64(n)
			at += n
		}
	}
	// A file of no hole is saved whole (the plain layout); any other,
	// even one of no data at all (ftruncate only), as its chunks.
	holes := st.Size > 0 && !(len(chunks) == 1 && chunks[0] == (model.GhostChunk{Off: 0, Len: uint64(st.Size)}))
	if !holes {
		chunks = nil
	}
	if fl.ghosts == nil {
		fl.ghosts = map[[2]uint64]*model.File{}
	}
	fl.ghosts[key] = f
	f.Kind, f.Size, f.BuildID = model.Ghost, nil, nil
	f.Path = path
	f.Ghost = &model.GhostState{
		Dev: st.Dev, Ino: st.Ino, Mode: st.Mode, UID: st.Uid, GID: st.Gid, Size: uint64(st.Size), Data: data,
		Chunks: chunks, Holes: holes, Atime: st.Atim, Mtime: st.Mtim,
	}
	return nil
}

// linkRemap links the file of task pid behind src (a /proc magic link)
// to link_remap.ID in the directory of its old path, in the task's root,
// and makes f a deleted file restored from that link (CRIU's
// REMAP_LINKED); no contents are saved, so --ghost-limit does not apply.
// The link stays after a dump that succeeds (the restore removes it);
// RemoveLinks removes it when the dump fails.
func (fl *Files) linkRemap(pid int, src, path string, st *unix.Stat_t, f *model.File) error {
	i := strings.LastIndexByte(path, '/')
	if i < 0 {
		return fmt.Errorf("link it back: old path %q is not absolute", path)
	}
	link := fmt.Sprintf("%s/link_remap.%d", path[:i], f.ID)
	// path is as /proc/PID/fd names the file: not always from the
	// task's root (a chrooted task's is a directory of godwit's).
	n, err := nsRootOf(pid)
	if err != nil {
		return fmt.Errorf("--link-remap: %w", err)
	}
	at, ok := n.path(link)
	if !ok {
		return fmt.Errorf("--link-remap: %s is outside the root of task %d", link, pid)
	}
	if err := unix.Linkat(unix.AT_FDCWD, src, unix.AT_FDCWD, at, unix.AT_SYMLINK_FOLLOW); err != nil {
		return fmt.Errorf("--link-remap: link it to %s: %w", link, err)
	}
	fl.links = append(fl.links, at)
	if fl.ghosts == nil {
		fl.ghosts = map[[2]uint64]*model.File{}
	}
	fl.ghosts[[2]uint64{st.Dev, st.Ino}] = f
	f.Kind, f.Size, f.BuildID = model.Ghost, nil, nil
	f.Path = path
	f.Ghost = &model.GhostState{Dev: st.Dev, Ino: st.Ino, Mode: st.Mode, UID: st.Uid, GID: st.Gid, Linked: link}
	return nil
}

// RemoveLinks removes the links --link-remap made: the rollback of a
// dump that failed.
func (fl *Files) RemoveLinks() error {
	var errs []error
	for _, at := range fl.links {
		if err := unix.Unlink(at); err != nil && err != unix.ENOENT {
			errs = append(errs, fmt.Errorf("remove --link-remap link %s: %w", at, err))
		}
	}
	fl.links = nil
	return errors.Join(errs...)
}

func (ghostKind) open(rs *restoreFDs, what string, f *model.File) (uint64, error) {
	g := f.Ghost
	if g == nil {
		return 0, fmt.Errorf("%s: deleted file without its contents", what)
	}
	key := [2]uint64{g.Dev, g.Ino}
	held, ok := rs.ghosts[key]
	if !ok {
		var err error
		if held, err = ghostOfTree(rs, g); err != nil {
			return 0, fmt.Errorf("%s: %w", what, err)
		}
		if held < 0 {
			if held, err = ghostMapped(rs, g); err != nil {
				return 0, fmt.Errorf("%s: %w", what, err)
			}
		}
		if held < 0 && isTmpfile(f.Flags) {
			// The description the O_TMPFILE open made: made so again,
			// so that it keeps its flags (F_GETFL shows O_TMPFILE).
			held, tfd, err := MakeGhost(rs.s, what, f)
			if err != nil {
				return 0, err
			}
			if f.Pos != 0 {
				if _, err := unix.Seek(held, int64(f.Pos), unix.SEEK_SET); err != nil {
					unix.Close(held)
					return 0, fmt.Errorf("%s: seek to %d: %w", what, f.Pos, err)
				}
			}
			rs.ghosts[key] = held
			return tfd, nil
		}
		if held < 0 {
			if held, err = makeGhost(rs, what, f); err != nil {
				return 0, err
			}
		}
		rs.ghosts[key] = held
	}
	if isTmpfile(f.Flags) {
		// Another description of the file holds it already: this one
		// is reopened, which an O_TMPFILE open cannot do.
		c := *f
		c.Flags &^= unix.O_TMPFILE
		f = &c
	}
	return reopenHeld(rs, what, "deleted file "+f.Path, held, f)
}

// isTmpfile reports whether open flags are those of an O_TMPFILE open
// (F_GETFL keeps __O_TMPFILE and O_DIRECTORY, which unix.O_TMPFILE is).
func isTmpfile(flags uint32) bool { return flags&unix.O_TMPFILE == unix.O_TMPFILE }

// ghostOfTree takes a copy of the deleted file from another task of the
// tree that already holds it; -1 when none does.
func ghostOfTree(rs *restoreFDs, g *model.GhostState) (int, error) {
	at, ok := rs.heldElsewhere(objectKey(&model.File{Kind: model.Ghost, Ghost: g}))
	if !ok {
		return -1, nil
	}
	fd, err := grabFD(at.Pid, at.FD)
	if err != nil {
		return -1, fmt.Errorf("deleted file held by %d fd %d: %w", at.Pid, at.FD, err)
	}
	return fd, nil
}

// ghostMapped opens the deleted file from a mapping of it in the tree (the
// layout, before any fd, made it again); -1 when none maps it.
func ghostMapped(rs *restoreFDs, g *model.GhostState) (int, error) {
	return openMapped(rs, "deleted file", func(f *model.File) bool {
		return f.Kind == model.Ghost && f.Ghost != nil && f.Ghost.Dev == g.Dev && f.Ghost.Ino == g.Ino
	})
}

// openMapped opens, read-write through map_files, the first file mapped
// in a live task of the tree that match accepts; -1 when none maps one.
func openMapped(rs *restoreFDs, what string, match func(*model.File) bool) (int, error) {
	for _, k := range rs.r.Tree.Tasks {
		if k.MM == nil || k.State != model.Alive && k.State != model.Stopped {
			continue
		}
		for _, v := range k.MM.VMAs {
			if !v.FileBacked() {
				continue
			}
			mf := rs.r.Tree.Files[model.ID(v.Shmid)]
			if mf == nil || !match(mf) {
				continue
			}
			p := procfs.Path(k.Pid, procfs.MapFilesName(v.Start, v.End))
			fd, err := unix.Open(p, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
			if err != nil {
				return -1, fmt.Errorf("%s mapped by %d: %w", what, k.Pid, err)
			}
			return fd, nil
		}
	}
	return -1, nil
}

// makeGhost creates the deleted file again (see above) and returns
// godwit's descriptor of it.
func makeGhost(rs *restoreFDs, what string, f *model.File) (int, error) {
	held, tfd, err := MakeGhost(rs.s, what, f)
	if err != nil {
		return -1, err
	}
	if _, err := rs.s.Call(what+": close", unix.SYS_CLOSE, tfd); err != nil {
		unix.Close(held)
		return -1, err
	}
	return held, nil
}

// MakeGhost creates the deleted file f again in the task of s (its mounts),
// fills it and unlinks it; it returns godwit's descriptor of it and the
// task's (O_RDWR), both for the caller to close.
func MakeGhost(s *inject.Session, what string, f *model.File) (held int, tfd uint64, err error) {
	g := f.Ghost
	if g == nil {
		return -1, 0, fmt.Errorf("%s: deleted file without its contents", what)
	}
	if g.Linked != "" {
		return openLinked(s, what, f)
	}
	if isTmpfile(f.Flags) {
		return makeTmpfile(s, what, f)
	}
	path := f.Path
	create := func(p string) (uint64, error) {
		return s.Openat(what+": recreate deleted file", p, unix.O_CREAT|unix.O_EXCL|unix.O_RDWR|unix.O_NOFOLLOW|unix.O_NOCTTY)
	}
	tfd, err = create(path)
	if en, ok := errnoOf(err); ok && en == unix.EEXIST {
		i := strings.LastIndexByte(path, '/')
		path = fmt.Sprintf("%s/.godwit-ghost-%d-%d", path[:i], g.Dev, g.Ino)
		tfd, err = create(path)
	}
	if err != nil {
		return -1, 0, err
	}
	held, err = grabFD(s.Pid(), int(tfd))
	if err == nil {
		err = fillGhost(held, g)
		if err != nil {
			unix.Close(held)
		}
	}
	// Unlinked in any case: a half-made file must not stay behind.
	a, perr := s.PutString(0, path)
	if perr == nil {
		_, perr = s.Call(what+": unlink "+path, unix.SYS_UNLINKAT, atFdcwd, a, 0)
	}
	if err == nil && perr != nil {
		unix.Close(held)
		err = perr
	}
	if err != nil {
		if _, cerr := s.Call(what+": close", unix.SYS_CLOSE, tfd); cerr != nil {
			err = errors.Join(err, cerr)
		}
		return -1, 0, fmt.Errorf("%s: deleted file %s: %w", what, f.Path, err)
	}
	return held, tfd, nil
}

// makeTmpfile makes the deleted file f, opened with O_TMPFILE (its
// flags), again as an O_TMPFILE file in the same directory of the task's
// mounts, with f's flags, and fills it. The kernel shows no sign of
// whether it may be linked (made without O_EXCL and never linked):
// it is made with O_EXCL, as glibc's tmpfile() and Python's
// TemporaryFile() make theirs, so that no name can be given to a file
// that may never have allowed one.
func makeTmpfile(s *inject.Session, what string, f *model.File) (held int, tfd uint64, err error) {
	i := strings.LastIndexByte(f.Path, '/')
	if i < 0 {
		return -1, 0, fmt.Errorf("%s: O_TMPFILE file %q: not an absolute path", what, f.Path)
	}
	dir := f.Path[:i]
	if dir == "" {
		dir = "/"
	}
	flags := int(f.Flags)&^(unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC) | unix.O_EXCL | unix.O_NOCTTY
	// Filled through this description: O_APPEND (pwrite would append)
	// and O_DIRECT (unaligned writes) are set after.
	later := flags & (unix.O_APPEND | unix.O_DIRECT)
	if tfd, err = s.Openat(what+": O_TMPFILE in", dir, flags&^later); err != nil {
		return -1, 0, err
	}
	held, err = grabFD(s.Pid(), int(tfd))
	if err == nil {
		err = fillGhost(held, f.Ghost)
		if err == nil && later != 0 {
			var fl int
			if fl, err = unix.FcntlInt(uintptr(held), unix.F_GETFL, 0); err == nil {
				_, err = unix.FcntlInt(uintptr(held), unix.F_SETFL, fl|later)
			}
		}
		if err != nil {
			unix.Close(held)
		}
	}
	if err != nil {
		if _, cerr := s.Call(what+": close", unix.SYS_CLOSE, tfd); cerr != nil {
			err = errors.Join(err, cerr)
		}
		return -1, 0, fmt.Errorf("%s: O_TMPFILE file %s: %w", what, f.Path, err)
	}
	return held, tfd, nil
}

// openLinked opens the file --link-remap linked to g.Linked in the task of
// s, as CRIU does: linked to its old path again where that is free (so
// that /proc/PID/fd names it as dumped), opened there and unlinked. The
// link_remap name stays until the restore has succeeded
// (HoldLinkRemaps, LinkRemaps.Remove): a restore that fails later can be
// run again. It returns godwit's descriptor and the task's (O_RDWR), both
// for the caller to close.
func openLinked(s *inject.Session, what string, f *model.File) (held int, tfd uint64, err error) {
	g := f.Ghost
	link, err := s.PutString(0, g.Linked)
	if err != nil {
		return -1, 0, err
	}
	path, err := s.PutString(uint64(len(g.Linked)+8)&^7, f.Path)
	if err != nil {
		return -1, 0, err
	}
	open := g.Linked
	_, err = s.Call(what+": link "+g.Linked+" to "+f.Path, unix.SYS_LINKAT, atFdcwd, link, atFdcwd, path, 0)
	if err == nil {
		open = f.Path
	} else if en, ok := errnoOf(err); !ok || en != unix.EEXIST {
		return -1, 0, fmt.Errorf("%s: --link-remap file %s: %w", what, f.Path, err)
	}
	tfd, err = s.Openat(what+": open linked file", open, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_NOCTTY)
	opened := err == nil
	if err == nil {
		if held, err = grabFD(s.Pid(), int(tfd)); err == nil {
			var st unix.Stat_t
			if err = unix.Fstat(held, &st); err == nil && st.Mode&unix.S_IFMT != unix.S_IFREG {
				err = fmt.Errorf("%s is not a regular file", open)
			}
			if err != nil {
				unix.Close(held)
			}
		}
	}
	// The old name goes again in any case.
	var uerr error
	if open == f.Path {
		if path, uerr = s.PutString(0, f.Path); uerr == nil {
			_, uerr = s.Call(what+": unlink "+f.Path, unix.SYS_UNLINKAT, atFdcwd, path, 0)
		}
	}
	if err == nil && uerr != nil {
		unix.Close(held)
		err = uerr
	}
	if err != nil {
		if opened {
			if _, cerr := s.Call(what+": close", unix.SYS_CLOSE, tfd); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}
		return -1, 0, fmt.Errorf("%s: --link-remap file %s: %w", what, f.Path, errors.Join(err, uerr))
	}
	return held, tfd, nil
}

// atFdcwd is AT_FDCWD (-100) as a syscall argument.
const atFdcwd = ^uint64(99)

func errnoOf(err error) (unix.Errno, bool) {
	if err == nil {
		return 0, false
	}
	return inject.Errno(err)
}

// fillGhost writes the contents (chunks of data between holes: the
// file is sized first, and only the chunks are written) and sets the
// owner, mode and times. fd must not be O_APPEND.
func fillGhost(fd int, g *model.GhostState) error {
	chunks := g.Chunks
	if !g.Holes {
		chunks = []model.GhostChunk{{Off: 0, Len: g.Size}}
	}
	var total uint64
	for _, c := range chunks {
		if c.Off > g.Size || c.Len > g.Size-c.Off {
			return fmt.Errorf("chunk %d+%d past the size %d", c.Off, c.Len, g.Size)
		}
		total += c.Len
	}
	if uint64(len(g.Data)) != total {
		return fmt.Errorf("%d bytes saved of %d", len(g.Data), total)
	}
	if err := unix.Ftruncate(fd, int64(g.Size)); err != nil {
		return fmt.Errorf("size %d: %w", g.Size, err)
	}
	data := g.Data
	for _, c := range chunks {
		for off := uint64(0); off < c.Len; {
			n, err := unix.Pwrite(fd, data[off:c.Len], int64(c.Off+off))
			if err != nil {
				return fmt.Errorf("write contents at %d: %w", c.Off+off, err)
			}
			off += uint64(n)
		}
		data = data[c.Len:]
	}
	if err := unix.Fchown(fd, int(g.UID), int(g.GID)); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := unix.Fchmod(fd, g.Mode&0o7777); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	ts := []unix.Timespec{g.Atime, g.Mtime}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), ts, 0); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

// LinkRemaps are the link_remap names of the --link-remap files of a
// restored tree, held before its tasks run (HoldLinkRemaps) so that they
// can be removed once the restore has succeeded (Remove), whatever the
// tasks do meanwhile: each name's directory is open (O_PATH), looked up
// through the root of a task that holds the file, and the name is
// removed only while it is still the inode the restore opened.
type LinkRemaps struct {
	names []linkRemapName
}

type linkRemapName struct {
	dir      int
	path     string // as the task sees it, for errors
	base     string
	dev, ino uint64
}

// HoldLinkRemaps opens the directory of each link_remap name of t,
// through the root of the first task that holds the file (by an fd, or
// else a mapping; the tree's root task if none), and records the inode
// the name has now (the restored file's). A name already gone, or not a
// regular file, is skipped. The caller must Remove or Close the result.
func HoldLinkRemaps(t *model.Tree) (*LinkRemaps, error) {
	l := &LinkRemaps{}
	done := map[string]bool{}
	for _, id := range t.FileIDs() {
		g := t.Files[id].Ghost
		if g == nil || g.Linked == "" || done[g.Linked] {
			continue
		}
		done[g.Linked] = true
		i := strings.LastIndexByte(g.Linked, '/')
		if i < 0 {
			l.Close()
			return nil, fmt.Errorf("--link-remap name %q is not absolute", g.Linked)
		}
		pid := linkRemapHolder(t, id)
		if pid == 0 {
			continue
		}
		dir, err := openInRoot(pid, g.Linked[:i+1])
		if err != nil {
			l.Close()
			return nil, fmt.Errorf("--link-remap name %s (task %d): %w", g.Linked, pid, err)
		}
		base := g.Linked[i+1:]
		var st unix.Stat_t
		if err := unix.Fstatat(dir, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			unix.Close(dir)
			if err != nil && err != unix.ENOENT {
				l.Close()
				return nil, fmt.Errorf("--link-remap name %s (task %d): %w", g.Linked, pid, err)
			}
			continue // gone, or not the file (the images do not keep its inode)
		}
		l.names = append(l.names, linkRemapName{dir: dir, path: g.Linked, base: base, dev: st.Dev, ino: st.Ino})
	}
	return l, nil
}

// linkRemapHolder is the pid of a task of t that holds file id.
func linkRemapHolder(t *model.Tree, id model.ID) int {
	for _, k := range t.Tasks {
		for _, e := range k.FDs {
			if e.File == id {
				return k.Pid
			}
		}
	}
	for _, k := range t.Tasks {
		if k.MM == nil {
			continue
		}
		for i := range k.MM.VMAs {
			if v := &k.MM.VMAs[i]; v.FileBacked() && v.Shmid == uint64(id) {
				return k.Pid
			}
		}
	}
	if r := t.Root(); r != nil {
		return r.Pid
	}
	return 0
}

// openInRoot opens directory dir (absolute, a path of task pid's mount
// namespace, see nsRoot) O_PATH, resolved inside that namespace's root:
// an absolute symlink on the way stays in it.
func openInRoot(pid int, dir string) (int, error) {
	n, err := nsRootOf(pid)
	if err != nil {
		return -1, err
	}
	rel, ok := n.rel(dir)
	if !ok {
		return -1, fmt.Errorf("directory %s is outside the task's root", dir)
	}
	root, err := unix.Open(n.dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open its root: %w", err)
	}
	defer unix.Close(root)
	fd, err := unix.Openat2(root, rel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return -1, fmt.Errorf("open directory %s: %w", dir, err)
	}
	return fd, nil
}

// Remove removes each held name that is still the restored inode, and
// closes l. It returns the names it could not remove.
func (l *LinkRemaps) Remove() error {
	if l == nil {
		return nil
	}
	var errs []error
	for _, n := range l.names {
		var st unix.Stat_t
		if err := unix.Fstatat(n.dir, n.base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if err != unix.ENOENT {
				errs = append(errs, fmt.Errorf("--link-remap name %s: %w", n.path, err))
			}
			continue
		}
		if st.Dev != n.dev || st.Ino != n.ino {
			continue // replaced since: not godwit's to remove
		}
		if err := unix.Unlinkat(n.dir, n.base, 0); err != nil && err != unix.ENOENT {
			errs = append(errs, fmt.Errorf("remove --link-remap name %s: %w", n.path, err))
		}
	}
	l.Close()
	return errors.Join(errs...)
}

// Close lets the names go without removing them (a failed restore keeps
// them, so that it can be run again).
func (l *LinkRemaps) Close() {
	if l == nil {
		return
	}
	for _, n := range l.names {
		unix.Close(n.dir)
	}
	l.names = nil
}

// FIEMAP (linux/fiemap.h, linux/fs.h): struct fiemap, a header followed
// by struct fiemap_extent entries; x/sys/unix has neither.
const (
	fsIocFiemap       = 0xC020660B // _IOWR('f', 11, struct fiemap)
	fiemapExtentLast  = 0x1        // FIEMAP_EXTENT_LAST
	fiemapHeaderSize  = 32
	fiemapExtentSize  = 56
	fiemapExtentBatch = 128
)

// ghostChunks returns the ranges of the open file fd (size bytes) that
// hold data, in order: by FIEMAP where fiemap is set and the file system
// has it (tmpfs has not), else by lseek SEEK_DATA/SEEK_HOLE (a file
// system without them reports the whole file as data). As CRIU's
// --ghost-fiemap and --no-ghost-fiemap.
func ghostChunks(fd int, size uint64, fiemap bool) ([]model.GhostChunk, error) {
	if size == 0 {
		return nil, nil
	}
	if fiemap {
		cs, err := fiemapChunks(fd, size)
		if err == nil {
			return cs, nil
		}
		if err != unix.EOPNOTSUPP && err != unix.ENOTTY && err != unix.EINVAL {
			return nil, fmt.Errorf("FIEMAP: %w", err)
		}
	}
	var cs []model.GhostChunk
	for off := int64(0); uint64(off) < size; {
		d, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("SEEK_DATA at %d: %w", off, err)
		}
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("SEEK_HOLE at %d: %w", d, err)
		}
		if uint64(h) > size {
			h = int64(size)
		}
		if h > d {
			cs = append(cs, model.GhostChunk{Off: uint64(d), Len: uint64(h - d)})
		}
		off = h
	}
	return cs, nil
}

// fiemapChunks reads the extents of fd with FIEMAP (no sync: delayed
// allocations are reported as extents too), merged where they touch and
// cut at size.
func fiemapChunks(fd int, size uint64) ([]model.GhostChunk, error) {
	buf := make([]byte, fiemapHeaderSize+fiemapExtentBatch*fiemapExtentSize)
	var cs []model.GhostChunk
	for start := uint64(0); start < size; {
		clear(buf)
		le.PutUint64(buf[0:], start)
		le.PutUint64(buf[8:], size-start)
		le.PutUint32(buf[24:], fiemapExtentBatch)
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0]))); e != 0 {
			return nil, e
		}
		n := int(le.Uint32(buf[20:]))
		if n == 0 || n > fiemapExtentBatch {
			break
		}
		last := false
		for i := range n {
			e := buf[fiemapHeaderSize+i*fiemapExtentSize:]
			off, l, flags := le.Uint64(e[0:]), le.Uint64(e[16:]), le.Uint32(e[40:])
			last = last || flags&fiemapExtentLast != 0
			if off >= size {
				last = true
				break
			}
			l = min(l, size-off)
			if k := len(cs) - 1; k >= 0 && cs[k].Off+cs[k].Len >= off {
				cs[k].Len = max(cs[k].Off+cs[k].Len, off+l) - cs[k].Off
			} else {
				cs = append(cs, model.GhostChunk{Off: off, Len: l})
			}
			start = off + l
		}
		if last {
			break
		}
	}
	return cs, nil
}

// ghostXattrs refuses a deleted file with extended attributes: CRIU's
// ghost image has no field for them, so they would be lost.
func ghostXattrs(fd int) error {
	buf := make([]byte, 4096)
	n, err := unix.Flistxattr(fd, buf)
	if err == unix.ERANGE {
		return fmt.Errorf("it has extended attributes, which a deleted file's image cannot carry")
	}
	if err != nil {
		if err == unix.EOPNOTSUPP {
			return nil
		}
		return fmt.Errorf("list its extended attributes: %w", err)
	}
	if n > 0 {
		names := strings.Join(strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00"), ", ")
		return fmt.Errorf("it has extended attributes (%s), which a deleted file's image cannot carry", names)
	}
	return nil
}
