package kerndat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
	"godwit/internal/ptrace"
)

func nsIno(pid, name string) (uint64, error) {
	var st unix.Stat_t
	p := "/proc/" + pid + "/ns/" + name
	if err := unix.Stat(p, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", p, err)
	}
	return st.Ino, nil
}

// inNewNs starts a sleeper in new namespaces and runs check on its PID.
func inNewNs(cloneflags, unshareflags uintptr, check func(pid string) error) error {
	s, err := startSleeper(sleeperOpts{cloneflags: cloneflags, unshareflags: unshareflags})
	if err != nil {
		return err
	}
	defer s.kill()
	return check(strconv.Itoa(s.pid))
}

// differs checks that the sleeper's namespaces are not ours.
func differs(pid string, names ...string) error {
	for _, n := range names {
		mine, err := nsIno("self", n)
		if err != nil {
			return err
		}
		theirs, err := nsIno(pid, n)
		if err != nil {
			return err
		}
		if mine == theirs {
			return fmt.Errorf("child %s is still in our %s namespace", pid, n)
		}
	}
	return nil
}

var nsTypes = []struct {
	name string
	flag int
}{
	{"mnt", unix.CLONE_NEWNS}, {"uts", unix.CLONE_NEWUTS}, {"ipc", unix.CLONE_NEWIPC},
	{"net", unix.CLONE_NEWNET}, {"pid", unix.CLONE_NEWPID}, {"cgroup", unix.CLONE_NEWCGROUP},
	{"user", unix.CLONE_NEWUSER}, {"time", unix.CLONE_NEWTIME},
}

