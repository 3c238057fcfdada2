package restorer

// From include/uapi/linux/capability.h: capset takes a header (version,
// pid) and two __user_cap_data_struct (effective, permitted, inheritable).
const (
	linuxCapabilityVersion3 = 0x20080522
	capLastCapProbe         = 63
)

// From include/uapi/linux/securebits.h.
const secbitKeepCaps = 1 << 4
