package restorer

import (
	"godwit/internal/inject"
)

// session is a run of injected syscalls into one thread of the task, with
// the scratch area of godwit's window for their in/out buffers.
type session = inject.Session

func (r *taskRun) begin(tid int) (*session, error) {
	return inject.Begin(r.tr, r.img.pid, tid, r.win.scratch, scratchSize)
}

// errnoOf digs the errno out of an injected call's error.
var errnoOf = inject.Errno
