package linux

// From include/uapi/linux/sched.h.

// CloneArgs is struct clone_args, version 2 (CLONE_ARGS_SIZE_VER2, with
// set_tid and cgroup), the argument of clone3(2).
type CloneArgs struct {
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

// CloneArgsSize is CLONE_ARGS_SIZE_VER2, sizeof(CloneArgs).
const CloneArgsSize = 88

// InitTimerSlack is init_task's timer_slack_ns (init/init_task.c, 50 µs):
// the timer slack, and the default slack PR_SET_TIMERSLACK 0 returns to,
// that a task has unless it or an ancestor set another.
const InitTimerSlack = 50000
