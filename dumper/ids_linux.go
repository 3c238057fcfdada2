package dumper

import (
	"fmt"
	"slices"

	"golang.org/x/sys/unix"

	"godwit/internal/abi/linux"
	"godwit/internal/model"
)

// kobjAlloc gives tasks the ids of the kernel objects they use (mm, fd
// table, fs_struct, sighand), as CRIU does: a new object gets the next id
// of its kind, counting from 1. The objects seen are kept sorted in the
// kernel's own order (kcmp), so a task's object is found by binary search:
// O(log n) kcmp calls per task, not one per task seen before.
type kobjAlloc struct {
	seen [4][]kobjSeen // by kind, in kcmpKinds order; sorted by kcmp
	n    [4]model.ID   // ids given out, by kind
}

type kobjSeen struct {
	pid int
	id  model.ID
}

// kcmpKinds are the kcmp types of VM, Files, FS and Sighand.
var kcmpKinds = [4]uintptr{linux.KcmpVM, linux.KcmpFiles, linux.KcmpFS, linux.KcmpSighand}

// ids returns pid's object ids, allocating those of objects not seen yet.
func (a *kobjAlloc) ids(pid int) (model.KobjIDs, error) {
	var got [4]model.ID
	for k := range kcmpKinds {
		id, err := a.id(k, pid)
		if err != nil {
			return model.KobjIDs{}, err
		}
		got[k] = id
	}
	return model.KobjIDs{VM: got[0], Files: got[1], FS: got[2], Sighand: got[3], NS: nsIDs(pid)}, nil
}

// id returns the id of pid's object of kind k (kcmpKinds' index),
// allocating it if not seen yet.
func (a *kobjAlloc) id(k, pid int) (model.ID, error) {
	typ, seen := kcmpKinds[k], a.seen[k]
	lo, hi := 0, len(seen)
	for lo < hi {
		m := (lo + hi) / 2
		r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(pid), uintptr(seen[m].pid), typ, 0, 0, 0)
		if e != 0 {
			return 0, fmt.Errorf("kcmp(%d, %d, %d): %w", pid, seen[m].pid, typ, e)
		}
		switch r {
		case 0:
			return seen[m].id, nil
		case 1:
			hi = m
		case 2:
			lo = m + 1
		default:
			return 0, fmt.Errorf("kcmp(%d, %d, %d): no order (%d)", pid, seen[m].pid, typ, r)
		}
	}
	a.n[k]++
	a.seen[k] = slices.Insert(seen, lo, kobjSeen{pid: pid, id: a.n[k]})
	return a.n[k], nil
}
