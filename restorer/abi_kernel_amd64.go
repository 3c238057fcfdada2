package restorer

// Kernel structures laid out by hand for injected syscalls, x86-64.

// From include/uapi/linux/prctl.h: struct prctl_mm_map (104 bytes):
// start_code, end_code, start_data, end_data, start_brk, brk, start_stack,
// arg_start, arg_end, env_start, env_end (u64 each), auxv (pointer),
// auxv_size (u32), exe_fd (u32).
const prctlMmMapSize = 104

// From include/uapi/linux/auxvec.h + arch: the kernel's saved_auxv holds at
// most AT_VECTOR_SIZE words (2*(AT_VECTOR_SIZE_ARCH 3 + AT_VECTOR_SIZE_BASE
// 22 + 1)); PR_SET_MM_MAP refuses a larger auxv.
const maxAuxvWords = 2 * (3 + 22 + 1)

// From include/linux/signal_types.h (the kernel's struct sigaction as
// rt_sigaction reads it on x86-64): handler, flags, restorer, mask.
const kernelSigactionSize = 32

// From include/uapi/asm-generic/signal.h: stack_t is ss_sp, ss_flags (int,
// padded), ss_size.
const stackTSize = 24

// From include/uapi/asm-generic/siginfo.h: sigevent is 64 bytes: sigev_value
// (8), sigev_signo (4), sigev_notify (4), then the union whose first int is
// _tid for SIGEV_THREAD_ID.
const (
	sigeventSize    = 64
	sigevThreadID   = 4
	sigevTidOffset  = 16
	siginfoSize     = 128
	itimerspecSize  = 32 // two struct timespec
	itimervalSize   = 32 // two struct timeval
	capUserDataSize = 12 // struct __user_cap_data_struct: effective, permitted, inheritable
)

// From include/uapi/linux/capability.h.
const (
	linuxCapabilityVersion3 = 0x20080522
	capLastCapProbe         = 63
)

// From include/uapi/linux/securebits.h.
const secbitKeepCaps = 1 << 4

// From include/uapi/linux/resource.h: the rlimits CRIU dumps.
const rlimNlimits = 16

// Number of signals (include/uapi/asm-generic/signal.h _NSIG).
const nSignals = 64

// From include/uapi/linux/signal.h: sigaltstack flags.
const (
	ssOnstack = 1
	ssDisable = 2
)
