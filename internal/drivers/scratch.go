package drivers

import "encoding/binary"

// Scratch layout of the drivers' injected calls on the dump side: their
// in/out buffers, in the scratch mapping the dumper makes in the target
// (from offset 0; the dumper's own buffers start at ScratchDrivers).
const (
	scratchSigact  = 0    // 64 × struct sigaction
	scratchItimer  = 2048 // 3 × struct itimerval
	scratchTidAddr = 2176 // int * (PR_GET_TID_ADDRESS)
	scratchSas     = 2192 // stack_t
	scratchPdeath  = 2224 // int
	scratchReaper  = 2232 // int
	scratchTimer   = 2256 // struct itimerspec
	scratchRlimit  = 2304 // struct rlimit64
	scratchXcomp   = 2320 // u64 (ARCH_GET_XCOMP_PERM)
	scratchTSC     = 2328 // int (PR_GET_TSC)
	scratchEnd     = 2336
)

var le = binary.LittleEndian

// le64 appends v little-endian.
func le64(b []byte, v uint64) []byte { return binary.LittleEndian.AppendUint64(b, v) }
