package restorer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/actions"
	"godwit/internal/cpuinfo"
	"godwit/internal/drivers"
	"godwit/internal/images"
	"godwit/internal/logging"
	"godwit/internal/model"
	"godwit/internal/netlock"
	"godwit/internal/procfs"
	"godwit/internal/ptrace"
	"godwit/internal/puppet"
	"godwit/internal/turns"
)

const (
	pageSize = 4096
	// taskSize is TASK_SIZE_MAX of x86-64 with 4-level page tables: no
	// user mapping ends above it.
	taskSize = 1<<47 - pageSize
)

// ErrPidInUse reports that a PID or TID of the images belongs to a live
// task.
var ErrPidInUse = puppet.ErrPidInUse

// zombieWait bounds how long New waits for a dead task with one of our
// PIDs to be reaped (a killed task whose parent is PID 1 stays a zombie
// for a second or two on these machines).
const zombieWait = 5 * time.Second

type phase int

const (
	phaseNew phase = iota
	phaseLaidOut
	phaseFinalized
	phaseResumed
	phaseFailed
)

// Restorer rebuilds a process tree from its images. Its methods must be
// called in order: Layout, FillPages (any number of times), Finalize,
// Resume, Wait. After a failed step every task made so far is gone and
// every later call fails.
type Restorer struct {
	// validated are the files checked against the dump in New, each
	// verified again once the task has opened it.
	validated map[model.ID]drivers.FileIdentity

	o       Options
	scripts *actions.Scripts
	log     *logging.Logger
	dir     *images.Dir
	img     *taskImages // the root's; img.tasks is the tree
	phase   phase
	err     error // the failure that ended the restore

	tr *ptrace.Tracer
	// workers are the tracers the tree's tasks are spread over, r.tr
	// first (none for a single task: r.tr alone); tableUsers counts the
	// tasks of each fd table and fs info (sharesTables).
	workers    []*ptrace.Tracer
	tableUsers map[[2]model.ID]int
	tasks      []*taskRun // the tree, parents before children
	// helpers stand in for dead group leaders while the tree is made.
	helpers []groupHelper
	root    *taskRun
	// opened records where each open file description was first made
	// (shared with the drivers): other tasks take it from there.
	opened map[model.ID]drivers.OpenedAt
	held   *drivers.Held // objects made for a task not restored yet (Finalize)
	// shmAt is where each shared anonymous object was first mapped;
	// shmShared the objects several tasks map.
	shmAt     map[uint64]shmMapping
	shmShared map[uint64]bool
	// ghostAt is where each deleted file (by device and inode) was
	// first mapped: other mappings open it there, so it stays one file.
	ghostAt map[[2]uint64]shmMapping

	start    time.Time
	forkTime time.Duration
	waited   bool

	netLock *netlock.Lock // the dump's network lock, until removed

	// prepared: a task laid out ahead of its images (Prepare): every
	// private VMA is mapped writable, for the pages to come.
	prepared bool
}

// shmMapping is a VMA of a shared anonymous object in a restored task.
type shmMapping struct {
	pid        int
	start, end uint64
}

// taskRun is one task of the tree being rebuilt.
type taskRun struct {
	*Restorer
	idx     int            // in r.tasks
	tr      *ptrace.Tracer // the task's tracer: r.tr or a worker (spread)
	img     *taskImages
	log     *logging.Logger // the task's lines (--log-pid: FILE.PID)
	task    *puppet.Puppet  // the task with the original PID, traced
	threads []int           // TIDs made so far, leader first

	win    window // injection page, scratch and vdso bounce area
	runner bool   // the batch runner is in the window
	// scratchMapped: Layout mapped the scratch area (batch tables).
	scratchMapped bool
	windowGone    bool   // Finalize unmapped the window
	stubOff       uint64 // the puppet's syscall instruction offset from win.base
	// protFix lists private VMAs laid out writable for FillPages, to
	// get their dumped protection back in Finalize.
	protFix  []vmaProt
	writable map[uint64]bool // VMA start → mapped writable

	pagesRestored uint64
	// keep names the VMAs (by start) already mapped in the task, which
	// mapVMAs leaves alone (a prepared task, overlap_linux.go).
	keep map[uint64]bool
}

