package restorer

import (
	"golang.org/x/sys/unix"

	"godwit/internal/model"
	"godwit/internal/nsstate"
)

// namespaceFlags are the clone flags that make the tree's root in new
// UTS and IPC namespaces, when the dump had namespaces of its own; every
// other task is made in its parent's, so in the root's.
func namespaceFlags(t *model.Tree) uint64 {
	var f uint64
	if t.UTS != nil {
		f |= unix.CLONE_NEWUTS
	}
	if t.IPC != nil {
		f |= unix.CLONE_NEWIPC
	}
	return f
}

// restoreNamespaces gives the new namespaces of the root (pid) their
// dumped state, before any task of the tree runs.
func restoreNamespaces(t *model.Tree, pid int) error {
	if t.UTS != nil {
		if err := nsstate.RestoreUTS(pid, t.UTS); err != nil {
			return err
		}
	}
	if t.IPC != nil {
		if err := nsstate.RestoreIPC(pid, t.IPC); err != nil {
			return err
		}
	}
	return nil
}
