package migrate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"

	"godwit/dumper"
	"godwit/internal/model"
	"godwit/internal/procfs"
	pb "godwit/migrate/internal/proto"
	"godwit/restorer"
)

// Restore overlapped with the rounds (DESIGN.md, Beyond CRIU 4): the
// source sends the root's layout with each pre-copy round; the agent makes
// the task from the first, follows the layout and writes each round's
// pages into it as the round lands; at the switch-over only the final
// delta and the non-memory state remain (restorer.Pending).

// OverlapPrepared is Overlap.State when the restore took over the task
// the rounds prepared.
const OverlapPrepared = "prepared"

// Overlap is what the overlapped restore did.
type Overlap struct {
	// State is OverlapPrepared, or why the migration restored from the
	// images alone ("off: ..." when the source did not ask).
	State string `json:"state"`
	// Tasks are the tasks prepared (the tree's). PreparedPages were
	// written into them before the freeze, FinalPages at the switch-over.
	Tasks         int    `json:"tasks,omitempty"`
	PreparedPages uint64 `json:"prepared_pages"`
	FinalPages    uint64 `json:"final_pages"`
}

// maxLayoutVMAs bounds a Layout message (vm.max_map_count's default is
// 65530).
const maxLayoutVMAs = 1 << 17

// maxLayoutTasks bounds the tasks of a tree whose layout is sent (the
// agent prepares no more).
const maxLayoutTasks = restorer.MaxTreeTasks

// maxPreparedThreads bounds the threads (of every task) a layout from the
// source makes the agent create ahead of the final images (Prepare makes
// every one at once); a tree with more is restored from the images alone.
const maxPreparedThreads = 4096

// layoutMsg describes the running tree of pid for a Layout message: the
// root's mappings and threads, and for a tree every other task's too,
// with each task's parent, session and group. A task that ends while it
// is read is left out (the agent then finds the tree changed and restores
// from the images); nil when the tree has more tasks than the agent
// prepares (no layout: the agent restores from the images).
func layoutMsg(pid int) (*pb.Layout, error) {
	pids := treePIDs(pid)
	if len(pids) > maxLayoutTasks {
		return nil, nil
	}
	var root *pb.Layout
	for _, p := range pids {
		l, err := taskLayout(p)
		if err != nil {
			if p == pid {
				return nil, err
			}
			continue
		}
		if root == nil {
			root = l
		} else {
			root.Tasks = append(root.Tasks, l)
		}
	}
	return root, nil
}

// taskLayout reads one task of the running tree.
func taskLayout(pid int) (*pb.Layout, error) {
	st, err := procfs.ReadStat(pid)
	if err != nil {
		return nil, fmt.Errorf("layout of %d: %w", pid, err)
	}
	if st.State == 'Z' || st.State == 'X' {
		return nil, fmt.Errorf("layout of %d: a zombie", pid)
	}
	vmas, err := dumper.CollectVMAs(pid, nil)
	if err != nil {
		return nil, fmt.Errorf("layout of %d: %w", pid, err)
	}
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil {
		return nil, fmt.Errorf("threads of %d: %w", pid, err)
	}
	l := &pb.Layout{Pid: int32(pid), Ppid: int32(st.Ppid), Sid: int32(st.Session), Pgid: int32(st.Pgrp), Vmas: make([]*pb.Vma, len(vmas))}
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil && tid != pid {
			l.Tids = append(l.Tids, int32(tid))
		}
	}
	for i, v := range vmas {
		l.Vmas[i] = &pb.Vma{Start: v.Start, End: v.End, Pgoff: v.Pgoff, Prot: v.Prot, Flags: v.Flags, Status: v.Status,
			Madv: v.Madv, HugePage: v.HugePage, Droppable: v.Droppable, Guards: len(v.Guards) > 0 || v.MayGuard}
		if v.SharedAnon() {
			l.Vmas[i].Shmid = v.Shmid
		}
	}
	return l, nil
}

