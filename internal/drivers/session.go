package drivers

import (
	"fmt"

	"golang.org/x/sys/unix"

	"godwit/internal/inject"
	"godwit/internal/procfs"
)

// sessionDriver dumps and restores the task's process group and session.
type sessionDriver struct{}

func (sessionDriver) Name() string    { return "session" }
func (sessionDriver) After() []string { return []string{PhaseThreads} }

// Collect reads the group and session from /proc/PID/stat.
func (sessionDriver) Collect(d *Dump) error {
	st, err := procfs.ReadStat(d.Pid)
	if err != nil {
		return err
	}
	d.Task.Pgid, d.Task.Sid = st.Pgrp, st.Session
	return nil
}

// Restore puts the task back in its dumped session and process group.
// The task starts in the puppet's group and godwit's session, and a task
// can only create a session (setsid, which makes it the leader of both)
// or join a group that exists in its own session (setpgid): so the
// session comes first, then the group. A session or group whose leader is
// not in the dump cannot be recreated; rather than restore the task into
// the wrong one, the restore is refused, naming it. With ShellJob the
// task joins godwit's group instead, as CRIU's --shell-job; it is
// already in godwit's session, which is therefore never named (and may
// be 0 when godwit's session leader is outside its pid namespace, as
// under a container runtime).
func (sessionDriver) Restore(r *Restore, s *inject.Session) error {
	pid := r.Task.Pid
	sid, pgid := r.Task.Sid, r.Task.Pgid
	if r.ShellJob {
		pgid = unix.Getpgrp()
		if pgid == 0 {
			return fmt.Errorf("--shell-job: godwit's process group leader is outside its pid namespace, so the task cannot join it")
		}
		return joinGroup(s, pid, pgid, 0)
	}
	curSid, err := unix.Getsid(pid)
	if err != nil {
		return fmt.Errorf("getsid: %w", err)
	}
	switch {
	case sid == 0 || pgid == 0:
		return fmt.Errorf("session %d / process group %d are outside the dump's pid namespace: restore with --shell-job into godwit's", sid, pgid)
	case sid == pid:
		if pgid != pid {
			return fmt.Errorf("process group %d of session leader %d cannot be recreated: its leader is not in the dump", pgid, pid)
		}
		_, err := s.Call("setsid", unix.SYS_SETSID)
		return err
	case sid != curSid:
		return fmt.Errorf("session %d cannot be recreated: its leader is not in the dump and godwit runs in session %d (restore from that session, or with --shell-job into godwit's)", sid, curSid)
	}
	return joinGroup(s, pid, pgid, sid)
}

// joinGroup moves the task into group pgid of its current session,
// creating it when the task is to lead it.
func joinGroup(s *inject.Session, pid, pgid, sid int) error {
	cur, err := unix.Getpgid(pid)
	if err != nil {
		return fmt.Errorf("getpgid: %w", err)
	}
	if cur == pgid {
		return nil
	}
	target := uint64(pgid)
	if pgid == pid {
		target = 0 // a new group led by the task
	}
	if _, err := s.Call(fmt.Sprintf("setpgid(0, %d)", pgid), unix.SYS_SETPGID, 0, target); err != nil {
		if en, ok := inject.Errno(err); ok && en == unix.EPERM {
			where := fmt.Sprintf("session %d", sid)
			if sid == 0 {
				where = "godwit's session"
			}
			return fmt.Errorf("process group %d cannot be recreated: no such group in %s and its leader is not in the dump", pgid, where)
		}
		return err
	}
	return nil
}
