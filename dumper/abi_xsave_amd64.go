package dumper

// XSAVE area layout (standard, non-compacted format, which is what
// PTRACE_GETREGSET NT_X86_XSTATE returns), from arch/x86/include/asm/fpu/types.h
// and arch/x86/include/uapi/asm/sigcontext.h. The component offsets are the
// architectural ones of the standard format (CPUID 0xD reports the same on
// every x86-64 CPU that has the component).
const (
	fxsaveSize        = 512 // legacy FXSAVE area
	xsaveHeaderOffset = 512 // xstate_bv, xcomp_bv, reserved
	swReservedOffset  = 464 // sw_reserved; for ptrace, XCR0 in its first 8 bytes

	// Component numbers (XFEATURE_*).
	xfeatureYMM      = 2
	xfeatureBNDREGS  = 3
	xfeatureBNDCSR   = 4
	xfeatureOpmask   = 5
	xfeatureZMMHi256 = 6
	xfeatureHi16ZMM  = 7
	xfeaturePKRU     = 9

	// Offsets and sizes of those components in the standard format.
	ymmhOffset, ymmhSize         = 576, 256
	bndregOffset, bndregSize     = 960, 64
	bndcsrOffset, bndcsrSize     = 1024, 64
	opmaskOffset, opmaskSize     = 1088, 64
	zmmUpperOffset, zmmUpperSize = 1152, 512
	hi16ZMMOffset, hi16ZMMSize   = 1664, 1024
	pkruOffset, pkruSize         = 2688, 8
)
