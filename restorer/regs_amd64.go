package restorer

import (
	core_x86 "github.com/checkpoint-restore/go-criu/v8/crit/images/core-x86"

	"godwit/internal/ptrace"
)

// gpRegs converts CRIU's user_x86_regs_entry back to user_regs_struct,
// verbatim: ax/orig_ax carry the syscall-restart state.
func gpRegs(g *core_x86.UserX86RegsEntry) ptrace.Regs {
	return ptrace.Regs{
		R15: g.GetR15(), R14: g.GetR14(), R13: g.GetR13(), R12: g.GetR12(),
		Rbp: g.GetBp(), Rbx: g.GetBx(), R11: g.GetR11(), R10: g.GetR10(),
		R9: g.GetR9(), R8: g.GetR8(), Rax: g.GetAx(), Rcx: g.GetCx(),
		Rdx: g.GetDx(), Rsi: g.GetSi(), Rdi: g.GetDi(), Orig_rax: g.GetOrigAx(),
		Rip: g.GetIp(), Cs: g.GetCs(), Eflags: g.GetFlags(), Rsp: g.GetSp(),
		Ss: g.GetSs(), Fs_base: g.GetFsBase(), Gs_base: g.GetGsBase(),
		Ds: g.GetDs(), Es: g.GetEs(), Fs: g.GetFs(), Gs: g.GetGs(),
	}
}

// negErrno is -e as a register value.
func negErrno(e int) uint64 { return uint64(-int64(e)) }
