package ptrace

// Structures of include/uapi/linux/ptrace.h that golang.org/x/sys/unix does
// not define.

// peekSiginfoArgs is struct ptrace_peeksiginfo_args.
type peekSiginfoArgs struct {
	Off   uint64 // index of the first signal to copy
	Flags uint32 // PTRACE_PEEKSIGINFO_SHARED: the process-wide queue
	Nr    int32  // number of siginfos to copy
}

// RseqConfig is struct ptrace_rseq_configuration.
type RseqConfig struct {
	AbiPointer uint64 // address of the thread's struct rseq, 0 if none
	AbiSize    uint32
	Signature  uint32
	Flags      uint32
	Pad        uint32
}

// ptraceSyscallInfoSize is sizeof(struct ptrace_syscall_info): op, reserved,
// flags, arch (8), instruction_pointer (8), stack_pointer (8), and the
// largest union member (seccomp: nr, args[6], ret_data, reserved2 = 64).
const ptraceSyscallInfoSize = 88

// siginfoSize is sizeof(siginfo_t) (include/uapi/asm-generic/siginfo.h).
const siginfoSize = 128
