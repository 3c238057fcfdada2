package dumper

// from include/uapi/asm-generic/resource.h: the number of rlimits
// (RLIM_NLIMITS), all of which CRIU dumps.
const rlimNlimits = 16
