package xstate

import (
	"encoding/binary"
	"fmt"

	core_x86 "github.com/checkpoint-restore/go-criu/v8/crit/images/core-x86"

	"godwit/internal/cpuinfo"
)

// Standalone builds a standard-format XSAVE buffer holding exactly fp, in
// this CPU's layout, with no thread to lay it over: the raw form a
// checkpoint model keeps for state read from CRIU images. ToCRIU gives fp
// back from it, xstate_bv included. The FXSAVE padding (whose software-reserved bytes carry
// XCR0 for ptrace) is kept; the buffer is as large as this CPU's XSAVE
// area for XCR0 (CPUID 0xD.0 EBX), or FXSAVE's when fp has no xsave part.
func Standalone(fp *core_x86.UserX86FpregsEntry) ([]byte, error) {
	size := fxsaveSize
	if fp.GetXsave() != nil {
		size = xsaveHeaderOffset + xsaveHeaderSize
		if _, ebx, _, _ := cpuinfo.CPUID(0xd, 0); int(ebx) > size {
			size = int(ebx)
		}
	}
	pad := fp.GetPadding()
	if len(pad) > (fxsaveSize-416)/4 {
		return nil, fmt.Errorf("fpregs: %d padding words where %d fit", len(pad), (fxsaveSize-416)/4)
	}
	base := make([]byte, size)
	for i, w := range pad {
		binary.LittleEndian.PutUint32(base[416+4*i:], w)
	}
	x, err := FromCRIU(base, fp)
	if err != nil || fp.GetXsave() == nil {
		return x, err
	}
	// FromCRIU marks x87 and SSE in use, as a thread's own buffer would
	// have them; the image's xstate_bv says which were (a component
	// left out is in its init state).
	bv := binary.LittleEndian.Uint64(x[xsaveHeaderOffset:]) & fp.GetXsave().GetXstateBv()
	binary.LittleEndian.PutUint64(x[xsaveHeaderOffset:], bv)
	return x, nil
}