// New reads and checks every image of the process in o.ImagesDir, and
// checks that its PID and TIDs are free and allowed. Nothing is started.
func New(o Options, scripts *actions.Scripts) (*Restorer, error) {
	return newContext(context.Background(), o, scripts)
}

// newContext is New logging to ctx's logger (logging.FromContext).
func newContext(ctx context.Context, o Options, scripts *actions.Scripts) (*Restorer, error) {
	log := logging.FromContext(ctx)
	if err := checkNetns(o); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	nl, err := adoptNetLock(o)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	r, err := newRestorer(o, scripts, log, nil)
	if err != nil {
		if nl != nil {
			keepNetLock(nl, log, 0)
		}
		return nil, err
	}
	r.netLock = nl
	return r, nil
}

// newRestorer reads the images; adopted are PIDs and TIDs already made
// for them (Pending), not checked as free.
func newRestorer(o Options, scripts *actions.Scripts, log *logging.Logger, adopted []int) (*Restorer, error) {
	start := time.Now()
	d, err := images.Open(o.ImagesDir, false)
	if err != nil {
		return nil, fmt.Errorf("restore: images dir: %w", err)
	}
	img, err := readImages(d)
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("restore: read images in %s: %w", o.ImagesDir, err)
	}
	if err := checkCPU(d, o.CPUCap); err != nil {
		d.Close()
		return nil, fmt.Errorf("restore: %w", err)
	}
	r := &Restorer{o: o, scripts: scripts, log: log, dir: d, img: img,
		start: start, opened: map[model.ID]drivers.OpenedAt{}, shmAt: map[uint64]shmMapping{}, shmShared: map[uint64]bool{}, ghostAt: map[[2]uint64]shmMapping{}}
	users := map[uint64]int{}
	for _, ti := range img.tasks {
		if ti.mm == nil {
			continue
		}
		for _, v := range ti.mm.VMAs {
			if v.SharedAnon() {
				if p, ok := users[v.Shmid]; ok && p != ti.pid {
					r.shmShared[v.Shmid] = true
				}
				users[v.Shmid] = ti.pid
			}
		}
	}
	for i, ti := range img.tasks {
		t := &taskRun{Restorer: r, idx: i, img: ti, log: log.Task(ti.pid)}
		r.tasks = append(r.tasks, t)
	}
	r.root = r.tasks[0]
	r.countTables()
	if err := r.checkPids(adopted); err != nil {
		r.close()
		return nil, fmt.Errorf("restore: %w", err)
	}
	if r.validated, err = validateFiles(img, o); err != nil {
		r.close()
		return nil, fmt.Errorf("restore: %w", err)
	}
	return r, nil
}

// Restore runs every phase back to back from the images in o.ImagesDir.
// Unless o.Detach is set the caller then Waits for the task.
func Restore(o Options, scripts *actions.Scripts) (*Restorer, error) {
	return RestoreContext(context.Background(), o, scripts)
}

