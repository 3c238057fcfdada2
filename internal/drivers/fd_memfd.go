package drivers

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"godwit/internal/inject"
	"godwit/internal/model"
	"godwit/internal/procfs"
)

// memfds: a memfd_create file is an unlinked shmem inode with a name,
// contents, a size, permission bits and seals. Every description and
// every mapping of one memfd in the tree is one MemfdState (by device and
// inode), so that the restore makes one inode again: the layout makes it
// for the first mapping (MakeMemfd), later mappings open that mapping's
// map_files link, and each fd is a new open of the inode taken from a
// mapping or another task's fd, or made here when nothing holds it.
// Seals go on when the inode is made, after its contents: a seal never
// refuses the restore's own writes, and a mapping the seals allow is
// made after them as the program made it.

func init() { registerFDKind(memfdKind{}) }

// memfdPrefix is how /proc shows a memfd's path ("memfd:" + the name,
// on the kernel's internal shmem mount).
const memfdPrefix = "/memfd:"

// memfdSealsAll are the seals godwit restores (F_SEAL_* of
// include/uapi/linux/fcntl.h, all there is on 6.18).
const memfdSealsAll = unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE |
	unix.F_SEAL_FUTURE_WRITE | unix.F_SEAL_EXEC

type memfdKind struct{}

func (memfdKind) name() string             { return "memfd" }
func (memfdKind) fileKind() model.FileKind { return model.Memfd }
func (memfdKind) match(target string, st *unix.Stat_t) bool {
	return strings.HasPrefix(target, memfdPrefix) && st.Mode&unix.S_IFMT == unix.S_IFREG
}

// check refuses a hugetlb memfd: its pages are huge pages of a pool the
// restore would have to reserve, which godwit does not do yet.
func (memfdKind) check(pid, fd int, _ uint64) error {
	var sfs unix.Statfs_t
	if err := unix.Statfs(procfs.Path(pid, "fd/"+strconv.Itoa(fd)), &sfs); err != nil {
		return fmt.Errorf("statfs: %w", err)
	}
	if sfs.Type == unix.HUGETLBFS_MAGIC {
		return errors.New("hugetlb memfd (MFD_HUGETLB) is not supported yet")
	}
	return nil
}

func (memfdKind) collect(fl *Files, pid int, fd *FD, f *model.File) error {
	st, err := fl.memfd(procfs.Path(pid, "fd/"+strconv.Itoa(fd.Num)), fd.Path, &fd.Stat)
	if err != nil {
		return err
	}
	f.Kind, f.Path, f.Size, f.BuildID, f.Memfd = model.Memfd, memfdPrefix+st.Name, nil, nil, st
	return nil
}

// SharedMemfd returns the id of a (memfd, flags) entry for a mapping of
// the memfd path (as /proc shows it), reading the memfd from src (the
// mapping's map_files link) once per inode.
func (fl *Files) SharedMemfd(src, path string, flags uint32, st *unix.Stat_t) (model.ID, error) {
	key := fileKey{st.Dev, st.Ino, flags}
	if id, ok := fl.byKey[key]; ok {
		return id, nil
	}
	// maps and smaps escape a '\n' of the name as "\012" (and nothing
	// else, so the escape cannot be undone there): the map_files link
	// gives the name as it is.
	raw, err := os.Readlink(src)
	if err != nil {
		return 0, fmt.Errorf("memfd %s: %w", path, err)
	}
	ms, err := fl.memfd(src, raw, st)
	if err != nil {
		return 0, fmt.Errorf("memfd %s: %w", path, err)
	}
	id := fl.Reg(memfdPrefix+ms.Name, flags, 0, st, NoMntID)
	f := fl.byID[id]
	f.Kind, f.Size, f.BuildID, f.Memfd = model.Memfd, nil, nil, ms
	fl.byKey[key] = id
	return id, nil
}

