package drivers

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"godwit/internal/inject"
	"godwit/internal/procfs"
)

// miscDriver dumps and restores process-wide odds and ends: personality,
// comm, child subreaper, THP disabling, oom_score_adj.
type miscDriver struct{}

func (miscDriver) Name() string    { return "misc" }
func (miscDriver) After() []string { return []string{PhaseThreads, "timers"} }

// Collect reads what /proc shows.
func (miscDriver) Collect(d *Dump) error {
	pid, ti := d.Pid, d.Task
	b, err := os.ReadFile(procfs.Path(pid, "personality"))
	if err != nil {
		return fmt.Errorf("personality: %w", err)
	}
	p, err := strconv.ParseUint(strings.TrimSpace(string(b)), 16, 32)
	if err != nil {
		return fmt.Errorf("personality %q: %w", b, err)
	}
	ti.Personality = uint32(p)
	if ti.Comm, err = procfs.ReadComm(pid); err != nil {
		return err
	}
	if b, err := os.ReadFile(procfs.Path(pid, "oom_score_adj")); err == nil {
		if v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 32); err == nil {
			adj := int32(v)
			ti.OomScoreAdj = &adj
		}
	}
	return nil
}

// CollectInjected reads the prctl flags only the task can tell.
func (k miscDriver) CollectInjected(d *Dump, s *inject.Session) error {
	p, _ := k.PlanInjected(d, s)
	return runPlanned(s, p)
}

// PlanInjected reads PR_GET_THP_DISABLE and PR_GET_CHILD_SUBREAPER.
func (miscDriver) PlanInjected(d *Dump, s *inject.Session) (Planned, bool) {
	return Planned{Calls: []inject.Call{
		inject.C("prctl(PR_GET_THP_DISABLE)", unix.SYS_PRCTL, unix.PR_GET_THP_DISABLE),
		inject.C("prctl(PR_GET_CHILD_SUBREAPER)", unix.SYS_PRCTL, unix.PR_GET_CHILD_SUBREAPER, s.Scratch()+scratchReaper),
	}, Done: func(got []uint64, scratch []byte) error {
		// 0, or 1 with the PR_SET_THP_DISABLE flags the task gave
		// (Linux 6.18: PR_THP_DISABLE_EXCEPT_ADVISED). A flag godwit
		// does not know is refused: restoring a plain disable would
		// silently change which regions get huge pages.
		switch v := got[0]; v {
		case 0:
		case 1, 1 | unix.PR_THP_DISABLE_EXCEPT_ADVISED:
			d.Task.MM.THPDisabled = true
			d.Task.MM.THPDisableFlags = uint32(v &^ 1)
		default:
			return fmt.Errorf("prctl(PR_GET_THP_DISABLE) = %#x: THP-disable flags unknown to godwit, cannot be restored", v)
		}
		d.Task.ChildSubreaper = le.Uint32(scratch[scratchReaper:]) != 0
		return nil
	}}, true
}

// Restore: personality, comm, subreaper, THP, oom_score_adj.
func (miscDriver) Restore(r *Restore, s *inject.Session) error {
	tc := r.Task
	// Queued (inject.Session.Later): they run with the next calls of
	// the session, in the same stop.
	s.Later("personality", unix.SYS_PERSONALITY, uint64(tc.Personality))
	if err := setComm(s, tc.Comm); err != nil {
		return err
	}
	if tc.ChildSubreaper {
		s.Later("prctl(PR_SET_CHILD_SUBREAPER)", unix.SYS_PRCTL, unix.PR_SET_CHILD_SUBREAPER, 1)
	}
	// Always: a new task inherits godwit's THP-disable state at fork.
	if m := r.Task.MM; m.THPDisabled {
		s.Later("prctl(PR_SET_THP_DISABLE)", unix.SYS_PRCTL, unix.PR_SET_THP_DISABLE, 1, uint64(m.THPDisableFlags), 0, 0)
	} else {
		s.Later("prctl(PR_SET_THP_DISABLE)", unix.SYS_PRCTL, unix.PR_SET_THP_DISABLE, 0, 0, 0, 0)
	}
	if tc.OomScoreAdj != nil {
		p := "/proc/" + strconv.Itoa(r.Task.Pid) + "/oom_score_adj"
		want := int(*tc.OomScoreAdj)
		if err := os.WriteFile(p, []byte(strconv.Itoa(want)), 0); err != nil {
			// Going below oom_score_adj_min (inherited from godwit) needs
			// CAP_SYS_RESOURCE, which root lacks on some hosts: the task
			// keeps godwit's value, and the log says so.
			if !errors.Is(err, unix.EACCES) && !errors.Is(err, unix.EPERM) {
				return fmt.Errorf("oom_score_adj: %w", err)
			}
			r.Log.Warnf("restore %d: oom_score_adj %d not restored (lowering it needs CAP_SYS_RESOURCE): %v", r.Task.Pid, want, err)
		}
	}
	return nil
}

func setComm(s *inject.Session, comm string) error {
	if comm == "" {
		return nil
	}
	if len(comm) > 15 {
		comm = comm[:15]
	}
	a, err := s.Stash(append([]byte(comm), 0))
	if err != nil {
		return err
	}
	s.Later("prctl(PR_SET_NAME)", unix.SYS_PRCTL, unix.PR_SET_NAME, a)
	return nil
}

// dumpableDriver dumps and restores the task's dumpable flag, which a
// credential change resets: it is set after the credentials.
type dumpableDriver struct{}

func (dumpableDriver) Name() string    { return "dumpable" }
func (dumpableDriver) After() []string { return []string{"creds"} }

// CollectInjected reads it with an injected prctl.
func (k dumpableDriver) CollectInjected(d *Dump, s *inject.Session) error {
	p, _ := k.PlanInjected(d, s)
	return runPlanned(s, p)
}

// PlanInjected reads PR_GET_DUMPABLE.
func (dumpableDriver) PlanInjected(d *Dump, s *inject.Session) (Planned, bool) {
	return Planned{Calls: []inject.Call{inject.C("prctl(PR_GET_DUMPABLE)", unix.SYS_PRCTL, unix.PR_GET_DUMPABLE)},
		Done: func(got []uint64, _ []byte) error {
			dumpable := int32(got[0])
			if dumpable != 0 && dumpable != 1 {
				// SUID_DUMP_ROOT (2) is the kernel's own, for a set-user-ID
				// program under fs.suid_dumpable=2: PR_SET_DUMPABLE takes
				// only 0 or 1, so the restore could not set it back.
				return fmt.Errorf("dumpable %d (PR_GET_DUMPABLE; 2 is SUID_DUMP_ROOT, which the kernel sets for a set-user-ID program under fs.suid_dumpable=2): PR_SET_DUMPABLE cannot set it again", dumpable)
			}
			d.Task.MM.Dumpable = &dumpable
			return nil
		}}, true
}

// Restore sets it, when the images have it.
func (dumpableDriver) Restore(r *Restore, s *inject.Session) error {
	if v := r.Task.MM.Dumpable; v != nil {
		s.Later("prctl(PR_SET_DUMPABLE)", unix.SYS_PRCTL, unix.PR_SET_DUMPABLE, uint64(*v))
	}
	return nil
}
