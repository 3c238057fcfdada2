package linux

// From include/uapi/asm-generic/resource.h.

// RlimNlimits is RLIM_NLIMITS, the number of rlimits (all of which CRIU
// dumps and restores).
const RlimNlimits = 16