// RestoreContext is Restore that stops when ctx is done (godwit's SIGINT,
// SIGTERM, SIGHUP) until the task resumes: every task made so far is
// killed and reaped, as after any failed step.
func RestoreContext(ctx context.Context, o Options, scripts *actions.Scripts) (*Restorer, error) {
	r, err := newContext(ctx, o, scripts)
	if err != nil {
		return nil, err
	}
	if err := r.interrupted(ctx); err != nil {
		return nil, err
	}
	if err := scripts.Run(actions.PreRestore, 0); err != nil {
		r.close()
		return nil, fmt.Errorf("restore: %w", err)
	}
	r.log.Debugf("restore %d: images read and checked: %v", r.PID(), time.Since(r.start))
	steps := []struct {
		name string
		run  func() error
	}{
		{"", func() error { return r.interrupted(ctx) }},
		{"layout", r.Layout},
		{"fill", func() error { return r.fillAll(ctx) }},
		{"", func() error { return r.interrupted(ctx) }},
		{"lazy hand-off", r.lazyHandoff},
		{"finalize", r.Finalize},
		{"", func() error { return r.interrupted(ctx) }},
		{"resume", r.Resume},
	}
	for _, step := range steps {
		t := time.Now()
		if err := step.run(); err != nil {
			return nil, err
		}
		if step.name != "" {
			r.log.Debugf("restore %d: %s: %v", r.PID(), step.name, time.Since(t))
		}
	}
	if r.o.AutoDedup {
		// Only now: a failed restore keeps its images whole.
		if err := r.dedupRestored(); err != nil {
			r.log.Warnf("restore %d: --auto-dedup: %v", r.PID(), err)
		}
	}
	return r, nil
}

// checkCPU compares the dump's cpuinfo.img, when it has one (dump
// --cpu-cap), with this CPU under --cpu-cap (CRIU's default modes when the
// option is absent; "none" skips the check).
func checkCPU(d *images.Dir, capArg string) error {
	if !d.Exists(images.CpuinfoImg) {
		return nil
	}
	caps := cpuinfo.DefaultCaps
	if capArg != "" {
		var err error
		if caps, err = cpuinfo.ParseCaps(capArg); err != nil {
			return err
		}
	}
	return cpuinfo.Check(d, caps)
}

// PID is the restored root task's PID (the original one).
func (r *Restorer) PID() int { return r.img.pid }

// PIDs are the restored tasks' PIDs, parents before children.
func (r *Restorer) PIDs() []int {
	out := make([]int, len(r.tasks))
	for i, t := range r.tasks {
		out[i] = t.img.pid
	}
	return out
}

