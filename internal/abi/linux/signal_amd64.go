package linux

// From include/linux/signal_types.h and arch/x86/include/uapi/asm/signal.h,
// as x86-64 lays them out.

// KernelSigactionSize is sizeof(struct sigaction) as rt_sigaction(2)
// reads and writes it: handler, flags, restorer, mask (8 bytes each).
const KernelSigactionSize = 32

// StackTSize is sizeof(stack_t): ss_sp, ss_flags (padded to 8), ss_size.
const StackTSize = 24
