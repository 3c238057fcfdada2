package dumper

// from include/uapi/asm-generic/signal.h and arch/x86/include/uapi/asm/signal.h

// nSignals is _NSIG: signals 1..64.
const nSignals = 64

// kernelSigactionSize is sizeof(struct sigaction) as rt_sigaction(2) reads
// and writes it on x86-64: handler, flags, restorer, mask.
const kernelSigactionSize = 32

// stackTSize is sizeof(stack_t): ss_sp, ss_flags (+pad), ss_size.
const stackTSize = 24
