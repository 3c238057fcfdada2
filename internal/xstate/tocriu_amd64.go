package xstate

import (
	"encoding/binary"
	"fmt"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/core-x86"
	"google.golang.org/protobuf/proto"
)

// ToCRIU splits a raw NT_X86_XSTATE buffer into CRIU's
// user_x86_fpregs_entry: the FXSAVE fields, then the xsave extension with
// every component the task's xfeatures (the sw_reserved bytes the kernel
// fills) enable and the buffer holds.
func ToCRIU(x []byte) (*core_x86.UserX86FpregsEntry, error) {
	return toCRIU(x, hostLayout())
}

func toCRIU(x []byte, l *layout) (*core_x86.UserX86FpregsEntry, error) {
	if len(x) < fxsaveSize {
		return nil, fmt.Errorf("xstate: %d bytes, want at least %d", len(x), fxsaveSize)
	}
	le := binary.LittleEndian
	u32s := func(off, n int) []uint32 {
		out := make([]uint32, n)
		for i := range out {
			out[i] = le.Uint32(x[off+4*i:])
		}
		return out
	}
	u64s := func(off, n int) []uint64 {
		out := make([]uint64, n)
		for i := range out {
			out[i] = le.Uint64(x[off+8*i:])
		}
		return out
	}
	fp := &core_x86.UserX86FpregsEntry{
		Cwd:       proto.Uint32(uint32(le.Uint16(x[0:]))),
		Swd:       proto.Uint32(uint32(le.Uint16(x[2:]))),
		Twd:       proto.Uint32(uint32(le.Uint16(x[4:]))),
		Fop:       proto.Uint32(uint32(le.Uint16(x[6:]))),
		Rip:       proto.Uint64(le.Uint64(x[8:])),
		Rdp:       proto.Uint64(le.Uint64(x[16:])),
		Mxcsr:     proto.Uint32(le.Uint32(x[24:])),
		MxcsrMask: proto.Uint32(le.Uint32(x[28:])),
		StSpace:   u32s(32, 32),
		XmmSpace:  u32s(160, 64),
		Padding:   u32s(416, 24),
	}
	if len(x) < xsaveHeaderOffset+64 {
		return fp, nil // FXSAVE only
	}
	// For ptrace the kernel stores XCR0 (the enabled xfeatures) in the
	// first 8 software-reserved bytes (arch/x86/include/asm/user.h,
	// USER_XSTATE_XCR0_WORD), not the signal frame's _fpx_sw_bytes.
	features := le.Uint64(x[swReservedOffset:])
	xs := &core_x86.UserX86XsaveEntry{XstateBv: proto.Uint64(le.Uint64(x[xsaveHeaderOffset:]))}
	has := func(bit, size int) bool {
		return features&(1<<bit) != 0 && l[bit] != 0 && len(x) >= l[bit]+size
	}
	if has(xfeatYMM, ymmhSize) {
		xs.YmmhSpace = u32s(l[xfeatYMM], ymmhSize/4)
	}
	if has(xfeatBndregs, bndregSize) {
		xs.BndregState = u64s(l[xfeatBndregs], bndregSize/8)
	}
	if has(xfeatBndcsr, bndcsrSize) {
		xs.BndcsrState = u64s(l[xfeatBndcsr], bndcsrSize/8)
	}
	if has(xfeatOpmask, opmaskSize) {
		xs.OpmaskReg = u64s(l[xfeatOpmask], opmaskSize/8)
	}
	if has(xfeatZMMHi256, zmmUpperSize) {
		xs.ZmmUpper = u64s(l[xfeatZMMHi256], zmmUpperSize/8)
	}
	if has(xfeatHi16ZMM, hi16ZMMSize) {
		xs.Hi16Zmm = u64s(l[xfeatHi16ZMM], hi16ZMMSize/8)
	}
	if has(xfeatPKRU, pkruSize) {
		xs.Pkru = u32s(l[xfeatPKRU], pkruSize/4)
	}
	fp.Xsave = xs
	return fp, nil
}
