package restorer

import (
	"errors"
	"fmt"
	"sync"

	"godwit/internal/images"
	"godwit/internal/model"
	"godwit/internal/ptrace"
	"godwit/internal/turns"
)

// treeWorkers is how many tracer threads rebuild a tree's tasks at once.
// Most of a task's restore is waiting for its ptrace stops (each a trip
// through the scheduler); several tracers keep several tasks in flight,
// and on a loaded host they also get more of the CPU than one thread.
const treeWorkers = 4

// spread hands the tree's live tasks, made by r.tr, to worker tracers,
// round robin in tree order. The root stays with r.tr, which is its
// tracer's first worker: a single task is never handed over.
func (r *Restorer) spread() error {
	var live []*taskRun
	for _, t := range r.tasks {
		if !t.img.dead() && t.task != nil {
			live = append(live, t)
		}
	}
	n := min(treeWorkers, len(live))
	if n <= 1 {
		return nil
	}
	r.workers = []*ptrace.Tracer{r.tr}
	for len(r.workers) < n {
		r.workers = append(r.workers, ptrace.New())
	}
	moved := map[*ptrace.Tracer][]*taskRun{}
	for i, t := range live {
		if w := r.workers[i%n]; w != r.tr {
			moved[w] = append(moved[w], t)
		}
	}
	// Every release first, in one trip to r.tr's thread; then each
	// worker seizes its own, the workers at once.
	err := r.tr.Do(func() error {
		for _, ts := range moved {
			for _, t := range ts {
				if err := t.task.Release(t.threads); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make([]error, len(r.workers))
	for i, w := range r.workers {
		ts := moved[w]
		if len(ts) == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = w.Do(func() error {
				for _, t := range ts {
					if err := t.task.Adopt(w, t.threads); err != nil {
						return fmt.Errorf("task %d: %w", t.img.pid, err)
					}
					t.tr = w
				}
				return nil
			})
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// closeWorkers ends the worker tracers but r.tr (close ends it).
func (r *Restorer) closeWorkers() {
	for _, w := range r.workers {
		if w != r.tr {
			w.Close()
		}
	}
	r.workers = nil
}

// tracers are the restore's tracer threads: r.tr and the workers.
func (r *Restorer) tracers() []*ptrace.Tracer {
	if len(r.workers) == 0 && r.tr != nil {
		return []*ptrace.Tracer{r.tr}
	}
	return r.workers
}

// eachTask runs fn for every live task on its tracer's thread: the tasks
// of one tracer one after another in tree order, the tracers at once.
// fn takes its turn (turns.enter) around whatever other tasks share or
// must see done first. Once a task fails no other task starts; the
// error returned is the failed task's earliest in tree order.
func (r *Restorer) eachTask(fn func(t *taskRun, ts *turns.Turns) error) (*taskRun, error) {
	ts := turns.New(len(r.tasks))
	byTracer := map[*ptrace.Tracer][]*taskRun{}
	var order []*ptrace.Tracer
	for _, t := range r.tasks {
		if _, ok := byTracer[t.tr]; !ok {
			order = append(order, t.tr)
		}
		byTracer[t.tr] = append(byTracer[t.tr], t)
	}
	failed := make([]error, len(r.tasks))
	var wg sync.WaitGroup
	for _, tr := range order {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = tr.Do(func() error {
				for _, t := range byTracer[tr] {
					if t.img.dead() || ts.Aborted() {
						ts.Skip(t.idx)
						continue
					}
					if err := fn(t, ts); err != nil {
						failed[t.idx] = err
						ts.Abort()
					}
					ts.Skip(t.idx) // a turn fn did not take or leave
				}
				return nil
			})
		}()
	}
	wg.Wait()
	// A task that waited for its turn when another failed names no
	// failure of its own.
	var first *taskRun
	for i, err := range failed {
		if err == nil {
			continue
		}
		if !errors.Is(err, turns.ErrAborted) {
			return r.tasks[i], err
		}
		if first == nil {
			first = r.tasks[i]
		}
	}
	if first != nil {
		return first, failed[first.idx]
	}
	return nil, nil
}

// sharesTables reports a task whose fd table or fs info another task of
// the tree shares (CLONE_FILES, CLONE_FS): every injected open, close
// and chdir of the one is seen by the other, so the two never run at
// once.
func (r *Restorer) sharesTables(t *taskRun) bool {
	k := t.img.task
	return k.IDs.Files != 0 && r.tableUsers[[2]model.ID{0, k.IDs.Files}] > 1 ||
		k.IDs.FS != 0 && r.tableUsers[[2]model.ID{1, k.IDs.FS}] > 1
}

// countTables fills r.tableUsers, before any task runs.
func (r *Restorer) countTables() {
	r.tableUsers = map[[2]model.ID]int{}
	for _, o := range r.tasks {
		if !o.img.dead() {
			r.tableUsers[[2]model.ID{0, o.img.task.IDs.Files}]++
			r.tableUsers[[2]model.ID{1, o.img.task.IDs.FS}]++
		}
	}
}

// layoutShares reports a task whose layout uses an object another task
// may make or take (shared anonymous memory, a deleted file, a memfd):
// the first to map one makes it, the others open it there.
func (t *taskRun) layoutShares() bool {
	for i := range t.img.mm.VMAs {
		v := &t.img.mm.VMAs[i]
		if v.SharedAnon() {
			return true
		}
		if mf := t.img.tree.Files[model.ID(v.Shmid)]; v.Status&(images.VmaFilePrivate|images.VmaFileShared) != 0 && mf != nil && (mf.Kind == model.Ghost || mf.Kind == model.Memfd) {
			return true
		}
	}
	return false
}
