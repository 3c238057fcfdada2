package xstate

// XSAVE area layout in the standard (non-compacted) format, which is what
// NT_X86_XSTATE carries, from arch/x86/include/asm/fpu/types.h and
// arch/x86/include/uapi/asm/sigcontext.h. The component offsets are the
// architectural ones CPUID leaf 0xD reports for the standard format on
// every x86-64 CPU that has the component.
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

	// Offsets and sizes of those components in the standard format.
	ymmhOffset, ymmhSize         = 576, 256
	bndregOffset, bndregSize     = 960, 64
	bndcsrOffset, bndcsrSize     = 1024, 64
	opmaskOffset, opmaskSize     = 1088, 64
	zmmUpperOffset, zmmUpperSize = 1152, 512
	hi16ZMMOffset, hi16ZMMSize   = 1664, 1024
	pkruOffset, pkruSize         = 2688, 8
)
