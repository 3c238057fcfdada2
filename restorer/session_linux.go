package restorer

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// restoreSession puts the task back in its dumped session and process
// group. The task starts in the puppet's group and godwit's session, and a
// task can only create a session (setsid, which makes it the leader of
// both) or join a group that exists in its own session (setpgid): so the
// session comes first, then the group. A session or group whose leader is
// not in the dump cannot be recreated; rather than restore the task into
// the wrong one, the restore is refused, naming it. With --shell-job the
// task joins godwit's session and group instead, as CRIU's does.
func (r *Restorer) restoreSession(s *session) error {
	pid := r.img.pid
	sid, pgid := r.img.task.Sid, r.img.task.Pgid
	curSid, err := unix.Getsid(pid)
	if err != nil {
		return fmt.Errorf("getsid: %w", err)
	}
	if r.o.ShellJob {
		sid, pgid = curSid, unix.Getpgrp()
	}
	switch {
	case sid == pid:
		if pgid != pid {
			return fmt.Errorf("process group %d of session leader %d cannot be recreated: its leader is not in the dump", pgid, pid)
		}
		if _, err := s.Call("setsid", unix.SYS_SETSID); err != nil {
			return err
		}
		return nil
	case sid != curSid:
		return fmt.Errorf("session %d cannot be recreated: its leader is not in the dump and godwit runs in session %d (restore from that session, or with --shell-job into godwit's)", sid, curSid)
	}
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
		if en, ok := errnoOf(err); ok && en == unix.EPERM {
			return fmt.Errorf("process group %d cannot be recreated: no such group in session %d and its leader is not in the dump", pgid, sid)
		}
		return err
	}
	return nil
}
