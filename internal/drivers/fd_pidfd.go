package drivers

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
	pidfdinfo "godwit/internal/pidfd"
)

// pidfds: the process (or thread, PIDFD_THREAD) a pidfd refers to, from
// fdinfo's Pid line (in godwit's pid namespace, which is the tree's), -1
// once the process is gone. A pidfd of a task of the tree is opened again
// on the restored task (pidfd_open); one of a process outside the tree is
// refused by name (CheckFiles: it would be another process); one of a
// reaped process is a pidfd of a stand-in that godwit starts and reaps:
// it reports the exit, refuses signals, and the descriptions of one gone
// process in a task share one inode again, as dumped.

func init() { registerFDKind(pidfdKind{}) }

// pidfdThread is PIDFD_THREAD (include/uapi/linux/pidfd.h: O_EXCL), the
// pidfd_open flag and description flag of a thread's pidfd.
const pidfdThread = unix.O_EXCL

// pidfdKeyGone keys, in a restore's table of godwit's copies of objects
// (restoreFDs.ghosts), the stand-in pidfds made for a description, by
// file id.
const pidfdKeyGone = ^uint64(0) - 3

type pidfdKind struct{}

func (pidfdKind) name() string                             { return "pidfd" }
func (pidfdKind) fileKind() model.FileKind                 { return model.Pidfd }
func (pidfdKind) match(target string, _ *unix.Stat_t) bool { return target == "anon_inode:[pidfd]" }
func (pidfdKind) check(int, int, uint64) error             { return nil }

func (pidfdKind) collect(_ *Files, pid int, fd *FD, f *model.File) error {
	v, ok := fd.Info.Get("Pid")
	if !ok {
		return fmt.Errorf("fdinfo has no Pid")
	}
	target, err := strconv.Atoi(v)
	if err != nil || target < -1 {
		return fmt.Errorf("fdinfo Pid %q", v)
	}
	if target == 0 {
		return fmt.Errorf("its process is in a pid namespace godwit cannot see: not supported")
	}
	if target == -1 {
		if err := checkGoneExit(pid, fd.Num); err != nil {
			return err
		}
	}
	f.Kind, f.Path = model.Pidfd, ""
	f.Pidfd = &model.PidfdState{Pid: target, Ino: fd.Stat.Ino}
	return nil
}

// checkGoneExit refuses a pidfd of a reaped process that did not exit 0:
// the kernel still reports its wait status (PIDFD_GET_INFO), and the
// stand-in the restore makes exits 0, so any other status would come
// back wrong. CRIU's pidfd image has no field for it either.
func checkGoneExit(pid, num int) error {
	pfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return fmt.Errorf("pidfd_open(%d): %w", pid, err)
	}
	defer unix.Close(pfd)
	fd, err := unix.PidfdGetfd(pfd, num, 0)
	if err != nil {
		return fmt.Errorf("pidfd_getfd: %w", err)
	}
	defer unix.Close(fd)
	status, ok, err := pidfdinfo.ExitStatus(fd)
	if err != nil {
		return err
	}
	if ok && status != 0 {
		return fmt.Errorf("pidfd of a reaped process with wait status %#x: only a process that exited 0 can be restored (not supported yet)", status)
	}
	return nil
}

// checkPidfds refuses a pidfd of a live process or thread outside the
// tree, and (checkProcFiles) a /proc file of one.
func checkPidfds(t *model.Tree) error {
	ids := map[int]bool{}
	for _, k := range t.Tasks {
		ids[k.Pid] = true
		for _, th := range k.Threads {
			ids[th.Tid] = true
		}
	}
	if err := checkProcFiles(t, ids); err != nil {
		return err
	}
	for _, k := range t.Tasks {
		for _, e := range k.FDs {
			f := t.Files[e.File]
			if f == nil || f.Kind != model.Pidfd || f.Pidfd == nil || f.Pidfd.Pid == -1 || ids[f.Pidfd.Pid] {
				continue
			}
			return fmt.Errorf("task %d fd %d: pidfd of process %d, which is outside the tree: not supported", k.Pid, e.Num, f.Pidfd.Pid)
		}
	}
	return nil
}

// checkProcFiles refuses an open /proc/PID/… file (reopened by its path
// at restore) of a process outside the tree: the path would then name
// whatever process has that pid, or none.
func checkProcFiles(t *model.Tree, ids map[int]bool) error {
	var proc unix.Stat_t
	if err := unix.Stat("/proc", &proc); err != nil {
		return fmt.Errorf("stat /proc: %w", err)
	}
	for _, k := range t.Tasks {
		for _, e := range k.FDs {
			f := t.Files[e.File]
			if f == nil || f.Kind != model.Path || f.Dev != proc.Dev {
				continue
			}
			rest, ok := strings.CutPrefix(f.Path, "/proc/")
			if !ok {
				continue
			}
			first, _, _ := strings.Cut(rest, "/")
			if pid, err := strconv.Atoi(first); err == nil && !ids[pid] {
				return fmt.Errorf("task %d fd %d: %s: a /proc file of process %d, which is outside the tree: not supported", k.Pid, e.Num, f.Path, pid)
			}
		}
	}
	return nil
}

func (pidfdKind) open(rs *restoreFDs, what string, f *model.File) (uint64, error) {
	st := f.Pidfd
	if st == nil {
		return 0, fmt.Errorf("%s: pidfd without its state", what)
	}
	flags := int(f.Flags) & (unix.O_NONBLOCK | pidfdThread)
	if st.Pid != -1 {
		fd, err := unix.PidfdOpen(st.Pid, flags)
		if err != nil {
			return 0, fmt.Errorf("%s: pidfd_open(%d): %w", what, st.Pid, err)
		}
		defer unix.Close(fd)
		return rs.install(what, fd)
	}
	key := [2]uint64{pidfdKeyGone, uint64(f.ID)}
	if _, ok := rs.ghosts[key]; !ok {
		if err := goneStandIn(rs, what, st); err != nil {
			return 0, err
		}
	}
	fd := rs.ghosts[key]
	delete(rs.ghosts, key)
	defer unix.Close(fd)
	return rs.install(what, fd)
}

// goneStandIn starts a process that exits at once, opens a pidfd of it
// for every description of this task that refers to the gone process of
// st (its pidfs inode), and reaps it.
func goneStandIn(rs *restoreFDs, what string, st *model.PidfdState) error {
	var pfd int
	cmd := exec.Command("/bin/true")
	cmd.SysProcAttr = &syscall.SysProcAttr{PidFD: &pfd}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: start a stand-in for a gone process: %w", what, err)
	}
	unix.Close(pfd)
	var err error
	// Until the Wait the stand-in is at least a zombie: it can be opened.
	for _, e := range rs.r.Task.FDs {
		of := rs.r.Tree.Files[e.File]
		if of == nil || of.Kind != model.Pidfd || of.Pidfd == nil || of.Pidfd.Pid != -1 || of.Pidfd.Ino != st.Ino {
			continue
		}
		key := [2]uint64{pidfdKeyGone, uint64(of.ID)}
		if _, ok := rs.ghosts[key]; ok {
			continue
		}
		fd, oerr := unix.PidfdOpen(cmd.Process.Pid, int(of.Flags)&(unix.O_NONBLOCK|pidfdThread))
		if oerr != nil {
			err = fmt.Errorf("%s: pidfd_open of the stand-in: %w", what, oerr)
			break
		}
		rs.ghosts[key] = fd
	}
	if werr := cmd.Wait(); werr != nil && err == nil {
		err = fmt.Errorf("%s: the stand-in for a gone process: %w", what, werr)
	}
	return err
}