// memfd reads the memfd that src opens (path as /proc shows it, stat st),
// unless another description or mapping of the inode already did.
func (fl *Files) memfd(src, path string, st *unix.Stat_t) (*model.MemfdState, error) {
	key := [2]uint64{st.Dev, st.Ino}
	if ms := fl.memfds[key]; ms != nil {
		return ms, nil
	}
	name, ok := MemfdName(path)
	if !ok {
		return nil, fmt.Errorf("%q is not a memfd path", path)
	}
	fd, err := unix.Open(src, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("open to save its contents: %w", err)
	}
	defer unix.Close(fd)
	var now unix.Stat_t
	if err := unix.Fstat(fd, &now); err != nil {
		return nil, fmt.Errorf("stat: %w", err)
	}
	if now.Dev != st.Dev || now.Ino != st.Ino {
		return nil, fmt.Errorf("%s is another inode now", src)
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return nil, fmt.Errorf("F_GET_SEALS: %w", err)
	}
	if seals&^memfdSealsAll != 0 {
		return nil, fmt.Errorf("seals %#x unknown to godwit", seals)
	}
	ext, err := readExtents(fd, uint64(now.Size))
	if err != nil {
		return nil, err
	}
	ms := &model.MemfdState{
		Dev: st.Dev, Ino: st.Ino, Name: name, Size: uint64(now.Size), Seals: uint32(seals),
		Mode: now.Mode & 0o7777, UID: now.Uid, GID: now.Gid, Extents: ext,
	}
	if fl.memfds == nil {
		fl.memfds = map[[2]uint64]*model.MemfdState{}
	}
	fl.memfds[key] = ms
	return ms, nil
}

// MemfdName is the name a memfd was created with, from its /proc path
// ("/memfd:NAME (deleted)"); ok is false for any other path.
func MemfdName(path string) (string, bool) {
	if !strings.HasPrefix(path, memfdPrefix) {
		return "", false
	}
	// A memfd is always unlinked; the suffix is the kernel's, once.
	name := strings.TrimSuffix(strings.TrimPrefix(path, memfdPrefix), " (deleted)")
	// memfd_create takes at most 249 bytes (NAME_MAX - "memfd:").
	if len(name) > 249 || strings.IndexByte(name, 0) >= 0 {
		return "", false
	}
	return name, true
}

// readExtents reads the data of the first size bytes of fd, skipping
// holes (SEEK_DATA/SEEK_HOLE, page granular on shmem).
func readExtents(fd int, size uint64) ([]model.MemfdExtent, error) {
	var out []model.MemfdExtent
	for off := uint64(0); off < size; {
		data, err := unix.Seek(fd, int64(off), unix.SEEK_DATA)
		if err == unix.ENXIO {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("SEEK_DATA at %d: %w", off, err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("SEEK_HOLE at %d: %w", data, err)
		}
		from, to := uint64(data), min(uint64(hole), size)
		if from >= to {
			break
		}
		b := make([]byte, to-from)
		for got := 0; got < len(b); {
			n, err := unix.Pread(fd, b[got:], int64(from)+int64(got))
			if err != nil || n == 0 {
				return nil, fmt.Errorf("read contents at %d: %v", from+uint64(got), err)
			}
			got += n
		}
		out = append(out, model.MemfdExtent{Off: from, Data: b})
		off = to
	}
	return out, nil
}

func (memfdKind) open(rs *restoreFDs, what string, f *model.File) (uint64, error) {
	ms := f.Memfd
	if ms == nil {
		return 0, fmt.Errorf("%s: memfd without its state", what)
	}
	key := [2]uint64{ms.Dev, ms.Ino}
	// rs.ghosts holds godwit's copies of unlinked inodes by device and
	// inode; a memfd is one (on the shmem mount, never a ghost's key).
	held, ok := rs.ghosts[key]
	if !ok {
		var err error
		if held, err = memfdHeld(rs, ms); err != nil {
			return 0, fmt.Errorf("%s: %w", what, err)
		}
		if held < 0 {
			var tfd uint64
			if held, tfd, err = MakeMemfd(rs.s, what, f); err != nil {
				return 0, err
			}
			if _, err := rs.s.Call(what+": close", unix.SYS_CLOSE, tfd); err != nil {
				unix.Close(held)
				return 0, err
			}
		}
		rs.ghosts[key] = held
	}
	return reopenHeld(rs, what, "memfd "+ms.Name, held, f)
}

// reopenHeld gives the task a new description of the unlinked inode
// godwit holds as held (a memfd or a deleted file), with f's flags and
// offset: each description of such an inode is its own open.
func reopenHeld(rs *restoreFDs, what, desc string, held int, f *model.File) (uint64, error) {
	flags := int(f.Flags) &^ (unix.O_CREAT | unix.O_TRUNC | unix.O_EXCL | unix.O_CLOEXEC)
	fd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(held), flags|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return 0, fmt.Errorf("%s: reopen %s: %w", what, desc, err)
	}
	defer unix.Close(fd)
	if f.Pos != 0 {
		if _, err := unix.Seek(fd, int64(f.Pos), unix.SEEK_SET); err != nil {
			return 0, fmt.Errorf("%s: seek to %d: %w", what, f.Pos, err)
		}
	}
	return rs.install(what, fd)
}

