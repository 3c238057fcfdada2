package dumper

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fown"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/regfile"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"godwit/internal/abi/linux"
	"godwit/internal/procfs"
)

// files allocates the ids of files.img: one REG entry per open file
// (fd), and one per distinct (path, flags) of the exe, cwd, root and
// file-backed mappings.
type files struct {
	entries []*fdinfo.FileEntry
	byKey   map[string]uint32
	next    uint32
}

func newFiles() *files { return &files{byKey: make(map[string]uint32), next: 1} }

// reg adds a REG entry and returns its id. st describes the file (from a
// stat of /proc/PID/… links, so that it is the task's file even if the
// path now names another).
func (f *files) reg(path string, flags uint32, pos uint64, st *unix.Stat_t, mntID int) uint32 {
	id := f.next
	f.next++
	r := &regfile.RegFileEntry{
		Id:    proto.Uint32(id),
		Flags: proto.Uint32(flags),
		Pos:   proto.Uint64(pos),
		Fown:  &fown.FownEntry{Uid: proto.Uint32(0), Euid: proto.Uint32(0), Signum: proto.Uint32(0), PidType: proto.Uint32(0), Pid: proto.Uint32(0)},
		Name:  proto.String(path),
	}
	if mntID >= 0 {
		r.MntId = proto.Int32(int32(mntID))
	}
	if st != nil {
		r.Mode = proto.Uint32(st.Mode)
		if st.Mode&unix.S_IFMT == unix.S_IFREG {
			recordIdentity(r, path, flags, st)
		}
	}
	f.entries = append(f.entries, &fdinfo.FileEntry{Type: fdinfo.FdTypes_REG.Enum(), Id: proto.Uint32(id), Reg: r})
	return id
}

// shared returns the id of a (path, flags) entry, adding it once.
func (f *files) shared(path string, flags uint32, st *unix.Stat_t, mntID int) uint32 {
	key := path + "\x00" + strconv.FormatUint(uint64(flags), 8)
	if id, ok := f.byKey[key]; ok {
		return id
	}
	id := f.reg(path, flags, 0, st, mntID)
	f.byKey[key] = id
	return id
}

// linkFile stats and names the target of a /proc/PID/… magic link.
func linkFile(pid int, name string) (string, *unix.Stat_t, error) {
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

// fdKind classifies an fd link target; "" for a path in the file system.
func fdKind(target string, st *unix.Stat_t) string {
	switch {
	case strings.HasPrefix(target, "pipe:"):
		return "pipe"
	case strings.HasPrefix(target, "socket:"):
		return "socket"
	case strings.HasPrefix(target, "anon_inode:"):
		k := strings.TrimPrefix(target, "anon_inode:")
		return strings.Trim(k, "[]")
	case strings.HasPrefix(target, "/memfd:"):
		return "memfd"
	case strings.HasSuffix(target, " (deleted)"):
		return "deleted file"
	case !strings.HasPrefix(target, "/"):
		return target
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG, unix.S_IFDIR:
		return ""
	case unix.S_IFCHR:
		// Reopening the path restores only devices without per-open
		// state; a tun, kvm, fuse or tty fd reopened would be another
		// object.
		if statelessDevices[target] {
			return ""
		}
		if strings.HasPrefix(target, "/dev/pts/") || target == "/dev/tty" || target == "/dev/ptmx" || strings.HasPrefix(target, "/dev/tty") {
			return "tty"
		}
		return "character device " + target
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFBLK:
		return "block device"
	case unix.S_IFSOCK:
		return "socket"
	}
	return "unknown file"
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
		target, st, err := linkFile(pid, "fd/"+strconv.Itoa(n))
		if err != nil {
			return nil, fmt.Errorf("fd %d: %w", n, err)
		}
		k := fdKind(target, st)
		if k != "" && k != "fifo" {
			return nil, fmt.Errorf("fd %d: %s is not supported yet", n, k)
		}
		fi, err := procfs.ReadFDInfo(pid, n)
		if err != nil {
			return nil, fmt.Errorf("fd %d: %w", n, err)
		}
		if k == "fifo" {
			if err := checkFIFO(pid, n, fi.Flags); err != nil {
				return nil, fmt.Errorf("fd %d: fifo %s: %w", n, target, err)
			}
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

// checkFIFO accepts the named FIFOs that reopening by path restores
// whole: opened read-write (so that the open does not wait for a peer)
// and with nothing in the pipe (its contents are not saved yet).
func checkFIFO(pid, n int, flags uint64) error {
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

// sameFile reports whether fds a and b of pid share one open file
// description (dup, fork): they must then share one file id, as in CRIU,
// so that the restored fds share offset and flags again.
func sameFile(pid, a, b int) bool {
	r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(pid), uintptr(pid), linux.KcmpFile, uintptr(a), uintptr(b), 0)
	return e == 0 && r == 0
}

// fdinfoEntries adds a REG entry per open file description and returns
// fdinfo-ID.img's entries.
func (f *files) fdinfoEntries(pid int, fds []FD) []*fdinfo.FdinfoEntry {
	var out []*fdinfo.FdinfoEntry
	ids := make([]uint32, len(fds))
	for i := range fds {
		fd := &fds[i]
		id := uint32(0)
		// Only fds on the same inode can share a description.
		for j := 0; j < i && id == 0; j++ {
			if fds[j].Stat.Dev == fd.Stat.Dev && fds[j].Stat.Ino == fd.Stat.Ino && sameFile(pid, fds[j].Num, fd.Num) {
				id = ids[j]
			}
		}
		if id == 0 {
			id = f.reg(fd.Path, fd.Flags, fd.Pos, &fd.Stat, fd.MntID)
		}
		ids[i] = id
		fl := uint32(0)
		if fd.Cloexec {
			fl = unix.FD_CLOEXEC
		}
		out = append(out, &fdinfo.FdinfoEntry{
			Id: proto.Uint32(id), Flags: proto.Uint32(fl), Type: fdinfo.FdTypes_REG.Enum(), Fd: proto.Uint32(uint32(fd.Num)),
		})
	}
	return out
}

// noMntID leaves mnt_id unset (the exe, cwd, root and mapped files have no
// fdinfo to read it from).
const noMntID = -1
