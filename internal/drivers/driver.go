package drivers

import (
	"fmt"
	"sort"

	"godwit/internal/inject"
	"godwit/internal/logging"
	"godwit/internal/model"
	"godwit/internal/procfs"
)

// Driver is one kind of task state. It implements the collecting
// interfaces its kind needs (Collector, InjectedCollector, …) and the
// restoring ones; the engine calls each where it applies.
type Driver interface {
	// Name names the kind in errors and in other drivers' After.
	Name() string
	// After lists what must be restored before this kind: other
	// drivers, or the engine's phases (PhaseThreads, PhaseMM, …).
	After() []string
}

// The engine's own restore phases, which drivers order themselves
// against. The restorer runs them where they fall in Ordered.
const (
	PhaseThreads   = "threads"   // every thread exists, with its TID
	PhaseMM        = "mm"        // the puppet's code gone, every VMA at its dumped protection
	PhaseRegisters = "registers" // scratch window gone, registers set: last
)

// Dump is what a driver sees of the frozen task it collects from.
type Dump struct {
	Pid   int
	Task  *model.Task // being filled
	Files *Files      // the tree's file table
	Log   *logging.Logger
	// Smaps, if set, reads the task's VMAs in place of /proc/PID/smaps
	// (the dumper's, without its page walk: vmaflags.Smaps).
	Smaps func(pid int) ([]procfs.SmapsEntry, error)
}

// Restore is what a driver sees of the task it restores into.
type Restore struct {
	Tree *model.Tree
	Task *model.Task
	Log  *logging.Logger
	// Detach: godwit exits after the restore (a parent-death signal
	// would fire at once).
	Detach bool
	// ShellJob: godwit's session and group instead of the task's own.
	ShellJob bool
	// Validated are the files checked against the dump before the
	// restore started; each is verified again once opened in the task.
	Validated map[model.ID]FileIdentity
	// Opened is where each open file description of the tree was
	// first made, shared by every task's Restore: a task that shares
	// one takes it from there. nil: no sharing between tasks.
	Opened map[model.ID]OpenedAt
	// Inherit maps resources (InheritKey) to godwit's own descriptors
	// (--inherit-fd): the file of the tree that is that resource is
	// that descriptor instead of a new object.
	Inherit map[string]int
	// Held keeps, across the tasks of one restore, the objects godwit
	// made for a task not restored yet (the other end of a socketpair
	// whose ends are in two tasks). nil: a single task.
	Held *Held
	// TCPEstablished restores established TCP connections
	// (--tcp-established); TCPClose restores them closed (--tcp-close).
	TCPEstablished, TCPClose bool
}

// Collector reads process-wide state from outside the frozen task
// (/proc, ptrace), before any injection.
type Collector interface {
	Collect(d *Dump) error
}

// ThreadCollector reads one thread's state from outside.
type ThreadCollector interface {
	CollectThread(d *Dump, th *model.Thread) error
}

// InjectedCollector reads process-wide state only the task can tell,
// with injected calls in the leader. Scratch offsets 0 … ScratchDrivers
// of s are the drivers'.
type InjectedCollector interface {
	CollectInjected(d *Dump, s *inject.Session) error
}

// InjectedThreadCollector reads what only the thread itself can tell.
type InjectedThreadCollector interface {
	CollectThreadInjected(d *Dump, s *inject.Session, th *model.Thread) error
}

// TaskRestorer restores process-wide state with calls injected into the
// leader.
type TaskRestorer interface {
	Restore(r *Restore, s *inject.Session) error
}

// ThreadRestorer restores one thread's state with calls injected into
// that thread.
type ThreadRestorer interface {
	RestoreThread(r *Restore, s *inject.Session, th *model.Thread) error
}

// ScratchDrivers is the part of the dumper's scratch area (from offset
// 0) that drivers' injected calls use.
const ScratchDrivers = scratchEnd

// phase stands for an engine phase in the order.
type phase struct {
	name  string
	after []string
}

func (p phase) Name() string    { return p.name }
func (p phase) After() []string { return p.after }

// registry is every kind of state, in one place. A new kind is a new
// file with its driver, and a line here.
var registry = []Driver{
	phase{name: PhaseThreads},
	sessionDriver{},
	filesDriver{},
	cttyDriver{},
	fsDriver{},
	sigactionsDriver{},
	timersDriver{},
	miscDriver{},
	threadDriver{},
	loginuidDriver{},
	membarrierDriver{},
	amxDriver{},
	taskAttrsDriver{},
	phase{name: PhaseMM, after: []string{"session", "files", "ctty", "fs", "sigactions", "timers", "misc", "thread", "loginuid", "membarrier", "amx"}},
	memoryDriver{},
	guardDriver{},
	rlimitsDriver{},
	seccompDriver{},
	credsDriver{},
	signalsDriver{},
	dumpableDriver{},
	mdweDriver{},
	phase{name: PhaseRegisters, after: []string{"signals", "dumpable", "mdwe"}},
}

// Ordered returns every driver and engine phase in an order that
// satisfies every After: registration order where it does not matter.
func Ordered() ([]Driver, error) {
	return order(registry)
}

func order(ds []Driver) ([]Driver, error) {
	index := map[string]int{}
	for i, d := range ds {
		if _, dup := index[d.Name()]; dup {
			return nil, fmt.Errorf("drivers: %s registered twice", d.Name())
		}
		index[d.Name()] = i
	}
	done := map[string]bool{}
	var out []Driver
	for len(out) < len(ds) {
		progress := false
		for _, d := range ds {
			if done[d.Name()] {
				continue
			}
			ready := true
			for _, a := range d.After() {
				if _, ok := index[a]; !ok {
					return nil, fmt.Errorf("drivers: %s comes after %s, which is not registered", d.Name(), a)
				}
				ready = ready && done[a]
			}
			if ready {
				done[d.Name()] = true
				out = append(out, d)
				progress = true
				break // restart: keep registration order where free
			}
		}
		if !progress {
			var left []string
			for _, d := range ds {
				if !done[d.Name()] {
					left = append(left, d.Name())
				}
			}
			sort.Strings(left)
			return nil, fmt.Errorf("drivers: dependency cycle among %v", left)
		}
	}
	return out, nil
}
