package ptrace

// Kernel-internal syscall restart codes, from include/linux/errno.h. A task
// stopped inside an interrupted syscall shows rax = -code and orig_rax = the
// syscall number; the kernel turns them into a restart (rax = orig_rax,
// rip -= 2, or restart_syscall for ERESTART_RESTARTBLOCK) when it returns to
// user mode without running a signal handler.
const (
	ERESTARTSYS           = 512
	ERESTARTNOINTR        = 513
	ERESTARTNOHAND        = 514
	ERESTART_RESTARTBLOCK = 516
)

// syscallInsn is the x86-64 `syscall` instruction (0f 05); the kernel's
// restart logic backs rip up by its length.
var syscallInsn = [2]byte{0x0f, 0x05}

// SyscallInsnLen is the length of the syscall instruction.
const SyscallInsnLen = 2
