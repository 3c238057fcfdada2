package kerndat

// from include/uapi/linux/sched.h

// cloneArgs is struct clone_args (CLONE_ARGS_SIZE_VER2, 88 bytes).
type cloneArgs struct {
	Flags      uint64
	Pidfd      uint64
	ChildTID   uint64
	ParentTID  uint64
	ExitSignal uint64
	Stack      uint64
	StackSize  uint64
	TLS        uint64
	SetTID     uint64
	SetTIDSize uint64
	Cgroup     uint64
}
