package dumper

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
	"godwit/internal/ptrace"
)

// maxTreeRounds bounds the re-scans of the tree's children: a tree that
// keeps changing under the freeze fails instead of looping.
const maxTreeRounds = 20

// frozenTask is one task of the tree as the freeze found it.
type frozenTask struct {
	pid, ppid int
	tids      []int // leader first; nil for a zombie
	zombie    bool
	exitCode  int    // a zombie's wait status (/proc/PID/stat exit_code)
	pgid, sid int    // a zombie's
	comm      string // a zombie's
}

// freezeTree freezes the tree under root (whose threads are already
// frozen, as tids) top-down: a frozen task cannot fork, so once every task
// is frozen, children files read after each task's freeze list the whole
// tree; a last pass re-reads them and freezes any task still missing,
// until nothing changes. Zombies are recorded, not seized (ptrace refuses
// them). Parents come before their children in the result. On error the
// caller thaws what frozen lists (every task it returns or that is traced
// by tr).
func freezeTree(tr *ptrace.Tracer, root int, rootTids []int) ([]*frozenTask, error) {
	out := []*frozenTask{{pid: root, tids: rootTids}}
	known := map[int]*frozenTask{root: out[0]}
	for round := 0; ; round++ {
		if round == maxTreeRounds {
			return out, errors.New("freeze tree: the set of tasks does not settle")
		}
		fresh := false
		for i := 0; i < len(out); i++ {
			ft := out[i]
			if ft.zombie {
				continue
			}
			kids, err := Children(ft.pid)
			if err != nil {
				return out, fmt.Errorf("task %d: %w", ft.pid, err)
			}
			for _, c := range kids {
				if known[c] != nil {
					continue
				}
				nt, err := freezeChild(tr, c, ft.pid)
				if nt != nil {
					known[c] = nt
					out = append(out, nt)
				}
				if err != nil {
					return out, err
				}
				fresh = true
			}
		}
		if !fresh {
			return out, nil
		}
	}
}

// freezeChild freezes task pid, a child of ppid, or records it as a zombie.
func freezeChild(tr *ptrace.Tracer, pid, ppid int) (*frozenTask, error) {
	if z, err := zombie(pid, ppid); z != nil || err != nil {
		return z, err
	}
	tids, err := tr.FreezeProcess(pid, seizeOptions(pid))
	if err != nil {
		// It may have died between the look and the seize.
		if z, zerr := zombie(pid, ppid); z != nil {
			return z, zerr
		}
		return nil, fmt.Errorf("task %d: %w", pid, err)
	}
	st, err := procfs.ReadStat(pid)
	if err != nil {
		return &frozenTask{pid: pid, ppid: ppid, tids: tids}, fmt.Errorf("task %d: %w", pid, err)
	}
	if st.Ppid != ppid {
		return &frozenTask{pid: pid, ppid: ppid, tids: tids}, fmt.Errorf("task %d: left its parent %d while being frozen", pid, ppid)
	}
	if st.ExitSignal != int(unix.SIGCHLD) {
		// clone with another exit signal (or none): restored tasks
		// are made with SIGCHLD, which would change what the parent
		// is told and what its wait finds.
		return &frozenTask{pid: pid, ppid: ppid, tids: tids}, fmt.Errorf("task %d: exit signal %d (not SIGCHLD) is not supported", pid, st.ExitSignal)
	}
	return &frozenTask{pid: pid, ppid: ppid, tids: tids}, nil
}

// zombie returns pid as a zombie task if it is one. A zombie whose other
// threads still run (the leader exited alone) is refused: such a process
// is alive and its threads would be lost.
func zombie(pid, ppid int) (*frozenTask, error) {
	st, err := procfs.ReadStat(pid)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("task %d: vanished while the tree was frozen: %w", pid, unix.ESRCH)
		}
		return nil, fmt.Errorf("task %d: %w", pid, err)
	}
	if st.State != 'Z' && st.State != 'X' {
		return nil, nil
	}
	if tids, err := procfs.Tasks(pid); err == nil && len(tids) > 1 {
		return nil, fmt.Errorf("task %d: its leader exited while %d other threads run: not supported", pid, len(tids)-1)
	}
	return &frozenTask{pid: pid, ppid: ppid, zombie: true, exitCode: int(st.ExitCode), pgid: st.Pgrp, sid: st.Session, comm: st.Comm}, nil
}

// pids lists the tasks' pids.
func pids(ts []*frozenTask) []int {
	out := make([]int, 0, len(ts))
	for _, t := range ts {
		out = append(out, t.pid)
	}
	return slices.Clip(out)
}

// add sums another task's figures into s.
func (s *MemStats) add(o MemStats) {
	s.Scanned += o.Scanned
	s.Zero += o.Zero
	s.Untouched += o.Untouched
	s.Written += o.Written
	s.Unwalked += o.Unwalked
	s.DumpTime += o.DumpTime
	s.WriteTime += o.WriteTime
}
