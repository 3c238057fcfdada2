package dumper

import (
	"godwit/internal/drivers"
	"godwit/internal/model"
	"godwit/internal/ptrace"
)

// Scratch layout: the in/out buffers of injected calls, in one private
// anonymous mapping made in the target and unmapped before it resumes.
// The drivers' buffers come first (drivers.ScratchDrivers bytes); the
// tables of batched calls and, in the last page, made executable, the
// batch runner (ptrace.BatchCode) end it.
const (
	scratchPipe   = drivers.ScratchDrivers // int[2]
	scratchIov    = 4096                   // struct iovec[maxBatchIovs]
	scratchTable  = scratchIov + maxBatchIovs*16
	scratchRunner = scratchTable + 8192
	scratchSize   = scratchRunner + 4096
)

// siginfos copies ptrace's siginfo queue into the model's.
func siginfos(q []ptrace.Siginfo) []model.Siginfo {
	out := make([]model.Siginfo, len(q))
	for i := range q {
		out[i] = model.Siginfo(q[i])
	}
	return out
}
