package dumper

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

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
	tr        *ptrace.Tracer // its tracer; nil for a zombie
	tids      []int          // leader first; nil for a zombie
	zombie    bool
	exitCode  int    // a zombie's wait status (/proc/PID/stat exit_code)
	pgid, sid int    // a zombie's
	comm      string // a zombie's
}

// dumpTracers is how many tracer threads a dump spreads a tree's tasks
// over. Most of a task's dump is waiting for ptrace stops and /proc
// reads; several tracers keep several tasks in flight (as the restore's
// treeWorkers). A variable for the tests, which compare with one.
var dumpTracers = 4

// tracerPool is a dump's tracer threads: the first froze the root, the
// others are started as tasks are found, task i of the tree going to
// tracer i mod the pool's size. A tracee stays with the tracer that
// seized it until the dump ends (the kernel ties it to that thread).
type tracerPool struct {
	all  []*ptrace.Tracer
	size int
}

func newTracerPool(root *ptrace.Tracer, size int) *tracerPool {
	return &tracerPool{all: []*ptrace.Tracer{root}, size: max(size, 1)}
}

// pick is the tracer of the tree's task i.
func (p *tracerPool) pick(i int) *ptrace.Tracer {
	k := i % p.size
	for len(p.all) <= k {
		p.all = append(p.all, ptrace.New())
	}
	return p.all[k]
}

// close ends every tracer but the first (the dump's own, closed by it).
func (p *tracerPool) close() {
	for _, t := range p.all[1:] {
		t.Close()
	}
}

// injection sums the tracers' injection figures.
func (p *tracerPool) injection() (took time.Duration, calls, sessions, stops int, byNr map[uintptr]int) {
	byNr = map[uintptr]int{}
	for _, t := range p.all {
		took += t.InjectionTime()
		calls += t.InjectedCalls()
		se, st, nrs := t.InjectionStats()
		sessions += se
		stops += st
		for nr, n := range nrs {
			byNr[nr] += n
		}
	}
	return took, calls, sessions, stops, byNr
}

// freezeTree freezes the tree under root (whose threads are already
// frozen by the pool's first tracer, as tids) top-down: a frozen task
// cannot fork, so once every task is frozen, children files read after
// each task's freeze list the whole tree; a last pass re-reads them and
// freezes any task still missing, until nothing changes. The children
// of one task are frozen by the pool's tracers at once. Zombies are
// recorded, not seized (ptrace refuses them). Parents come before their
// children in the result. On error the caller thaws what frozen lists
// (every task it returns or that is traced by a tracer of the pool).
func freezeTree(pool *tracerPool, root int, rootTids []int) ([]*frozenTask, error) {
	out := []*frozenTask{{pid: root, tids: rootTids, tr: pool.pick(0)}}
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
			var todo []int
			for _, c := range kids {
				if known[c] == nil {
					todo = append(todo, c)
				}
			}
			if len(todo) == 0 {
				continue
			}
			fresh = true
			got, err := freezeChildren(pool, len(out), todo, ft.pid)
			for _, nt := range got {
				if nt != nil {
					known[nt.pid] = nt
					out = append(out, nt)
				}
			}
			if err != nil {
				return out, err
			}
		}
		if !fresh {
			return out, nil
		}
	}
}

// freezeChildren freezes the tasks pids, children of ppid and the tree's
// tasks from first on, each with its tracer of the pool, the tracers at
// once. It returns what each froze (nil where nothing), in pids' order,
// and the error of the first that failed.
func freezeChildren(pool *tracerPool, first int, pids []int, ppid int) ([]*frozenTask, error) {
	out := make([]*frozenTask, len(pids))
	errs := make([]error, len(pids))
	byTracer := map[*ptrace.Tracer][]int{}
	for j := range pids {
		tr := pool.pick(first + j)
		byTracer[tr] = append(byTracer[tr], j)
	}
	var wg sync.WaitGroup
	for tr, js := range byTracer {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = tr.Do(func() error {
				for _, j := range js {
					out[j], errs[j] = freezeChild(tr, pids[j], ppid)
					if errs[j] != nil {
						return nil // the others of this tracer are left running
					}
				}
				return nil
			})
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return out, err
		}
	}
	return out, nil
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
	ft := &frozenTask{pid: pid, ppid: ppid, tids: tids, tr: tr}
	st, err := procfs.ReadStat(pid)
	if err != nil {
		return ft, fmt.Errorf("task %d: %w", pid, err)
	}
	if st.Ppid != ppid {
		return ft, fmt.Errorf("task %d: left its parent %d while being frozen", pid, ppid)
	}
	if st.ExitSignal != int(unix.SIGCHLD) {
		// clone with another exit signal (or none): restored tasks
		// are made with SIGCHLD, which would change what the parent
		// is told and what its wait finds.
		return ft, fmt.Errorf("task %d: exit signal %d (not SIGCHLD) is not supported", pid, st.ExitSignal)
	}
	return ft, nil
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

// finishTree runs fn (a thaw or kill) for every live task of the tree on
// its tracer's thread, children before their parents: the deepest tasks
// first, each depth's tasks on their tracers at once, so that no parent
// runs while a child of it is still held. Every task is tried; the
// errors are joined.
func finishTree(tree []*frozenTask, fn func(t *frozenTask) error) error {
	depth := make(map[int]int, len(tree))
	byDepth := [][]*frozenTask{}
	for i, t := range tree {
		k := 0
		if i > 0 {
			k = depth[t.ppid] + 1 // parents come first
		}
		depth[t.pid] = k
		if t.zombie {
			continue
		}
		for len(byDepth) <= k {
			byDepth = append(byDepth, nil)
		}
		byDepth[k] = append(byDepth[k], t)
	}
	var errs []error
	for k := len(byDepth) - 1; k >= 0; k-- {
		byTracer := map[*ptrace.Tracer][]*frozenTask{}
		for _, t := range byDepth[k] {
			byTracer[t.tr] = append(byTracer[t.tr], t)
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for tr, ts := range byTracer {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = tr.Do(func() error {
					for i := len(ts) - 1; i >= 0; i-- {
						if err := fn(ts[i]); err != nil {
							mu.Lock()
							errs = append(errs, fmt.Errorf("task %d: %w", ts[i].pid, err))
							mu.Unlock()
						}
					}
					return nil
				})
			}()
		}
		wg.Wait()
	}
	return errors.Join(errs...)
}
