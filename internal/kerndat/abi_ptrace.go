package kerndat

// from include/uapi/linux/ptrace.h

// ptraceRseqConfiguration is struct ptrace_rseq_configuration.
type ptraceRseqConfiguration struct {
	RseqAbiPointer uint64
	RseqAbiSize    uint32
	Signature      uint32
	Flags          uint32
	Pad            uint32
}

// ptracePeeksiginfoArgs is struct ptrace_peeksiginfo_args.
type ptracePeeksiginfoArgs struct {
	Off   uint64
	Flags uint32
	Nr    int32
}
