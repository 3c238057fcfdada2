package kerndat

// from include/uapi/linux/prctl.h

// prctlMMMap is struct prctl_mm_map (104 bytes on 64-bit).
type prctlMMMap struct {
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
