package dumper

import (
	"fmt"

	"godwit/internal/images"
	"godwit/internal/netnsid"
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
		id, err := netnsid.OfTask(t.pid)
		if err != nil {
			return nil, fmt.Errorf("task %d: %w", t.pid, err)
		}
		if i == 0 {
			root = id
		} else if id != root {
			return nil, fmt.Errorf("task %d is in network namespace %s, the root %d in %s: a tree across network namespaces is not supported", t.pid, id, tree[0].pid, root)
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
