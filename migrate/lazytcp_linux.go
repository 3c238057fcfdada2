package migrate

import (
	"errors"
	"fmt"
	"time"

	"godwit/dumper"
	"godwit/internal/actions"
	"godwit/internal/netlock"
	pb "godwit/migrate/internal/proto"
)

// lazySwitch is what a post-copy or hybrid switch-over does around the
// lazy final dump beside the pages: the user's action scripts and, with
// --tcp-established, the connections (docs/migrate-actions.md).
//
// The dump locks the tree's connections here at the freeze. Once every
// image is on the agent, the agent locks them on its host (Lock) and the
// pre-restore scripts move the service address there; then the restore is
// asked (the commit). The agent unlocks as soon as its copy runs, while
// the lazy pages still come; the lock here stays until the frozen source,
// whose sockets are still in repair mode, is killed after the last page
// (its connections then close silently), and is removed then. A failure
// before the commit rolls the dump back (the source runs on, its
// connections out of repair mode and unlocked here), runs the
// migrate-abort scripts (the address back) and only then tells the agent,
// which drops its lock once the link closes.
type lazySwitch struct {
	o    *SendOptions
	user *actions.Scripts
	// postDump: the post-dump hook ran (migrate-abort puts back what the
	// scripts moved from there on); locked: the agent holds its lock.
	postDump, locked bool
}

func newLazySwitch(o *SendOptions, imagesDir string) *lazySwitch {
	return &lazySwitch{o: o, user: &actions.Scripts{Commands: o.ActionScripts, ImagesDir: imagesDir}}
}

// dumpScripts are the lazy dump's action scripts: the user's at the
// dump's own points (pre-dump, post-dump, network-lock...), then notify.
func (l *lazySwitch) dumpScripts(notify func(action string, pid int) error) *actions.Scripts {
	return &actions.Scripts{Commands: l.o.ActionScripts, ImagesDir: l.user.ImagesDir, Notify: notify}
}

// dumpOptions sets the lazy dump's connection options.
func (l *lazySwitch) dumpOptions(do *dumper.Options) {
	do.TCPEstablished, do.SkipInFlight, do.NetworkLock = l.o.TCPEstablished, l.o.SkipInFlight, l.o.NetworkLock
	// The lock goes with the killed source tree, while its guard still
	// watches this process: kept, it would outlive a `send` killed before
	// finish.
	do.UnlockKilled = true
}

// beforeCommit runs in the post-dump hook (which set postDump first) once
// every image is on the agent: the agent locks the connections, the
// pre-restore scripts run, the agent checks what its restore would refuse
// (Check).
func (l *lazySwitch) beforeCommit(s *sender, res *Result, p Phase) error {
	if l.o.TCPEstablished {
		// The agent may hold its lock whatever becomes of the answer.
		l.locked = true
		n, err := s.lockRemote(p)
		if err != nil {
			return err
		}
		res.Connections = n
	}
	if err := l.user.Run(actions.PreRestore, l.o.Pid); err != nil {
		return err
	}
	// Past the commit a refusal of the restore would lose the program.
	return s.checkRemote(p)
}

// abort ends a migration whose lazy dump rolled back before the commit
// (the source runs on here) with tell, which sends the agent the Abort.
func (l *lazySwitch) abort(s *sender, p Phase, err error, tell func(Phase, error) error) error {
	if l.postDump {
		if serr := l.user.Run(ActionAbort, l.o.Pid); serr != nil {
			err = errors.Join(err, serr)
		}
	}
	err = tell(p, err)
	if l.locked {
		// The agent drops its lock once it has the Abort (or the
		// link ends): a retry finds the destination clean.
		s.waitClosed(lockWait)
	}
	return err
}

// finish runs once the lazy dump ended after the commit (the source tree
// killed here, its connections closed in repair mode: silently): a lock
// it kept here (a whole namespace's; the dump removed a connection lock
// itself, UnlockKilled) is removed; on success, the post-restore scripts run. The
// error is the migration's.
func (l *lazySwitch) finish(dr *dumper.Result, res *Result, err error) error {
	if dr != nil && dr.NetLock != nil {
		lk, lerr := netlock.Adopt(*dr.NetLock)
		if lerr == nil {
			lerr = lk.Unlock()
		}
		if lerr != nil {
			err = errors.Join(err, phaseErr(PhasePostcopy, fmt.Errorf("source network unlock: %w", lerr)))
		}
	}
	if err != nil {
		return err
	}
	if serr := l.user.Run(actions.PostRestore, l.o.Pid); serr != nil {
		// The tree runs on the destination: report, nothing to undo.
		res.Note = joinNote(res.Note, serr.Error())
	}
	return nil
}

// joinNote appends a note to notes ("; " between).
func joinNote(notes, note string) string {
	if notes == "" {
		return note
	}
	return notes + "; " + note
}

// checkRemote asks the agent whether the restore would refuse the final
// images on its host (Check).
func (s *sender) checkRemote(p Phase) error {
	if err := s.send(&pb.Envelope{Msg: &pb.Envelope_Check{Check: &pb.Check{}}}); err != nil {
		return err
	}
	m, err := s.recv(p, time.Minute)
	if err != nil {
		return err
	}
	ck := m.GetChecked()
	if ck == nil {
		return fmt.Errorf("expected checked, got %T", m.Msg)
	}
	if ck.Refusal != "" {
		return fmt.Errorf("the destination would refuse the restore: %s", ck.Refusal)
	}
	return nil
}

// lockRemote asks the agent to lock, on its host, the connections and
// listeners of the final images, and returns how many connections it
// locked.
func (s *sender) lockRemote(p Phase) (int, error) {
	if err := s.send(&pb.Envelope{Msg: &pb.Envelope_Lock{Lock: &pb.Lock{}}}); err != nil {
		return 0, err
	}
	m, err := s.recv(p, time.Minute)
	if err != nil {
		return 0, err
	}
	lk := m.GetLocked()
	if lk == nil {
		return 0, fmt.Errorf("expected locked, got %T", m.Msg)
	}
	return int(lk.Connections), nil
}
