package drivers

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"godwit/internal/inject"
	"godwit/internal/model"
	"godwit/internal/procfs"
)

// File locks (-l, --file-locks): flock and OFD locks belong to an open
// file description, POSIX locks to the task. fdinfo lists the locks of
// each fd's file that the fd's description or the task owns. Restore
// takes flock and OFD locks on godwit's copy of the description, and
// POSIX locks by an injected fcntl(F_SETLK) in the task, once the fd is
// in place. A lock another process took meanwhile fails the restore.
// A lease (F_SETLEASE) belongs to the description too, and is taken
// again by the task (leaseDescription); one being broken, and
// delegations, are refused.

// fdLocks parses the "lock:" lines of fd's fdinfo: the POSIX locks of the
// task and the flock/OFD locks of its description. Waiters ("->", the
// task blocked in a lock call, which restarts) are skipped.
func fdLocks(fi *procfs.FDInfo) (posix, desc []model.FileLock, err error) {
	for _, kv := range fi.Extra {
		if kv.Key != "lock" {
			continue
		}
		l, ok, err := parseLock(kv.Value)
		if err != nil {
			return nil, nil, err
		}
		if !ok {
			continue
		}
		if l.Kind == model.LockPOSIX {
			posix = append(posix, l)
		} else {
			desc = append(desc, l)
		}
	}
	return posix, desc, nil
}

// parseLock parses "N: KIND ADVISORY MODE PID MAJ:MIN:INO START END".
func parseLock(v string) (model.FileLock, bool, error) {
	var l model.FileLock
	fs := strings.Fields(v)
	bad := func(why string) (model.FileLock, bool, error) {
		return l, false, fmt.Errorf("fdinfo lock %q: %s", v, why)
	}
	if len(fs) > 1 && fs[1] == "->" {
		return l, false, nil
	}
	if len(fs) != 8 {
		return bad("want 8 fields")
	}
	switch fs[1] {
	case "POSIX":
		l.Kind = model.LockPOSIX
	case "FLOCK":
		l.Kind = model.LockFlock
	case "OFDLCK":
		l.Kind = model.LockOFD
	case "LEASE":
		l.Kind = model.LockLease
	default:
		return l, false, fmt.Errorf("a %s lock is held: not supported yet", strings.ToLower(fs[1]))
	}
	switch {
	case l.Kind != model.LockLease && fs[2] != "ADVISORY":
		return bad("not advisory")
	case l.Kind == model.LockLease && fs[2] == "BREAKING":
		// Another process's open waits for the holder to give it up:
		// the restore could not make that wait again.
		return l, false, fmt.Errorf("a lease is being broken (lease break pending): not supported")
	case l.Kind == model.LockLease && fs[2] != "ACTIVE":
		return bad("lease state " + fs[2])
	}
	switch fs[3] {
	case "READ":
	case "WRITE":
		l.Write = true
	default:
		return bad("mode " + fs[3])
	}
	start, err := strconv.ParseInt(fs[6], 10, 64)
	if err != nil || start < 0 {
		return bad("start")
	}
	l.Start = start
	if fs[7] != "EOF" {
		end, err := strconv.ParseInt(fs[7], 10, 64)
		if err != nil || end < start {
			return bad("end")
		}
		l.Len = end - start + 1
	}
	return l, true, nil
}

// lockDescription takes the flock and OFD locks of f on the description
// behind fd of the restored task (through godwit's copy of it).
func lockDescription(pid int, fd uint64, f *model.File) error {
	if len(f.Locks) == 0 {
		return nil
	}
	c, err := grabFD(pid, int(fd))
	if err != nil {
		return err
	}
	defer unix.Close(c)
	for _, l := range f.Locks {
		switch l.Kind {
		case model.LockLease:
			// Taken by the task itself (leaseDescription).
		case model.LockFlock:
			how := unix.LOCK_SH
			if l.Write {
				how = unix.LOCK_EX
			}
			if err := unix.Flock(c, how|unix.LOCK_NB); err != nil {
				return fmt.Errorf("flock: %w (another process holds the file locked)", err)
			}
		case model.LockOFD:
			fl := flockOf(l)
			if err := unix.FcntlFlock(uintptr(c), unix.F_OFD_SETLK, &fl); err != nil {
				return fmt.Errorf("OFD lock %d+%d: %w (another process holds the range locked)", l.Start, l.Len, err)
			}
		default:
			return fmt.Errorf("lock of kind %d on a description", l.Kind)
		}
	}
	return nil
}

func flockOf(l model.FileLock) unix.Flock_t {
	fl := unix.Flock_t{Type: unix.F_RDLCK, Whence: unix.SEEK_SET, Start: l.Start, Len: l.Len}
	if l.Write {
		fl.Type = unix.F_WRLCK
	}
	return fl
}

// leaseDescription takes the lease of f, if it had one, on fd of the
// restored task, by an injected fcntl(F_SETLEASE): the kernel makes the
// caller the file's owner (F_SETOWN, to be set again after if it was
// another) and records fd for the lease-break signal, so it is taken by
// the task on the fd it keeps, not by godwit on a copy. An open of the
// file for writing by another process (or, for a write lease, any open)
// fails it with EAGAIN.
func leaseDescription(s *inject.Session, what string, fd uint64, f *model.File) error {
	for _, l := range f.Locks {
		if l.Kind != model.LockLease {
			continue
		}
		typ, name := uint64(unix.F_RDLCK), "read"
		if l.Write {
			typ, name = unix.F_WRLCK, "write"
		}
		if _, err := s.Call(fmt.Sprintf("%s: F_SETLEASE %s", what, name), unix.SYS_FCNTL, fd, unix.F_SETLEASE, typ); err != nil {
			return fmt.Errorf("%w (the file is open elsewhere in a way the lease excludes)", err)
		}
	}
	return nil
}

// scratchFlock is where the restore side puts a struct flock.
const scratchFlock = scratchPassEnd + 64

// lockPOSIX takes the task's POSIX locks on the file behind fd, by
// injected fcntl(F_SETLK): the task is their owner.
func lockPOSIX(s *inject.Session, what string, fd uint64, locks []model.FileLock) error {
	for _, l := range locks {
		if l.Kind != model.LockPOSIX {
			return fmt.Errorf("%s: lock of kind %d owned by the task", what, l.Kind)
		}
		fl := flockOf(l)
		// struct flock: type, whence (shorts), pad, start, len, pid, pad.
		b := le.AppendUint16(nil, uint16(fl.Type))
		b = le.AppendUint16(b, uint16(fl.Whence))
		b = le.AppendUint32(b, 0)
		b = le.AppendUint64(b, uint64(fl.Start))
		b = le.AppendUint64(b, uint64(fl.Len))
		b = le.AppendUint64(b, 0)
		a, err := s.Put(scratchFlock, b)
		if err != nil {
			return err
		}
		if _, err := s.Call(fmt.Sprintf("%s: POSIX lock %d+%d", what, l.Start, l.Len), unix.SYS_FCNTL, fd, unix.F_SETLK, a); err != nil {
			return fmt.Errorf("%w (another process holds the range locked)", err)
		}
	}
	return nil
}
