package drivers

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/abi/linux"
	"godwit/internal/inject"
	"godwit/internal/model"
	"godwit/internal/procfs"
)

// CollectFDs reads every fd of pid. A kind godwit cannot dump yet fails
// with "fd N: KIND is not supported yet".
//
// Each fd is read on a copy of it in godwit (pidfd_getfd): statx (stat
// and mount id), F_GETFL, lseek (the offset of a file or directory) and
// the owner (F_GETOWN_EX, F_GETSIG) are plain syscalls on an open file,
// with no /proc lookup; readlinkat of /proc/PID/fd/N names the file (not
// needed for pipes and sockets). /proc/PID/fdinfo/N, an open, read and
// close, is read only where it tells more: the anon-inode kinds (their
// state is there), files with a lock (/proc/locks names their inodes)
// and the other file types; close-on-exec of the others is read in the
// task (CollectCloexec), in batches of injected F_GETFD. Two workers
// share the fds (the machine's cores; the reads are independent).
func CollectFDs(pid int) ([]FD, error) {
	fdDir, err := unix.Open(procfs.Path(pid, "fd"), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("procfs: list fds of %d: %w", pid, err)
	}
	defer unix.Close(fdDir)
	infoDir, err := unix.Open(procfs.Path(pid, "fdinfo"), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("procfs: fdinfo of %d: %w", pid, err)
	}
	defer unix.Close(infoDir)
	nums, err := readFDNums(fdDir)
	if err != nil {
		return nil, fmt.Errorf("procfs: list fds of %d: %w", pid, err)
	}
	slices.Sort(nums)
	c := &fdCollector{pid: pid, fdDir: fdDir, infoDir: infoDir, pidfd: -1}
	if c.locked, err = lockedInodes(); err != nil {
		return nil, err
	}
	// Without a pidfd (pidfd_getfd refused), every fd is read from /proc.
	if pfd, err := unix.PidfdOpen(pid, 0); err == nil {
		c.pidfd = pfd
		defer unix.Close(pfd)
	}
	out := make([]FD, len(nums))
	const workers = 2
	if len(nums) < 64 {
		return out, c.collectRange(nums, out)
	}
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		lo, hi := len(nums)*w/workers, len(nums)*(w+1)/workers
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[w] = c.collectRange(nums[lo:hi], out[lo:hi])
		}()
	}
	wg.Wait()
	// The lowest fd's error, as one worker alone would give.
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// fdCollector reads the fds of one task.
type fdCollector struct {
	pid, fdDir, infoDir int
	pidfd               int // -1: none
	// locked are the inodes with a lock or lease (nil: unknown, read
	// every fd's fdinfo).
	locked map[uint64]bool
}

// readFDNums lists the fd numbers of an open /proc/PID/fd.
func readFDNums(dir int) ([]int, error) {
	var nums []int
	buf := make([]byte, 32<<10)
	for {
		n, err := unix.Getdents(dir, buf)
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			return nums, nil
		}
		// linux_dirent64: d_ino u64, d_off s64, d_reclen u16, d_type u8, d_name.
		for b := buf[:n]; len(b) >= 19; {
			reclen := int(le.Uint16(b[16:]))
			if reclen < 19 || reclen > len(b) {
				return nil, fmt.Errorf("bad directory entry of %d bytes", reclen)
			}
			name := b[19:reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			if fd, ok := atoiBytes(name); ok {
				nums = append(nums, fd)
			}
			b = b[reclen:]
		}
	}
}

