package dumper

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
)

// treeSessions refuses, without --shell-job, a task whose session's leader
// is neither in the tree nor alive (a daemon: setsid, fork, exit): no
// restore can make that session again, so the dump would kill the tree
// for images that only `restore --shell-job` takes (as CRIU, which
// refuses such a dump). A session whose leader lives outside the tree is
// godwit's to join at restore (restore from that session). It runs right
// after the freeze, before any state is read: the tree resumes as it was.
func treeSessions(tree []*frozenTask, shellJob bool) error {
	if shellJob {
		return nil
	}
	in := map[int]bool{}
	for _, t := range tree {
		in[t.pid] = true
	}
	for _, t := range tree {
		sid := t.sid
		if !t.zombie {
			b, err := os.ReadFile(procfs.Path(t.pid, "stat"))
			if err != nil {
				return fmt.Errorf("task %d: %w", t.pid, err)
			}
			st, err := procfs.ParseStat(b)
			if err != nil {
				return fmt.Errorf("task %d: %w", t.pid, err)
			}
			sid = st.Session
		}
		if sid == 0 || in[sid] {
			continue // outside godwit's pid namespace: the restore says so
		}
		if s, err := unix.Getsid(sid); err == nil && s == sid {
			continue // its leader lives
		}
		return fmt.Errorf("task %d is in session %d, whose leader is dead and not in the tree (a daemon): the restore cannot make that session again; dump and restore with --shell-job to put the tree in godwit's session", t.pid, sid)
	}
	return nil
}
