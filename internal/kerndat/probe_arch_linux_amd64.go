package kerndat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
	"godwit/internal/ptrace"
)

// x86-64 parts of the probes.

// arch/x86/include/uapi/asm/prctl.h
const archMapVdso64 = 0x2003

// checkRegs reads a stopped tracee's general registers.
func checkRegs(t *ptrace.Tracer, pid int) error {
	regs, err := t.GetRegs(pid)
	if err != nil {
		return fmt.Errorf("PTRACE_GETREGSET NT_PRSTATUS: %w", err)
	}
	if regs.Rip == 0 || regs.Rsp == 0 {
		return fmt.Errorf("PTRACE_GETREGSET NT_PRSTATUS %d: rip %#x rsp %#x look empty", pid, regs.Rip, regs.Rsp)
	}
	return nil
}

// probePtraceXstate reads the NT_X86_XSTATE regset and checks the software
// bytes the kernel puts in the FXSAVE area.
func probePtraceXstate() error {
	return withSeized(0, func(t *ptrace.Tracer, pid int) error {
		buf, err := t.GetFPU(pid)
		if err != nil {
			return fmt.Errorf("PTRACE_GETREGSET NT_X86_XSTATE: %w", err)
		}
		n := len(buf)
		// 512 bytes of FXSAVE area, then the 64-byte XSAVE header.
		if n < 576 {
			return fmt.Errorf("xstate regset of %d is %d bytes, want >= 576", pid, n)
		}
		// For ptrace the kernel puts XCR0 (the user xfeatures) in the first
		// word of the FXSAVE sw_reserved area, at 464; XSTATE_BV, the
		// first word of the XSAVE header, must be a subset of it.
		xcr0 := binary.LittleEndian.Uint64(buf[464:])
		bv := binary.LittleEndian.Uint64(buf[512:])
		if xcr0&3 != 3 {
			return fmt.Errorf("xstate regset of %d: XCR0 %#x lacks x87/SSE", pid, xcr0)
		}
		if bv&^xcr0 != 0 {
			return fmt.Errorf("xstate regset of %d: XSTATE_BV %#x not within XCR0 %#x", pid, bv, xcr0)
		}
		return nil
	})
}

// probeCanMapVdso: a puppet unmaps its vDSO (every [vvar*] and [vdso]
// mapping) and maps a fresh one with arch_prctl(ARCH_MAP_VDSO_64) at the
// same place, all injected as restore does; its maps must show it there.
func probeCanMapVdso() error {
	return inPuppet(func(pid int, s *ptrace.Session, _ uint64) error {
		maps, err := procfs.ReadMaps(pid)
		if err != nil {
			return err
		}
		var special []procfs.Mapping
		var vdso procfs.Mapping
		for _, m := range maps {
			if m.Path == "[vdso]" || strings.HasPrefix(m.Path, "[vvar") {
				special = append(special, m)
			}
			if m.Path == "[vdso]" {
				vdso = m
			}
		}
		if vdso.Start == 0 {
			return fmt.Errorf("no [vdso] in /proc/%d/maps", pid)
		}
		lowest := special[0].Start
		for _, m := range special {
			if _, err := s.Syscall(unix.SYS_MUNMAP, m.Start, m.End-m.Start); err != nil {
				return fmt.Errorf("munmap %s in a puppet: %w", m.Path, err)
			}
		}
		if _, err := s.Syscall(unix.SYS_ARCH_PRCTL, archMapVdso64, lowest); err != nil {
			return fmt.Errorf("ARCH_MAP_VDSO_64 in a puppet: %w", err)
		}
		cm, err := procfs.ReadMaps(pid)
		if err != nil {
			return err
		}
		for _, m := range cm {
			if m.Path == "[vdso]" {
				if m.End-m.Start != vdso.End-vdso.Start {
					return fmt.Errorf("new [vdso] is %d bytes, old %d", m.End-m.Start, vdso.End-vdso.Start)
				}
				if m.Start < lowest {
					return fmt.Errorf("new [vdso] at %#x, below the requested %#x", m.Start, lowest)
				}
				return nil
			}
		}
		return errors.New("puppet has no [vdso] after ARCH_MAP_VDSO_64")
	})
}