// atoiBytes parses a decimal fd number ("." and ".." are not).
func atoiBytes(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 10 {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

// collectRange reads the fds nums into out.
func (c *fdCollector) collectRange(nums []int, out []FD) error {
	link := make([]byte, unix.PathMax)
	info := make([]byte, 4096)
	var name []byte
	for i, n := range nums {
		name = strconv.AppendInt(name[:0], int64(n), 10)
		sname := string(name)
		fd := &out[i]
		fd.Num = n
		copied := c.pidfd >= 0 && c.fromCopy(fd)
		if !copied {
			if err := unix.Fstatat(c.fdDir, sname, &fd.Stat, 0); err != nil {
				return fmt.Errorf("fd %d: stat /proc/%d/fd/%d: %w", n, c.pid, n, err)
			}
		}
		// A pipe's and a socket's link is their inode on pipefs and
		// sockfs: no readlink needed.
		var target string
		switch pd := pseudoDevs(); {
		case fd.Stat.Mode&unix.S_IFMT == unix.S_IFIFO && pd.pipe != 0 && fd.Stat.Dev == pd.pipe:
			target = "pipe:[" + strconv.FormatUint(fd.Stat.Ino, 10) + "]"
		case fd.Stat.Mode&unix.S_IFMT == unix.S_IFSOCK && pd.sock != 0 && fd.Stat.Dev == pd.sock:
			target = "socket:[" + strconv.FormatUint(fd.Stat.Ino, 10) + "]"
		default:
			k, err := unix.Readlinkat(c.fdDir, sname, link)
			if err != nil {
				return fmt.Errorf("fd %d: readlink /proc/%d/fd/%d: %w", n, c.pid, n, err)
			}
			target = string(link[:k])
		}
		kind, unsupported := classify(target, &fd.Stat)
		if kind != nil && isMqueue(c.pid, n, target, &fd.Stat) {
			// Its link is "/name" on the mqueue mount: reopened as a path
			// it would fail, or open an unrelated file.
			kind, unsupported = nil, "POSIX message queue "+target+" (mq_open)"
		}
		if kind == nil {
			return fmt.Errorf("fd %d: %s is not supported yet", n, unsupported)
		}
		fd.Path, fd.kind = target, kind
		if !copied || c.needInfo(fd) {
			b, err := readFDInfo(c.infoDir, sname, &info)
			if err != nil {
				return fmt.Errorf("fd %d: fdinfo of %d: %w", n, c.pid, err)
			}
			fi, err := procfs.ParseFDInfo(b)
			if err != nil {
				return fmt.Errorf("fd %d: pid %d: %w", n, c.pid, err)
			}
			fd.Flags, fd.Cloexec = uint32(fi.Flags&^unix.O_CLOEXEC), fi.Flags&unix.O_CLOEXEC != 0
			fd.Pos, fd.MntID, fd.Info, fd.cloexecUnknown = uint64(fi.Pos), fi.MntID, fi, false
		}
		if !copied {
			// The owner and signal are read only on a copy (fdinfo
			// has neither). Any description may have them, O_ASYNC
			// or not (F_SETOWN alone directs SIGURG and lease breaks,
			// and an O_ASYNC set later signals that owner): a file
			// restored without them would be another's, so the fd is
			// refused.
			what := "its owner (F_SETOWN) and signal"
			if fd.Flags&unix.O_ASYNC != 0 {
				what = "O_ASYNC is set but " + what
			}
			return fmt.Errorf("fd %d: %s: %s cannot be read (the fd could not be read on a copy: pidfd_getfd)", n, target, what)
		}
		if err := kind.check(c.pid, n, uint64(fd.Flags)); err != nil {
			return fmt.Errorf("fd %d: %s %s: %w", n, kind.name(), target, err)
		}
	}
	return nil
}

// mqueueMagic is the mqueue filesystem's statfs f_type (MQUEUE_MAGIC,
// include/uapi/linux/magic.h; x/sys/unix lacks it).
const mqueueMagic = 0x19800202

// isMqueue reports whether fd of pid is a POSIX message queue: a regular
// file whose link is a name at the root of its mount, on mqueue (statfs
// only then: one syscall for the few fds that look like one).
func isMqueue(pid, fd int, target string, st *unix.Stat_t) bool {
	if st.Mode&unix.S_IFMT != unix.S_IFREG || strings.LastIndexByte(target, '/') != 0 {
		return false
	}
	var sfs unix.Statfs_t
	return unix.Statfs(procfs.Path(pid, "fd/"+strconv.Itoa(fd)), &sfs) == nil && sfs.Type == mqueueMagic
}

// fromCopy reads fd (its Num set) on a copy of it in godwit: stat,
// mount id, flags, the owner, the offset where lseek tells it and a
// pipe's size and queued bytes; false if the copy cannot be had (the
// fd is read from /proc then).
func (c *fdCollector) fromCopy(fd *FD) bool {
	cp, err := unix.PidfdGetfd(c.pidfd, fd.Num, 0)
	if err != nil {
		return false
	}
	defer unix.Close(cp)
	var stx unix.Statx_t
	// A NULL path with AT_EMPTY_PATH: the fd itself, no name lookup.
	if _, _, e := unix.Syscall6(unix.SYS_STATX, uintptr(cp), 0, unix.AT_EMPTY_PATH,
		unix.STATX_BASIC_STATS|unix.STATX_MNT_ID, uintptr(unsafe.Pointer(&stx)), 0); e != 0 ||
		stx.Mask&unix.STATX_MNT_ID == 0 {
		return false
	}
	statxToStat(&stx, &fd.Stat)
	fd.MntID = int(stx.Mnt_id)
	fl, err := unix.FcntlInt(uintptr(cp), unix.F_GETFL, 0)
	if err != nil {
		return false
	}
	fd.Flags, fd.cloexecUnknown = uint32(fl)&^unix.O_CLOEXEC, true
	// An O_PATH file has no owner (F_GETOWN_EX on it is EBADF, and
	// F_SETOWN too: nothing can be set to read).
	if fd.Flags&unix.O_PATH == 0 {
		if fd.owner, err = readOwner(cp); err != nil {
			return false
		}
	}
	switch fd.Stat.Mode & unix.S_IFMT {
	case unix.S_IFREG, unix.S_IFDIR:
		// SEEK_CUR 0 returns f_pos (the offset fdinfo shows) and moves
		// nothing; a file that cannot seek tells it in fdinfo.
		if fd.Flags&unix.O_PATH != 0 {
			fd.posKnown = true // never moves
		} else if pos, err := unix.Seek(cp, 0, unix.SEEK_CUR); err == nil {
			fd.Pos, fd.posKnown = uint64(pos), true
		}
	case unix.S_IFIFO:
		// Either end: FIONREAD and F_GETPIPE_SZ work on both.
		sz, err := unix.FcntlInt(uintptr(cp), unix.F_GETPIPE_SZ, 0)
		if err == nil {
			var q int
			if q, err = unix.IoctlGetInt(cp, unix.TIOCINQ); err == nil {
				fd.pipeKnown, fd.pipeSize, fd.pipeQueued = true, sz, q
			}
		}
	}
	return true
}

// needInfo reports whether fd, read on a copy, needs its fdinfo still:
// the anon-inode kinds keep their state there, a locked file its locks,
// and the offset of a file other than a file, directory, pipe or socket
// (where lseek may not tell it) is only there.
func (c *fdCollector) needInfo(fd *FD) bool {
	if strings.HasPrefix(fd.Path, "anon_inode:") || c.locked == nil || c.locked[fd.Stat.Ino] {
		return true
	}
	switch fd.Stat.Mode & unix.S_IFMT {
	case unix.S_IFIFO, unix.S_IFSOCK:
		return false
	case unix.S_IFREG, unix.S_IFDIR:
		return !fd.posKnown
	}
	return true
}

// readOwner reads the owner of the open file cp: pid (in godwit's pid
// namespace, where the tree's pids are), type, signal, and the uid and
// euid of who set it.
func readOwner(cp int) (o model.FileOwner, err error) {
	var ex linux.FOwnerEx
	if _, _, e := unix.Syscall(unix.SYS_FCNTL, uintptr(cp), unix.F_GETOWN_EX, uintptr(unsafe.Pointer(&ex))); e != 0 {
		return o, fmt.Errorf("F_GETOWN_EX: %w", e)
	}
	sig, err := unix.FcntlInt(uintptr(cp), unix.F_GETSIG, 0)
	if err != nil {
		return o, fmt.Errorf("F_GETSIG: %w", err)
	}
	o.Type, o.Pid, o.Signum = int(ex.Type), int(ex.Pid), sig
	if ex.Pid != 0 {
		var ids [2]uint32
		if _, _, e := unix.Syscall(unix.SYS_FCNTL, uintptr(cp), linux.FGetOwnerUIDs, uintptr(unsafe.Pointer(&ids[0]))); e != 0 {
			return o, fmt.Errorf("F_GETOWNER_UIDS: %w", e)
		}
		o.UID, o.EUID = ids[0], ids[1]
	}
	return o, nil
}

// statxToStat fills st from stx as fstat would.
func statxToStat(stx *unix.Statx_t, st *unix.Stat_t) {
	*st = unix.Stat_t{
		Dev:     unix.Mkdev(stx.Dev_major, stx.Dev_minor),
		Ino:     stx.Ino,
		Nlink:   uint64(stx.Nlink),
		Mode:    uint32(stx.Mode),
		Uid:     stx.Uid,
		Gid:     stx.Gid,
		Rdev:    unix.Mkdev(stx.Rdev_major, stx.Rdev_minor),
		Size:    int64(stx.Size),
		Blksize: int64(stx.Blksize),
		Blocks:  int64(stx.Blocks),
		Atim:    unix.Timespec{Sec: stx.Atime.Sec, Nsec: int64(stx.Atime.Nsec)},
		Mtim:    unix.Timespec{Sec: stx.Mtime.Sec, Nsec: int64(stx.Mtime.Nsec)},
		Ctim:    unix.Timespec{Sec: stx.Ctime.Sec, Nsec: int64(stx.Ctime.Nsec)},
	}
}

// lockedInodes reads the inode numbers /proc/locks lists: every lock and
// lease of the system, so an fd whose inode is not among them holds
// none and its fdinfo has no lock lines. nil (read every fdinfo) when
// /proc is not the initial pid namespace's: it hides the locks of
// processes it cannot see, which may be on a description the tree
// shares.
func lockedInodes() (map[uint64]bool, error) {
	if !procInitNS() {
		return nil, nil
	}
	f, err := os.Open("/proc/locks")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("procfs: %w", err)
	}
	defer f.Close()
	return parseLockedInodes(f)
}

// parseLockedInodes reads /proc/locks lines: "N: KIND … PID MAJ:MIN:INO
// START END" (waiters have "->" after N:).
func parseLockedInodes(r io.Reader) (map[uint64]bool, error) {
	out := map[uint64]bool{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		for _, f := range strings.Fields(sc.Text()) {
			if strings.Count(f, ":") != 2 {
				continue
			}
			ino, err := strconv.ParseUint(f[strings.LastIndexByte(f, ':')+1:], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("procfs: /proc/locks line %q: %w", sc.Text(), err)
			}
			out[ino] = true
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("procfs: /proc/locks: %w", err)
	}
	return out, nil
}

// procInitNS reports whether godwit's /proc belongs to the initial pid
// namespace: godwit is in that one, and its NSpid there has one level
// (the /proc mount's namespace is godwit's own).
var procInitNS = sync.OnceValue(func() bool {
	var st unix.Stat_t
	if unix.Stat("/proc/self/ns/pid", &st) != nil || st.Ino != linux.ProcPidInitIno {
		return false
	}
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for l := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(l, "NSpid:"); ok {
			return len(strings.Fields(v)) == 1
		}
	}
	return false
})

// pseudoDevs are the devices of pipefs and sockfs (0: unknown), learnt
// from a pipe and a socket of godwit's own.
var pseudoDevs = sync.OnceValue(func() (d struct{ pipe, sock uint64 }) {
	var st unix.Stat_t
	var p [2]int
	if unix.Pipe2(p[:], unix.O_CLOEXEC) == nil {
		if unix.Fstat(p[0], &st) == nil {
			d.pipe = st.Dev
		}
		unix.Close(p[0])
		unix.Close(p[1])
	}
	if s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err == nil {
		if unix.Fstat(s, &st) == nil {
			d.sock = st.Dev
		}
		unix.Close(s)
	}
	return d
})

// readFDInfo reads the fdinfo file name of the open /proc/PID/fdinfo dir
// into *buf, grown as needed. The file is one seq_file record, so a read
// that does not fill the buffer has it all.
func readFDInfo(dir int, name string, buf *[]byte) ([]byte, error) {
	f, err := unix.Openat(dir, name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(f)
	got := 0
	for {
		n, err := unix.Read(f, (*buf)[got:])
		if err != nil {
			return nil, err
		}
		got += n
		if n == 0 || got < len(*buf) {
			return (*buf)[:got], nil
		}
		*buf = append(*buf, make([]byte, len(*buf))...)
	}
}

// CollectInjected reads in the task the close-on-exec flag of the fds
// whose fdinfo was not read (only fdinfo and the task tell it): injected
// F_GETFD, in batches.
func (filesDriver) CollectInjected(d *Dump, s *inject.Session) error {
	d.Files.cloexecMu.Lock()
	idx := d.Files.cloexec[d.Pid]
	d.Files.cloexecMu.Unlock()
	if len(idx) == 0 {
		return nil
	}
	calls := make([]inject.Call, len(idx))
	for i, j := range idx {
		n := d.Task.FDs[j].Num
		calls[i] = inject.C("fd "+strconv.Itoa(n)+": F_GETFD", unix.SYS_FCNTL, uint64(n), unix.F_GETFD)
	}
	got, err := s.Batch(calls)
	for i, j := range idx {
		e := &d.Task.FDs[j]
		if err == nil {
			e.Cloexec = got[i]&unix.FD_CLOEXEC != 0
			continue
		}
		// The task refused: fdinfo tells it too, slower.
		fi, ierr := procfs.ReadFDInfo(d.Pid, e.Num)
		if ierr != nil {
			return fmt.Errorf("close-on-exec: %w (and %w)", err, ierr)
		}
		e.Cloexec = fi.Flags&unix.O_CLOEXEC != 0
	}
	d.Files.cloexecMu.Lock()
	delete(d.Files.cloexec, d.Pid)
	d.Files.cloexecMu.Unlock()
	return nil
}

// checkFDs refuses a tree whose fds were not read whole (a task whose
// close-on-exec flags were never read in it) or whose files have an
// owner (F_SETOWN) the restore cannot make again: a task, process or
// process group outside the tree.
func (fl *Files) checkFDs(t *model.Tree) error {
	for pid, idx := range fl.cloexec {
		if k := t.Task(pid); k != nil && len(idx) > 0 {
			return fmt.Errorf("task %d: close-on-exec of fd %d was not read", pid, k.FDs[idx[0]].Num)
		}
	}
	tids, pids, pgids := map[int]bool{}, map[int]bool{}, map[int]bool{}
	for _, k := range t.Tasks {
		pids[k.Pid], pgids[k.Pgid] = true, true
		for _, th := range k.Threads {
			tids[th.Tid] = true
		}
	}
	for _, k := range t.Tasks {
		for _, e := range k.FDs {
			o := t.Files[e.File].Owner
			if o.Pid == 0 {
				continue
			}
			var in bool
			var what string
			switch o.Type {
			case linux.FOwnerTID:
				in, what = tids[o.Pid], "thread"
			case linux.FOwnerPID:
				in, what = pids[o.Pid], "process"
			case linux.FOwnerPGRP:
				in, what = pgids[o.Pid], "process group"
			default:
				return fmt.Errorf("task %d: fd %d: owner of unknown type %d", k.Pid, e.Num, o.Type)
			}
			if !in {
				return fmt.Errorf("task %d: fd %d: its owner (F_SETOWN), %s %d, is not in the dumped tree", k.Pid, e.Num, what, o.Pid)
			}
		}
	}
	return nil
}

// PlanInjected reads the close-on-exec flags CollectInjected reads,
// F_GETFD each; a refusal makes CollectInjected read fdinfo instead.
func (filesDriver) PlanInjected(d *Dump, s *inject.Session) (Planned, bool) {
	d.Files.cloexecMu.Lock()
	idx := d.Files.cloexec[d.Pid]
	d.Files.cloexecMu.Unlock()
	calls := make([]inject.Call, len(idx))
	for i, j := range idx {
		n := d.Task.FDs[j].Num
		calls[i] = inject.C("fd "+strconv.Itoa(n)+": F_GETFD", unix.SYS_FCNTL, uint64(n), unix.F_GETFD)
	}
	return Planned{Calls: calls, Done: func(got []uint64, _ []byte) error {
		for i, j := range idx {
			d.Task.FDs[j].Cloexec = got[i]&unix.FD_CLOEXEC != 0
		}
		d.Files.cloexecMu.Lock()
		delete(d.Files.cloexec, d.Pid)
		d.Files.cloexecMu.Unlock()
		return nil
	}}, true
}
