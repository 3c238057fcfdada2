package dumper

import (
	"fmt"

	"golang.org/x/sys/unix"

	"godwit/internal/abi/linux"
	"godwit/internal/model"
)

// kobjAlloc gives tasks the ids of the kernel objects they use (mm, fd
// table, fs_struct, sighand), as CRIU does: a task's object is compared
// with kcmp to those of the tasks seen before; a new object gets the next
// id of its kind, counting from 1.
type kobjAlloc struct {
	seen [4][]kobjSeen // by kind, in kcmpKinds order
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
	for k, typ := range kcmpKinds {
		for _, s := range a.seen[k] {
			r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(pid), uintptr(s.pid), typ, 0, 0, 0)
			if e != 0 {
				return model.KobjIDs{}, fmt.Errorf("kcmp(%d, %d, %d): %w", pid, s.pid, typ, e)
			}
			if r == 0 {
				got[k] = s.id
				break
			}
		}
		if got[k] == 0 {
			got[k] = model.ID(len(a.seen[k]) + 1)
			a.seen[k] = append(a.seen[k], kobjSeen{pid: pid, id: got[k]})
		}
	}
	return model.KobjIDs{VM: got[0], Files: got[1], FS: got[2], Sighand: got[3], NS: nsIDs(pid)}, nil
}
