package drivers

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
	"godwit/internal/ptrace"
)

// The calls whose interruption leaves a restart block (x86-64): a thread
// stopped in one shows rax = -ERESTART_RESTARTBLOCK. The block (the
// call's deadline, in the kernel) does not survive a restore, so the
// restorer re-runs the call itself with its arguments (a relative
// timeout starts over, which a sleep's "at least" contract allows).
var restartBlockCalls = map[uint64]string{
	unix.SYS_POLL:            "poll",
	unix.SYS_NANOSLEEP:       "nanosleep",
	unix.SYS_FUTEX:           "futex",
	unix.SYS_CLOCK_NANOSLEEP: "clock_nanosleep",
}

// ErrUnknownRestart: a thread sits in restart_syscall of a call that
// cannot be identified.
var ErrUnknownRestart = errors.New("inside restart_syscall of a call godwit cannot identify (it would return EINTR after restore)")

// RestartedCall names the call a thread stopped with rax =
// -ERESTART_RESTARTBLOCK will restart. Usually orig_rax says; but a thread
// stopped a second time in the same call (after an earlier stop, a
// pre-dump or a dump that left it running) is inside restart_syscall,
// and orig_rax only says that. The call is then read from its code: the
// syscall instruction at rip-2, preceded by "mov $NR, %eax" (b8 imm32),
// which is how libc's and Go's wrappers of these calls load the number.
// Code that loads it otherwise is refused (ErrUnknownRestart).
func RestartedCall(pid int, regs *ptrace.Regs) (uint64, error) {
	if ptrace.Restart(regs) != ptrace.RestartBlock {
		return 0, errors.New("not stopped with a restart block")
	}
	if regs.Orig_rax != unix.SYS_RESTART_SYSCALL {
		return regs.Orig_rax, nil
	}
	f, err := os.Open(procfs.Path(pid, "mem"))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var code [7]byte
	if regs.Rip < uint64(len(code)) {
		return 0, ErrUnknownRestart
	}
	if _, err := f.ReadAt(code[:], int64(regs.Rip-uint64(len(code)))); err != nil {
		return 0, fmt.Errorf("%w: read code at %#x: %v", ErrUnknownRestart, regs.Rip-2, err)
	}
	if code[0] != 0xb8 || code[5] != 0x0f || code[6] != 0x05 {
		return 0, fmt.Errorf("%w: code before %#x is % x", ErrUnknownRestart, regs.Rip, code)
	}
	nr := uint64(le.Uint32(code[1:5]))
	if _, ok := restartBlockCalls[nr]; !ok {
		return 0, fmt.Errorf("%w: syscall %d before %#x does not restart with a block", ErrUnknownRestart, nr, regs.Rip)
	}
	return nr, nil
}
