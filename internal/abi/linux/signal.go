package linux

// From include/uapi/asm-generic/signal.h, include/uapi/asm-generic/siginfo.h
// and include/uapi/asm-generic/signal-defs.h.

// NSig is _NSIG: signals are numbered 1..64.
const NSig = 64

// struct sigevent is 64 bytes: sigev_value (8), sigev_signo (4),
// sigev_notify (4), then a union whose first int is _tid when sigev_notify
// has SIGEV_THREAD_ID.
const (
	SigeventSize   = 64
	SigevThreadID  = 4
	SigevTidOffset = 16
)

// SiginfoSize is sizeof(siginfo_t) (SI_MAX_SIZE).
const SiginfoSize = 128

// sigaltstack(2) ss_flags.
const (
	SsOnstack = 1
	SsDisable = 2
)
