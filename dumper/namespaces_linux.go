package dumper

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
	"godwit/internal/nsstate"
	"godwit/internal/procfs"
)

// foreignNamespaces are the namespaces (besides the network, which
// treeNetns records, and the UTS and IPC ones, which carriedNamespaces
// carry) that the restore cannot give a task back: it makes every task in
// godwit's own. A task in another one would be restored with godwit's
// mounts, user ids, cgroup root, clock offsets or pids, and the restore
// would exit 0: so the dump refuses it. The *_for_children links count
// too: they are what the task's next child would be made in.
var foreignNamespaces = []string{"mnt", "user", "cgroup", "time", "time_for_children", "pid", "pid_for_children"}

// carriedNamespaces are the namespaces a tree may have of its own: the
// dump saves their state and the restore makes new ones with it. Every
// task of the tree must then be in the root's.
var carriedNamespaces = []string{"uts", "ipc"}

// nsKey identifies a namespace: its nsfs inode and device.
type nsKey struct{ dev, ino uint64 }

func nsOf(path string) (nsKey, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsKey{}, err
	}
	return nsKey{st.Dev, st.Ino}, nil
}

// ownNamespaces are the tree's own UTS and IPC namespaces, by kind
// ("uts", "ipc"): those of its root when not godwit's.
type ownNamespaces map[string]nsKey

// treeNamespaces refuses a tree with a live task in other namespaces than
// godwit's own, naming the task and the namespace, but for a UTS or IPC
// namespace of the root's shared by every task: those it returns. It runs
// right after the freeze, before any state is read: the tree resumes as
// it was.
func treeNamespaces(tree []*frozenTask) (ownNamespaces, error) {
	self := map[string]nsKey{}
	for _, ns := range slices.Concat(foreignNamespaces, carriedNamespaces) {
		k, err := nsOf("/proc/self/ns/" + ns)
		if err != nil {
			if os.IsNotExist(err) {
				continue // a kernel without that kind of namespace
			}
			return nil, fmt.Errorf("godwit's %s namespace: %w", ns, err)
		}
		self[ns] = k
	}
	// The root's carried namespaces are the tree's; the root is the
	// dumped pid, never a zombie.
	want := map[string]nsKey{}
	own := ownNamespaces{}
	root := tree[0].pid
	for _, ns := range carriedNamespaces {
		s, ok := self[ns]
		if !ok {
			continue
		}
		k, err := nsOf(procfs.Path(root, "ns/"+ns))
		if err != nil {
			return nil, fmt.Errorf("task %d: %s namespace: %w", root, ns, err)
		}
		want[ns] = k
		if k != s {
			own[ns] = k
		}
	}
	for _, ns := range foreignNamespaces {
		if k, ok := self[ns]; ok {
			want[ns] = k
		}
	}
	for _, t := range tree {
		if t.zombie {
			continue // no namespaces left; restored as a zombie
		}
		// Namespaces are per thread: a thread other than the leader can
		// unshare or setns on its own, and /proc/PID/ns shows only the
		// leader's.
		for _, tid := range taskThreads(t) {
			for _, ns := range slices.Concat(carriedNamespaces, foreignNamespaces) {
				w, ok := want[ns]
				if !ok {
					continue
				}
				got, err := nsOf(procfs.TaskPath(t.pid, tid, "ns/"+ns))
				if err != nil {
					return nil, fmt.Errorf("task %d thread %d: %s namespace: %w", t.pid, tid, ns, err)
				}
				if got == w {
					continue
				}
				if slices.Contains(carriedNamespaces, ns) {
					whose := "godwit's"
					if _, ok := own[ns]; ok {
						whose = fmt.Sprintf("the root's (task %d)", root)
					}
					if tid != t.pid {
						return nil, fmt.Errorf("task %d: thread %d is in another %s namespace than %s: a tree across %s namespaces is not supported", t.pid, tid, ns, whose, ns)
					}
					return nil, fmt.Errorf("task %d is in another %s namespace than %s: a tree across %s namespaces is not supported", t.pid, ns, whose, ns)
				}
				if tid != t.pid {
					return nil, fmt.Errorf("task %d: thread %d is in a %s namespace of its own (not godwit's): the restore would put it in godwit's; not supported", t.pid, tid, ns)
				}
				return nil, foreignNSError(t.pid, ns)
			}
		}
	}
	if err := outsideSharers(tree, own); err != nil {
		return nil, err
	}
	return own, nil
}

