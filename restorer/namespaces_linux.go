package restorer

import (
	"slices"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
	"godwit/internal/nsstate"
)

// namespaceFlags are the clone flags that make the tree's root in new
// UTS and IPC namespaces, when the dump had namespaces of its own and
// godwit did not join one of that kind (joined: --join-ns) for the tree;
// every other task is made in its parent's, so in the root's.
func namespaceFlags(t *model.Tree, joined []string) uint64 {
	var f uint64
	if t.UTS != nil && !slices.Contains(joined, "uts") {
		f |= unix.CLONE_NEWUTS
	}
	if t.IPC != nil && !slices.Contains(joined, "ipc") {
		f |= unix.CLONE_NEWIPC
	}
	return f
}

// restoreNamespaces gives the new namespaces of the root (pid) their
// dumped state, before any task of the tree runs.
func restoreNamespaces(t *model.Tree, joined []string, pid int) error {
	f := namespaceFlags(t, joined)
	if f&unix.CLONE_NEWUTS != 0 {
		if err := nsstate.RestoreUTS(pid, t.UTS); err != nil {
			return err
		}
	}
	if f&unix.CLONE_NEWIPC != 0 {
		if err := nsstate.RestoreIPC(pid, t.IPC); err != nil {
			return err
		}
	} else if t.IPC != nil {
		// Joined: the tree uses the objects there by id.
		if err := nsstate.CheckJoinedIPC(pid, t.IPC); err != nil {
			return err
		}
	}
	return nil
}