// probeNamespaces: a child made in new mount, UTS, IPC, net, PID, cgroup,
// user and time namespaces is in all of them, and the nsfs ioctls
// (NS_GET_NSTYPE, NS_GET_USERNS, NS_GET_PARENT) describe them.
func probeNamespaces() error {
	var clone uintptr
	for _, t := range nsTypes {
		if t.flag != unix.CLONE_NEWTIME {
			clone |= uintptr(t.flag)
		}
	}
	return inNewNs(clone, unix.CLONE_NEWTIME, func(pid string) error {
		for _, t := range nsTypes {
			if err := differs(pid, t.name); err != nil {
				return err
			}
			fd, err := unix.Open("/proc/"+pid+"/ns/"+t.name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			typ, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
			if err == nil && typ != t.flag {
				err = fmt.Errorf("is %#x, want %#x", typ, t.flag)
			}
			if err == nil && t.name == "net" {
				err = ownerIs(fd, pid)
			}
			unix.Close(fd)
			if err != nil {
				return fmt.Errorf("NS_GET_NSTYPE of %s ns: %w", t.name, err)
			}
		}
		// The child's PID namespace is a child of ours.
		fd, err := unix.Open("/proc/"+pid+"/ns/pid", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		parent, err := unix.IoctlRetInt(fd, unix.NS_GET_PARENT)
		if err != nil {
			return fmt.Errorf("NS_GET_PARENT: %w", err)
		}
		defer unix.Close(parent)
		return sameFile(parent, "/proc/self/ns/pid")
	})
}

// ownerIs checks with NS_GET_USERNS that nsfd is owned by pid's user ns.
func ownerIs(nsfd int, pid string) error {
	u, err := unix.IoctlRetInt(nsfd, unix.NS_GET_USERNS)
	if err != nil {
		return fmt.Errorf("NS_GET_USERNS: %w", err)
	}
	defer unix.Close(u)
	return sameFile(u, "/proc/"+pid+"/ns/user")
}

// probeUserns (CRIU's userns): a child in a new user namespace, and the
// PR_SET_MM_MAP interface that restoring in one needs.
func probeUserns() error {
	var size uint32
	if err := unix.Prctl(unix.PR_SET_MM, unix.PR_SET_MM_MAP_SIZE, uintptr(unsafe.Pointer(&size)), 0, 0); err != nil {
		return fmt.Errorf("PR_SET_MM_MAP_SIZE: %w", err)
	}
	return inNewNs(unix.CLONE_NEWUSER, 0, func(pid string) error { return differs(pid, "user") })
}

// probeCgroupns: a child in a new cgroup namespace.
func probeCgroupns() error {
	return inNewNs(unix.CLONE_NEWCGROUP, 0, func(pid string) error { return differs(pid, "cgroup") })
}

// probeTimens: a child that unshared a time namespace runs in it after exec.
func probeTimens() error {
	return inNewNs(0, unix.CLONE_NEWTIME, func(pid string) error { return differs(pid, "time") })
}

// probeNsPid: NSpid in /proc/PID/status lists a task's PID in every
// nested PID namespace.
func probeNsPid() error {
	return inNewNs(unix.CLONE_NEWPID, 0, func(pid string) error {
		n, err := strconv.Atoi(pid)
		if err != nil {
			return err
		}
		st, err := procfs.ReadStatus(n)
		if err != nil {
			return err
		}
		f := st.NSpid
		if len(f) == 0 {
			return errors.New("/proc/PID/status has no NSpid")
		}
		if len(f) < 2 || f[len(f)-2] != n || f[len(f)-1] != 1 {
			return fmt.Errorf("NSpid of %s in a new PID namespace is %v, want [... %s 1]", pid, f, pid)
		}
		return nil
	})
}

// probeMoveMountSetGroup: a puppet, in a private mount namespace that dies
// with it, copies a sharing group with MOVE_MOUNT_SET_GROUP.
func probeMoveMountSetGroup() error {
	return inPuppet(func(pid int, s *ptrace.Session, scratch uint64) error {
		a, err := scratchStrings(pid, scratch, 0, "/", "/tmp", "/tmp/a", "/tmp/b", "tmpfs")
		if err != nil {
			return err
		}
		root, tmp, da, db, tmpfs := a[0], a[1], a[2], a[3], a[4]
		cwd := int32(unix.AT_FDCWD)
		atCWD := uint64(uint32(cwd)) // the kernel reads dfd as an int
		return injectAll(s, []injected{
			{"unshare(CLONE_NEWNS)", unix.SYS_UNSHARE, []uint64{unix.CLONE_NEWNS}},
			{"make / private", unix.SYS_MOUNT, []uint64{0, root, 0, unix.MS_REC | unix.MS_PRIVATE, 0}},
			{"mount tmpfs on /tmp", unix.SYS_MOUNT, []uint64{tmpfs, tmp, tmpfs, 0, 0}},
			{"mkdir /tmp/a", unix.SYS_MKDIRAT, []uint64{atCWD, da, 0o700}},
			{"mkdir /tmp/b", unix.SYS_MKDIRAT, []uint64{atCWD, db, 0o700}},
			{"mount tmpfs on /tmp/a", unix.SYS_MOUNT, []uint64{tmpfs, da, tmpfs, 0, 0}},
			// The group can only be copied to a private mount of the
			// same superblock: b is a bind of a made before a is shared.
			{"bind /tmp/a on /tmp/b", unix.SYS_MOUNT, []uint64{da, db, 0, unix.MS_BIND, 0}},
			{"make /tmp/a shared", unix.SYS_MOUNT, []uint64{0, da, 0, unix.MS_SHARED, 0}},
			{"move_mount(MOVE_MOUNT_SET_GROUP)", unix.SYS_MOVE_MOUNT, []uint64{atCWD, da, atCWD, db, unix.MOVE_MOUNT_SET_GROUP}},
		})
	})
}

// probeAutofs: a puppet mounts autofs in its own private mount namespace
// (gone when it dies), with a pipe of its own as the daemon's; its
// mountinfo must carry pipe_ino.
func probeAutofs() error {
	return inPuppet(func(pid int, s *ptrace.Session, scratch uint64) error {
		if _, err := s.Syscall(unix.SYS_PIPE2, scratch, unix.O_CLOEXEC); err != nil {
			return fmt.Errorf("pipe2 in a puppet: %w", err)
		}
		var fds [8]byte
		if err := ptrace.ReadMem(pid, scratch, fds[:]); err != nil {
			return fmt.Errorf("puppet %d: %w", pid, err)
		}
		wfd := int32(binary.NativeEndian.Uint32(fds[4:]))
		pgrp, err := unix.Getpgid(pid)
		if err != nil {
			return err
		}
		opts := fmt.Sprintf("fd=%d,pgrp=%d,minproto=5,maxproto=5,direct", wfd, pgrp)
		a, err := scratchStrings(pid, scratch, 8, "/", "/tmp", "godwit", "autofs", opts)
		if err != nil {
			return err
		}
		if err := injectAll(s, []injected{
			{"unshare(CLONE_NEWNS)", unix.SYS_UNSHARE, []uint64{unix.CLONE_NEWNS}},
			{"make / private", unix.SYS_MOUNT, []uint64{0, a[0], 0, unix.MS_REC | unix.MS_PRIVATE, 0}},
			{"mount autofs on /tmp", unix.SYS_MOUNT, []uint64{a[2], a[1], a[3], 0, a[4]}},
		}); err != nil {
			return err
		}
		ms, err := procfs.ReadMountinfo(pid)
		if err != nil {
			return err
		}
		for _, m := range ms {
			if m.FSType == "autofs" {
				if strings.Contains(m.SuperOptions, "pipe_ino=") {
					return nil
				}
				return fmt.Errorf("autofs mountinfo lacks pipe_ino: %q", m.SuperOptions)
			}
		}
		return errors.New("the puppet's mountinfo shows no autofs mount")
	})
}