// outsideSharers refuses a tree whose own UTS or IPC namespace holds a
// task outside the tree, naming it: the restore makes a new namespace
// with the dumped state, so that task would be left behind with objects
// (semaphores, queues, segments) the tree goes on using elsewhere, and
// what it changed between the dump and the restore would be lost. Every
// thread counts: namespaces are per thread. Tasks of pid namespaces that
// godwit's /proc does not show cannot be seen.
func outsideSharers(tree []*frozenTask, own ownNamespaces) error {
	if len(own) == 0 {
		return nil
	}
	in := make(map[int]bool, len(tree)+1)
	for _, t := range tree {
		in[t.pid] = true
	}
	// godwit's own threads join the namespace only to read or restore
	// it, and may linger a moment after (osthread.Drop).
	in[os.Getpid()] = true
	procs, err := os.ReadDir(procfs.Root)
	if err != nil {
		return fmt.Errorf("list tasks: %w", err)
	}
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || in[pid] {
			continue
		}
		tasks, err := os.ReadDir(procfs.Path(pid, "task"))
		if err != nil {
			continue // gone meanwhile, or a zombie
		}
		for _, task := range tasks {
			tid, err := strconv.Atoi(task.Name())
			if err != nil {
				continue
			}
			for _, ns := range carriedNamespaces {
				w, ok := own[ns]
				if !ok {
					continue
				}
				// Unreadable: the task ended meanwhile (or is a zombie),
				// and holds no namespace.
				if k, err := nsOf(procfs.TaskPath(pid, tid, "ns/"+ns)); err == nil && k == w {
					if tid != pid {
						return fmt.Errorf("the tree's %s namespace is also used by thread %d of task %d, outside the tree: not supported (dump that task's tree)", ns, tid, pid)
					}
					return fmt.Errorf("the tree's %s namespace is also used by task %d, outside the tree: not supported (dump that task's tree)", ns, pid)
				}
			}
		}
	}
	return nil
}

// readNamespaces reads the state of the tree's own UTS and IPC
// namespaces through its root, frozen: nothing in the tree changes them.
// A SysV shm segment must be attached only by the tree's tasks, which are
// restored with their attaches; a task that attaches a segment of
// godwit's IPC namespace is refused.
func readNamespaces(tree []*frozenTask, own ownNamespaces) (*model.UTSNamespace, *model.IPCNamespace, error) {
	attaches := map[int32]uint64{}
	for _, t := range tree {
		if t.zombie {
			continue
		}
		maps, err := procfs.ReadMaps(t.pid)
		if err != nil {
			return nil, nil, fmt.Errorf("task %d: %w", t.pid, err)
		}
		for _, m := range maps {
			if !strings.HasPrefix(m.Path, "/SYSV") {
				continue
			}
			if _, ok := own["ipc"]; !ok {
				return nil, nil, fmt.Errorf("task %d maps SysV shared memory segment %d (%#x-%#x) of godwit's IPC namespace: not supported", t.pid, m.Inode, m.Start, m.End)
			}
			// The kernel counts each VMA as an attach.
			attaches[int32(m.Inode)]++
		}
	}
	root := tree[0].pid
	var uts *model.UTSNamespace
	var ipc *model.IPCNamespace
	if k, ok := own["uts"]; ok {
		u, err := nsstate.ReadUTS(root)
		if err != nil {
			return nil, nil, err
		}
		u.ID = uint32(k.ino)
		uts = &u
	}
	if k, ok := own["ipc"]; ok {
		ns, err := nsstate.ReadIPC(root, attaches)
		if err != nil {
			return nil, nil, err
		}
		ns.ID = uint32(k.ino)
		ipc = ns
	}
	return uts, ipc, nil
}

// taskThreads is the frozen task's threads, leader first.
func taskThreads(t *frozenTask) []int {
	if len(t.tids) == 0 {
		return []int{t.pid}
	}
	return t.tids
}

// foreignNSError says what the task's namespace is, and why it is refused.
func foreignNSError(pid int, ns string) error {
	switch ns {
	case "pid":
		if inner := innerPid(pid); inner == "1" {
			return fmt.Errorf("task %d is the init (pid 1) of a pid namespace of its own: restoring pid namespaces is not supported", pid)
		} else if inner != "" {
			return fmt.Errorf("task %d is pid %s in a pid namespace of its own: restoring pid namespaces is not supported", pid, inner)
		}
	case "pid_for_children", "time_for_children":
		return fmt.Errorf("task %d unshared a %s namespace for its children (%s): restoring it is not supported", pid, strings.TrimSuffix(ns, "_for_children"), ns)
	}
	return fmt.Errorf("task %d is in a %s namespace of its own (not godwit's): the restore would put it in godwit's; not supported", pid, ns)
}

// innerPid is the task's pid in its innermost pid namespace (the last
// NSpid field of /proc/PID/status), "" if unknown.
func innerPid(pid int) string {
	b, err := os.ReadFile(procfs.Path(pid, "status"))
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f, ok := strings.CutPrefix(l, "NSpid:"); ok {
			fs := strings.Fields(f)
			if len(fs) > 1 {
				return fs[len(fs)-1]
			}
		}
	}
	return ""
}
