package xstate

import (
	"sync"

	"godwit/internal/cpuinfo"
)

// XSAVE area layout in the standard (non-compacted) format, which is what
// NT_X86_XSTATE carries, from arch/x86/include/asm/fpu/types.h and
// arch/x86/include/uapi/asm/sigcontext.h.
const (
	fxsaveSize        = 512 // legacy FXSAVE area
	xsaveHeaderOffset = 512 // xstate_bv, xcomp_bv, reserved
	xsaveHeaderSize   = 64
	swReservedOffset  = 464 // sw_reserved; for ptrace, XCR0 in its first 8 bytes

	// Component numbers (XFEATURE_*).
	xfeatX87      = 0
	xfeatSSE      = 1
	xfeatYMM      = 2
	xfeatBndregs  = 3
	xfeatBndcsr   = 4
	xfeatOpmask   = 5
	xfeatZMMHi256 = 6
	xfeatHi16ZMM  = 7
	xfeatPKRU     = 9
)

// Component sizes are architectural; where each component sits in the
// standard format is the CPU's to say (CPUID leaf 0xD, sub-leaf n: EBX the
// offset, EAX the size). Intel CPUs place them as in intelLayout; AMD ones
// have no MPX and pack the AVX-512 and PKRU components lower.
const (
	ymmhSize     = 256
	bndregSize   = 64
	bndcsrSize   = 64
	opmaskSize   = 64
	zmmUpperSize = 512
	hi16ZMMSize  = 1024
	pkruSize     = 8
)

// layout gives the offset of each component in a standard-format buffer
// (0: the CPU does not have it).
type layout [xfeatPKRU + 1]int

var intelLayout = layout{
	xfeatYMM: 576, xfeatBndregs: 960, xfeatBndcsr: 1024, xfeatOpmask: 1088,
	xfeatZMMHi256: 1152, xfeatHi16ZMM: 1664, xfeatPKRU: 2688,
}

// hostLayout reads this CPU's offsets from CPUID leaf 0xD.
var hostLayout = sync.OnceValue(func() *layout {
	var l layout
	if eax, _, _, _ := cpuinfo.CPUID(0, 0); eax < 0xd {
		return &l
	}
	for c := xfeatYMM; c <= xfeatPKRU; c++ {
		size, off, _, _ := cpuinfo.CPUID(0xd, uint32(c))
		if size != 0 {
			l[c] = int(off)
		}
	}
	return &l
})
