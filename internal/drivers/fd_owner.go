package drivers

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/abi/linux"
	"godwit/internal/inject"
	"godwit/internal/model"
)

// File owners: O_ASYNC, F_SETSIG and F_SETOWN_EX of a description,
// dumped on godwit's copy of each fd (fromCopy) and restored once the
// fd is in place. The kernel keeps three things apart: the fasync entry
// O_ASYNC makes records the fd number that set it (the SIGIO's si_fd),
// so O_ASYNC is set in the task, at the fd's number; the signal is the
// file's; the owner records the uid and euid of whoever sets it (they
// decide later whether the signal may be sent), so godwit sets it on a
// copy of the fd from a thread of its own that has those ids.

// hasOwnerState reports whether f has anything restoreOwner sets.
func hasOwnerState(f *model.File) bool {
	return f.Owner != (model.FileOwner{}) || f.Flags&unix.O_ASYNC != 0
}

// restoreOwner gives the description at fd of the task of s its
// O_ASYNC, signal and owner.
func restoreOwner(r *Restore, s *inject.Session, what string, fd uint64, f *model.File) error {
	if f.Flags&unix.O_ASYNC != 0 {
		// Cleared then set: F_SETFL registers the fasync entry (with
		// this fd number) only when O_ASYNC changes, and a file
		// opened with O_ASYNC has the flag but no entry.
		fl, err := s.Call(what+": F_GETFL", unix.SYS_FCNTL, fd, unix.F_GETFL)
		if err != nil {
			return err
		}
		if _, err := s.Call(what+": F_SETFL", unix.SYS_FCNTL, fd, unix.F_SETFL, fl&^unix.O_ASYNC); err != nil {
			return err
		}
		if _, err := s.Call(what+": F_SETFL O_ASYNC", unix.SYS_FCNTL, fd, unix.F_SETFL, fl|unix.O_ASYNC); err != nil {
			return err
		}
	}
	o := f.Owner
	if o.Signum != 0 {
		if _, err := s.Call(what+": F_SETSIG", unix.SYS_FCNTL, fd, unix.F_SETSIG, uint64(o.Signum)); err != nil {
			return err
		}
	}
	if o.Pid == 0 {
		return nil
	}
	if err := ownerInTree(r.Tree, o); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	o = restoredOwner(r, o)
	pfd, err := unix.PidfdOpen(s.Pid(), 0)
	if err != nil {
		return fmt.Errorf("%s: owner: pidfd_open: %w", what, err)
	}
	defer unix.Close(pfd)
	cp, err := unix.PidfdGetfd(pfd, int(fd), 0)
	if err != nil {
		return fmt.Errorf("%s: owner: pidfd_getfd: %w", what, err)
	}
	defer unix.Close(cp)
	if err := setOwnerAs(cp, o); err != nil {
		return fmt.Errorf("%s: F_SETOWN_EX %s %d as uid %d euid %d: %w", what, ownerTypeName(o.Type), o.Pid, o.UID, o.EUID, err)
	}
	return nil
}

// restoredOwner maps a dumped owner onto the restored tree. PIDs and
// TIDs are restored as they were; a group is too, except that with
// --shell-job the root's group becomes godwit's (the restorer's
// setGroups), so an owner that was the root's group (a job's terminal
// with O_ASYNC: tty_fasync makes the foreground group its owner) must
// follow it, or SIGIO would go to whatever group now has the old number.
func restoredOwner(r *Restore, o model.FileOwner) model.FileOwner {
	if r.ShellJob && o.Type == linux.FOwnerPGRP && o.Pid == r.Tree.Root().Pgid {
		o.Pid = unix.Getpgrp()
	}
	return o
}

// ownerInTree refuses an owner that the restored tree does not hold.
func ownerInTree(t *model.Tree, o model.FileOwner) error {
	for _, k := range t.Tasks {
		switch o.Type {
		case linux.FOwnerPID:
			if k.Pid == o.Pid {
				return nil
			}
		case linux.FOwnerPGRP:
			if k.Pgid == o.Pid {
				return nil
			}
		case linux.FOwnerTID:
			if k.Pid == o.Pid {
				return nil
			}
			for _, th := range k.Threads {
				if th.Tid == o.Pid {
					return nil
				}
			}
		default:
			return fmt.Errorf("owner of unknown type %d", o.Type)
		}
	}
	return fmt.Errorf("its owner (F_SETOWN), %s %d, is not in the restored tree", ownerTypeName(o.Type), o.Pid)
}

func ownerTypeName(t int) string {
	switch t {
	case linux.FOwnerTID:
		return "thread"
	case linux.FOwnerPID:
		return "process"
	case linux.FOwnerPGRP:
		return "process group"
	}
	return fmt.Sprintf("type %d", t)
}

// setOwnerAs sets the owner of godwit's open file cp, the call made with
// real uid o.UID and effective uid o.EUID, which the kernel records.
// The ids are changed in one locked thread only (raw setresuid, not Go's
// process-wide one) and put back; a thread whose ids could not be put
// back is not unlocked, so it ends with its goroutine.
func setOwnerAs(cp int, o model.FileOwner) error {
	ex := linux.FOwnerEx{Type: int32(o.Type), Pid: int32(o.Pid)}
	setown := func() error {
		if _, _, e := unix.RawSyscall(unix.SYS_FCNTL, uintptr(cp), unix.F_SETOWN_EX, uintptr(unsafe.Pointer(&ex))); e != 0 {
			return e
		}
		return nil
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		var r, e, sv uint32
		if _, _, errno := unix.RawSyscall(unix.SYS_GETRESUID, uintptr(unsafe.Pointer(&r)), uintptr(unsafe.Pointer(&e)), uintptr(unsafe.Pointer(&sv))); errno != 0 {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("getresuid: %w", errno)
			return
		}
		if r == o.UID && e == o.EUID {
			err := setown()
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		// The saved uid (root's) is kept: it lets the thread go back.
		keep := ^uintptr(0) // -1: unchanged
		if _, _, errno := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(o.UID), uintptr(o.EUID), keep); errno != 0 {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setresuid: %w", errno)
			return
		}
		err := setown()
		if _, _, errno := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(r), uintptr(e), uintptr(sv)); errno != 0 {
			errc <- fmt.Errorf("put back uids: %w", errno) // thread left locked: it exits
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}
