//go:build linux && !amd64

package kerndat

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// godwit's register, xstate and vDSO handling is written for x86-64.

func checkRegs(pid int) error {
	var regs unix.PtraceRegs
	if err := unix.PtraceGetRegs(pid, &regs); err != nil {
		return fmt.Errorf("PTRACE_GETREGS %d: %w", pid, err)
	}
	return nil
}

func probePtraceXstate() error {
	return fmt.Errorf("the x86 xstate regset does not exist on %s", runtime.GOARCH)
}

func probeCanMapVdso() error {
	return fmt.Errorf("ARCH_MAP_VDSO is x86-only; godwit does not support %s", runtime.GOARCH)
}
