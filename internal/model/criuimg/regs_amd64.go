package criuimg

import (
	core_x86 "github.com/checkpoint-restore/go-criu/v8/crit/images/core-x86"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// gpregs converts user_regs_struct to CRIU's user_x86_regs_entry. A
// thread frozen inside an interrupted syscall (rax = -ERESTART*) is
// written as CRIU's dump writes it, with the restart applied: rip back on
// the syscall instruction and rax the call to make, because CRIU's
// restore returns to user space with the registers as they are (it would
// hand -ERESTART* to the program: a sleep restored so exits at once).
// The call is orig_rax; for a restart block the interrupted call itself,
// which godwit's restore also re-runs; inside restart_syscall (a thread
// stopped before, by a pre-dump say) it is restartNr, the call the dump
// read from the thread's code (0: unknown, left as frozen; the dump
// refuses that). (CRIU's own dump writes -EINTR for a restart block: the
// call returns early, which a program without a signal handler never
// sees.) With a signal pending (signals) the kernel would choose between
// restart and EINTR by the handler it runs, which only the frozen
// registers let it do: the core then has what CRIU's dump writes, the
// restart, or -EINTR for a restart block, and godwit's restore takes the
// frozen registers from RestartImg. It reports whether it applied a
// restart: the frozen registers then go to RestartImg.
func gpregs(r *unix.PtraceRegs, signals bool, restartNr uint64) (*core_x86.UserX86RegsEntry, bool) {
	c, applied := applyRestart(r, signals, restartNr)
	r = &c
	u := proto.Uint64
	return &core_x86.UserX86RegsEntry{
		R15: u(r.R15), R14: u(r.R14), R13: u(r.R13), R12: u(r.R12),
		Bp: u(r.Rbp), Bx: u(r.Rbx), R11: u(r.R11), R10: u(r.R10),
		R9: u(r.R9), R8: u(r.R8), Ax: u(r.Rax), Cx: u(r.Rcx),
		Dx: u(r.Rdx), Si: u(r.Rsi), Di: u(r.Rdi), OrigAx: u(r.Orig_rax),
		Ip: u(r.Rip), Cs: u(r.Cs), Flags: u(r.Eflags), Sp: u(r.Rsp),
		Ss: u(r.Ss), FsBase: u(r.Fs_base), GsBase: u(r.Gs_base),
		Ds: u(r.Ds), Es: u(r.Es), Fs: u(r.Fs), Gs: u(r.Gs),
		Mode: core_x86.UserX86RegsMode_NATIVE.Enum(),
	}, applied
}

// sysRestartSyscall is restart_syscall(2)'s number.
const sysRestartSyscall = unix.SYS_RESTART_SYSCALL

// ptraceRegs is gpregs backwards.
func ptraceRegs(g *core_x86.UserX86RegsEntry) unix.PtraceRegs {
	return unix.PtraceRegs{
		R15: g.GetR15(), R14: g.GetR14(), R13: g.GetR13(), R12: g.GetR12(),
		Rbp: g.GetBp(), Rbx: g.GetBx(), R11: g.GetR11(), R10: g.GetR10(),
		R9: g.GetR9(), R8: g.GetR8(), Rax: g.GetAx(), Rcx: g.GetCx(),
		Rdx: g.GetDx(), Rsi: g.GetSi(), Rdi: g.GetDi(), Orig_rax: g.GetOrigAx(),
		Rip: g.GetIp(), Cs: g.GetCs(), Eflags: g.GetFlags(), Rsp: g.GetSp(),
		Ss: g.GetSs(), Fs_base: g.GetFsBase(), Gs_base: g.GetGsBase(),
		Ds: g.GetDs(), Es: g.GetEs(), Fs: g.GetFs(), Gs: g.GetGs(),
	}
}
