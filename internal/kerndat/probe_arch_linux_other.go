//go:build linux && !amd64

package kerndat

import (
	"fmt"
	"runtime"

	"godwit/internal/ptrace"
)

// godwit's register, xstate and vDSO handling is written for x86-64.

func checkRegs(t *ptrace.Tracer, pid int) error {
	if _, err := t.GetRegs(pid); err != nil {
		return fmt.Errorf("PTRACE_GETREGSET NT_PRSTATUS: %w", err)
	}
	return nil
}

func probePtraceXstate() error {
	return fmt.Errorf("the x86 xstate regset does not exist on %s", runtime.GOARCH)
}

func probeCanMapVdso() error {
	return fmt.Errorf("ARCH_MAP_VDSO is x86-only; godwit does not support %s", runtime.GOARCH)
}