// memfdHeld opens the memfd ms where the tree already has it: an fd of a
// task restored before, or a mapping (the layout of every task comes
// before any fd); -1 when nothing holds it yet.
func memfdHeld(rs *restoreFDs, ms *model.MemfdState) (int, error) {
	for id, at := range rs.r.Opened {
		if at.Pid == rs.r.Task.Pid {
			continue
		}
		if of := rs.r.Tree.Files[id]; of != nil && of.Kind == model.Memfd && of.Memfd != nil && of.Memfd.Dev == ms.Dev && of.Memfd.Ino == ms.Ino {
			fd, err := grabFD(at.Pid, at.FD)
			if err != nil {
				return -1, fmt.Errorf("memfd held by %d fd %d: %w", at.Pid, at.FD, err)
			}
			return fd, nil
		}
	}
	return openMapped(rs, "memfd", func(f *model.File) bool {
		return f.Kind == model.Memfd && f.Memfd != nil && f.Memfd.Dev == ms.Dev && f.Memfd.Ino == ms.Ino
	})
}

// MakeMemfd creates the memfd f again in the task of s (memfd_create
// injected: the inode is charged to the task, as the program's was),
// fills it, sets its size, owner and mode, then its seals. It returns
// godwit's descriptor of it and the task's (O_RDWR), both for the caller
// to close.
func MakeMemfd(s *inject.Session, what string, f *model.File) (held int, tfd uint64, err error) {
	ms := f.Memfd
	if ms == nil {
		return -1, 0, fmt.Errorf("%s: memfd without its state", what)
	}
	a, err := s.PutString(0, ms.Name)
	if err != nil {
		return -1, 0, err
	}
	tfd, err = s.Call(fmt.Sprintf("%s: memfd_create(%q)", what, ms.Name), unix.SYS_MEMFD_CREATE, a, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return -1, 0, err
	}
	held, err = grabFD(s.Pid(), int(tfd))
	if err == nil {
		if err = fillMemfd(held, ms); err != nil {
			unix.Close(held)
		}
	}
	if err != nil {
		if _, cerr := s.Call(what+": close", unix.SYS_CLOSE, tfd); cerr != nil {
			err = errors.Join(err, cerr)
		}
		return -1, 0, fmt.Errorf("%s: memfd %s: %w", what, ms.Name, err)
	}
	return held, tfd, nil
}

// fillMemfd gives a new memfd the size, contents, owner, mode and seals
// of ms.
func fillMemfd(fd int, ms *model.MemfdState) error {
	if ms.Seals&^memfdSealsAll != 0 {
		return fmt.Errorf("seals %#x unknown to godwit", ms.Seals)
	}
	if err := unix.Ftruncate(fd, int64(ms.Size)); err != nil {
		return fmt.Errorf("set size %d: %w", ms.Size, err)
	}
	for _, e := range ms.Extents {
		if e.Off > ms.Size || uint64(len(e.Data)) > ms.Size-e.Off {
			return fmt.Errorf("data at %d+%d past the size %d", e.Off, len(e.Data), ms.Size)
		}
		for off := 0; off < len(e.Data); {
			n, err := unix.Pwrite(fd, e.Data[off:], int64(e.Off)+int64(off))
			if err != nil {
				return fmt.Errorf("write contents at %d: %w", e.Off+uint64(off), err)
			}
			off += n
		}
	}
	if err := unix.Fchown(fd, int(ms.UID), int(ms.GID)); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := unix.Fchmod(fd, ms.Mode&0o7777); err != nil {
		return fmt.Errorf("chmod %#o: %w", ms.Mode&0o7777, err)
	}
	if ms.Seals != 0 {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, int(ms.Seals)); err != nil {
			return fmt.Errorf("F_ADD_SEALS %#x: %w", ms.Seals, err)
		}
	}
	return nil
}

// memfdMapCheck refuses a mapping of a memfd that its seals would refuse
// to remake: a shared one that may write (VM_MAYWRITE: fdflags O_RDWR,
// which only shared mappings get) while a write seal is on (the program
// mapped it before sealing with F_SEAL_FUTURE_WRITE).
func memfdMapCheck(ms *model.MemfdState, fdflags uint32) error {
	if fdflags&unix.O_ACCMODE == unix.O_RDWR && ms.Seals&(unix.F_SEAL_WRITE|unix.F_SEAL_FUTURE_WRITE) != 0 {
		return fmt.Errorf("writable shared mapping of memfd %s made before its write seal (%#x): the restore cannot map it writable again", ms.Name, ms.Seals)
	}
	return nil
}
