package restorer

// From include/uapi/asm-generic/resource.h: RLIM_NLIMITS, the rlimits CRIU
// dumps.
const rlimNlimits = 16
