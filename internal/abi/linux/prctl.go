package linux

// From include/uapi/linux/prctl.h.

// PrctlMmMap is struct prctl_mm_map, the argument of
// prctl(PR_SET_MM, PR_SET_MM_MAP).
type PrctlMmMap struct {
	StartCode  uint64
	EndCode    uint64
	StartData  uint64
	EndData    uint64
	StartBrk   uint64
	Brk        uint64
	StartStack uint64
	ArgStart   uint64
	ArgEnd     uint64
	EnvStart   uint64
	EnvEnd     uint64
	Auxv       uint64 // __u64 *auxv
	AuxvSize   uint32
	ExeFd      uint32
}

// SizeofPrctlMmMap is sizeof(struct prctl_mm_map) on 64-bit, what
// PR_SET_MM_MAP_SIZE reports.
const SizeofPrctlMmMap = 104