// fillAll writes every task's pages from the images.
func (r *Restorer) fillAll(ctx context.Context) error {
	if err := r.need(phaseLaidOut, "fill pages"); err != nil {
		return err
	}
	// Each task on its tracer's thread (as Layout), the tracers at once:
	// no task's pages depend on another's.
	t, err := r.eachTask(func(t *taskRun, _ *turns.Turns) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if t.img.pages != nil {
			src, err := t.privatePages()
			if err == nil {
				src = interruptibleSource(ctx, src)
				if t.smallFill() {
					err = t.fillBuffered(src, t.checkRun)
				} else {
					err = t.fillPages(src)
				}
			}
			if err != nil {
				return fmt.Errorf("fill pages: %w", err)
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		return t.fillShmem()
	})
	if err := r.interrupted(ctx); err != nil {
		return err
	}
	if err != nil {
		return r.fail(fmt.Sprintf("task %d", t.img.pid), err)
	}
	return nil
}

// TIDs are the root's thread ids of the images, leader first.
func (r *Restorer) TIDs() []int {
	out := make([]int, len(r.img.threads))
	for i, t := range r.img.threads {
		out[i] = t.Tid
	}
	return out
}

// checkPids refuses PIDs at or above pid_max and PIDs in use, waiting a
// bounded time for zombies to go.
func (r *Restorer) checkPids(adopted []int) error {
	max, err := puppet.PidMax()
	if err != nil {
		return err
	}
	self := os.Getpid()
	for _, ti := range r.img.tasks {
		ids := []int{ti.pid}
		for _, t := range ti.threads[min(1, len(ti.threads)):] {
			ids = append(ids, t.Tid)
		}
		for _, id := range ids {
			switch {
			case id >= max:
				return fmt.Errorf("pid %d: %w %d (raise /proc/sys/kernel/pid_max)", id, puppet.ErrPidMax, max)
			case id == self:
				return fmt.Errorf("pid %d is godwit itself: %w", id, ErrPidInUse)
			case id == 1:
				return fmt.Errorf("pid 1 cannot be restored")
			case slices.Contains(adopted, id):
				continue
			}
			if err := waitPidFree(id, zombieWait); err != nil {
				return err
			}
		}
	}
	return nil
}

// waitPidFree returns nil once /proc/pid is gone. A live task fails at
// once; a zombie (or a dying task) is waited for, up to limit.
func waitPidFree(pid int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		st, err := procfs.ReadStatus(pid)
		if err != nil {
			if _, serr := os.Stat("/proc/" + strconv.Itoa(pid)); serr != nil {
				return nil
			}
		} else if st.State != 'Z' && st.State != 'X' {
			return fmt.Errorf("pid %d: %w by %q (state %c)", pid, ErrPidInUse, st.Name, st.State)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pid %d: %w by a zombie not reaped after %v", pid, ErrPidInUse, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fail ends the restore after an error in step: the partial task is
// killed and reaped, and the returned error names the step.
func (r *Restorer) fail(step string, err error) error {
	err = fmt.Errorf("restore %d: %s: %w", r.img.pid, step, err)
	if r.phase == phaseFailed {
		return err
	}
	r.phase = phaseFailed
	r.err = err
	r.kill()
	r.close()
	return err
}

// kill kills every task made so far, by PID, children first, and waits
// (bounded) until each is gone: the root is our child (CLONE_PARENT) and
// reaped here, the others are reaped by their parent's death (init
// inherits and reaps them).
func (r *Restorer) kill() {
	var made []int
	for _, h := range r.helpers {
		if r.tr != nil {
			_ = h.p.Kill()
		}
		_ = unix.Kill(h.p.Pid, unix.SIGKILL)
		made = append(made, h.p.Pid)
	}
	r.helpers = nil
	for i := len(r.tasks) - 1; i >= 0; i-- {
		t := r.tasks[i]
		if t.task == nil {
			continue
		}
		pid := t.task.Pid
		made = append(made, pid)
		if r.tr != nil && r.phase != phaseResumed {
			_ = t.task.Kill() // kills the group, reaps the threads we trace
		}
		_ = unix.Kill(pid, unix.SIGKILL)
		t.task = nil
	}
	if len(made) == 0 {
		return
	}
	// Our children (the root, helpers) are reaped here; the others by
	// their parent's death (init inherits them).
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range made {
		for time.Now().Before(deadline) {
			var ws unix.WaitStatus
			wpid, err := unix.Wait4(pid, &ws, unix.WALL|unix.WNOHANG, nil)
			if err == unix.EINTR {
				continue
			}
			if wpid == pid {
				break
			}
			if err != nil {
				if _, serr := os.Stat("/proc/" + strconv.Itoa(pid)); serr != nil {
					break
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// close releases the tracer and the images, and keeps a network lock
// the restore did not get to remove (it failed) for a retry.
func (r *Restorer) close() {
	r.held.Close() // what a failed layout made for the tasks
	r.held = nil
	if l := r.netLock; l != nil {
		r.netLock = nil
		keepNetLock(l, r.log, r.img.pid)
	}
	r.closeWorkers()
	if r.tr != nil {
		r.tr.Close()
		r.tr = nil
	}
	if r.img != nil {
		r.img.close() // every task's
	}
	if r.dir != nil {
		r.dir.Close()
		r.dir = nil
	}
}

// Abort kills whatever was built so far; for callers that give up between
// phases (a migration that fails over).
func (r *Restorer) Abort() {
	if r.phase == phaseFailed {
		return
	}
	r.phase = phaseFailed
	r.err = errors.New("restore aborted")
	r.kill()
	r.close()
}

func (r *Restorer) need(p phase, what string) error {
	if r.phase == phaseFailed {
		return fmt.Errorf("restore %d: %s after a failed step: %w", r.img.pid, what, r.err)
	}
	if r.phase != p {
		return fmt.Errorf("restore %d: %s out of order (phase %d, want %d)", r.img.pid, what, r.phase, p)
	}
	return nil
}
