package dumper

import (
	"fmt"

	"godwit/internal/images"
	"godwit/internal/netnsid"
	"godwit/internal/procfs"
)

// treeNetns is the record of the frozen tree's network namespace when it
// is not godwit's (nil otherwise), for the restore to check
// (netnsid.Record). godwit restores every task into one namespace: a
// task in another namespace than the root's is refused, by name.
func treeNetns(tree []*frozenTask) (*netnsid.Record, error) {
	self, err := netnsid.Self()
	if err != nil {
		return nil, err
	}
	var root netnsid.ID
	for i, t := range tree {
		if t.zombie {
			continue // no namespace left; it is restored as a zombie
		}
		// Per thread: a non-leader thread can unshare or setns its
		// own network namespace, which /proc/PID/ns/net does not show.
		for _, tid := range taskThreads(t) {
			id, err := netnsid.Of(procfs.TaskPath(t.pid, tid, "ns/net"))
			if err != nil {
				return nil, fmt.Errorf("task %d thread %d: %w", t.pid, tid, err)
			}
			switch {
			case i == 0 && tid == t.pid:
				root = id
			case id == root:
			case tid != t.pid:
				return nil, fmt.Errorf("task %d: thread %d is in network namespace %s, the root %d in %s: threads across network namespaces are not supported", t.pid, tid, id, tree[0].pid, root)
			default:
				return nil, fmt.Errorf("task %d is in network namespace %s, the root %d in %s: a tree across network namespaces is not supported", t.pid, id, tree[0].pid, root)
			}
		}
	}
	if root == self || root.Ino == 0 {
		return nil, nil
	}
	return &netnsid.Record{Tree: root, Godwit: self}, nil
}

// writeNetnsRecord records the tree's own network namespace.
func writeNetnsRecord(d *images.Dir, r *netnsid.Record) error {
	if r == nil {
		return nil
	}
	return writeFile(d, netnsid.RecordFile, r.Marshal())
}
