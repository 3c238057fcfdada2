package restorer

// From include/uapi/asm-generic/siginfo.h and signal.h. Other structures
// are laid out in place by the code that passes them: the kernel's struct
// sigaction (include/linux/signal_types.h: handler, flags, restorer, mask,
// 8 bytes each) and stack_t (ss_sp, ss_flags padded to 8, ss_size).
const (
	// sigevent is 64 bytes: sigev_value (8), sigev_signo (4),
	// sigev_notify (4), then the union whose first int is _tid for
	// SIGEV_THREAD_ID.
	sigeventSize   = 64
	sigevThreadID  = 4
	sigevTidOffset = 16
	siginfoSize    = 128

	// sigaltstack flags.
	ssOnstack = 1
	ssDisable = 2

	// nSignals is _NSIG.
	nSignals = 64
)
