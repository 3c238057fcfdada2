package puppet

// cloneArgs is struct clone_args of include/uapi/linux/sched.h, version 2
// (CLONE_ARGS_SIZE_VER2 = 88 bytes, with set_tid and cgroup).
type cloneArgs struct {
	Flags      uint64
	Pidfd      uint64
	ChildTid   uint64
	ParentTid  uint64
	ExitSignal uint64
	Stack      uint64
	StackSize  uint64
	TLS        uint64
	SetTid     uint64 // pointer to pid_t[SetTidSize]; [0] is the PID in the innermost namespace
	SetTidSize uint64
	Cgroup     uint64
}

const cloneArgsSize = 88