// layoutOf checks a Layout from the source and returns it as the
// restorer takes it.
func layoutOf(l *pb.Layout, pid int) (*restorer.Layout, error) {
	if int(l.Pid) != pid {
		return nil, fmt.Errorf("layout of pid %d in a migration of %d", l.Pid, pid)
	}
	if len(l.Tasks) >= maxLayoutTasks {
		return nil, fmt.Errorf("layout of %d tasks", len(l.Tasks)+1)
	}
	rl, err := taskLayoutOf(l)
	if err != nil {
		return nil, err
	}
	for _, k := range l.Tasks {
		if k == nil || len(k.Tasks) > 0 {
			return nil, errors.New("layout: empty or nested task")
		}
		kl, err := taskLayoutOf(k)
		if err != nil {
			return nil, fmt.Errorf("task %d: %w", k.Pid, err)
		}
		rl.Tasks = append(rl.Tasks, *kl)
	}
	return rl, nil
}

func taskLayoutOf(l *pb.Layout) (*restorer.Layout, error) {
	pid := int(l.Pid)
	if pid <= 1 {
		return nil, fmt.Errorf("layout: bad pid %d", l.Pid)
	}
	if len(l.Vmas) > maxLayoutVMAs || len(l.Tids) > maxLayoutVMAs {
		return nil, fmt.Errorf("layout of %d VMAs, %d threads", len(l.Vmas), len(l.Tids))
	}
	rl := &restorer.Layout{Pid: pid, Ppid: int(l.Ppid), Sid: int(l.Sid), Pgid: int(l.Pgid)}
	for _, tid := range l.Tids {
		if tid <= 1 || int(tid) == pid {
			return nil, fmt.Errorf("layout: bad tid %d", tid)
		}
		rl.Tids = append(rl.Tids, int(tid))
	}
	out := make([]model.VMA, len(l.Vmas))
	for i, v := range l.Vmas {
		if v == nil {
			return nil, errors.New("layout: empty VMA")
		}
		out[i] = model.VMA{Start: v.Start, End: v.End, Pgoff: v.Pgoff, Prot: v.Prot, Flags: v.Flags, Status: v.Status,
			Madv: v.Madv, HugePage: v.HugePage, Droppable: v.Droppable, Shmid: v.Shmid}
		if v.Guards {
			// Never prepared (restorer.Prepare), whatever the range.
			out[i].Guards = []model.Range{{Start: v.Start, End: v.Start}}
		}
	}
	if err := restorer.CheckLayout(out); err != nil {
		return nil, err
	}
	rl.VMAs = out
	return rl, nil
}

// threadsOf counts the threads a layout makes.
func threadsOf(l *restorer.Layout) int {
	n := 1 + len(l.Tids)
	for _, k := range l.Tasks {
		n += 1 + len(k.Tids)
	}
	return n
}

// overlapRound prepares the task from the round's layout, or follows it,
// and writes the round's pages (in dir) into it, before the round is
// acknowledged: so the round's time, which the source's policy measures,
// includes it, and nothing of it is left for the downtime (written in the
// background, behind rounds that outran it on a loaded host, the rest
// landed in the switch-over: 1.3 s at 256 MiB). A failure ends the
// overlap for this migration (the task is killed), not the migration.
func (in *inbound) overlapRound(ctx context.Context, n uint32, dir string) {
	l := in.layout
	in.layout = nil
	if in.overlapOff {
		return
	}
	if l == nil {
		if in.pending != nil {
			// Its pages are not in the task: those written before
			// may be stale.
			in.overlapFallback(fmt.Sprintf("round %d without a layout", n))
		}
		return
	}
	if in.pending == nil && threadsOf(l) > maxPreparedThreads {
		in.overlapFallback(fmt.Sprintf("round %d: %d threads, more than the %d a tree is prepared with", n, threadsOf(l), maxPreparedThreads))
		return
	}
	var err error
	if in.pending == nil {
		in.pending, err = restorer.Prepare(restorer.Options{Detach: true}, *l)
	} else {
		err = in.pending.ApplyLayout(*l)
	}
	if err == nil {
		err = in.pending.WritePages(ctx, dir)
	}
	if err != nil {
		in.overlapFallback(fmt.Sprintf("round %d: %v", n, err))
		return
	}
	st := in.pending.Stats()
	in.a.cfg.Log.Debugf("agent: migration %s: round %d: task %d prepared: %d VMAs, %d pages so far", in.res.ID, n, in.res.PID, st.VMAs, st.Pages)
}

// overlapFallback ends the overlap: the restore will use the images alone.
func (in *inbound) overlapFallback(why string) {
	in.pending.Abort()
	in.pending = nil
	in.overlapOff = true
	in.overlap.State = why
	in.a.cfg.Log.Infof("agent: migration %s: restore from the images alone: %s", in.res.ID, why)
}
