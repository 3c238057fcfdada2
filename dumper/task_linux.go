package dumper

import (
	"godwit/internal/drivers"
	"godwit/internal/model"
	"godwit/internal/ptrace"
)

// Scratch layout: the in/out buffers of injected calls, in one private
// anonymous mapping made in the target and unmapped before it resumes.
// The drivers' buffers come first (drivers.ScratchDrivers bytes).
const (
	scratchPipe = drivers.ScratchDrivers // int[2]
	scratchIov  = 4096                   // struct iovec[maxBatchIovs]
	scratchSize = 4096 + maxBatchIovs*16
)

// siginfos copies ptrace's siginfo queue into the model's.
func siginfos(q []ptrace.Siginfo) []model.Siginfo {
	out := make([]model.Siginfo, len(q))
	for i := range q {
		out[i] = model.Siginfo(q[i])
	}
	return out
}
