package dumper

// From include/uapi/linux/resource.h: the number of rlimits CRIU dumps.
const rlimNlimits = 16

// From include/uapi/asm-generic/signal.h: signals 1..64.
const nSignals = 64

// sizeof(struct sigaction) as the kernel's rt_sigaction sees it on x86-64
// (include/linux/signal_types.h: handler, flags, restorer, mask).
const kernelSigactionSize = 32

// sizeof(stack_t) on x86-64: ss_sp, ss_flags (+pad), ss_size.
const stackTSize = 24

// sizeof(struct itimerspec) / struct itimerval: two 16-byte timespecs/timevals.
const itimerSize = 32
