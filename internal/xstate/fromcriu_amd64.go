package xstate

import (
	"encoding/binary"
	"fmt"

	core_x86 "github.com/checkpoint-restore/go-criu/v8/crit/images/core-x86"
)

// FromCRIU lays CRIU's fpregs over base, an NT_X86_XSTATE buffer of
// the thread to restore (which gives the kernel's size and layout).
// Components the image does not carry are put in their init state by
// clearing their xstate_bv bits.
func FromCRIU(base []byte, fp *core_x86.UserX86FpregsEntry) ([]byte, error) {
	return fromCRIU(base, fp, hostLayout())
}

func fromCRIU(base []byte, fp *core_x86.UserX86FpregsEntry, l *layout) ([]byte, error) {
	if len(base) < fxsaveSize {
		return nil, fmt.Errorf("xstate buffer of %d bytes", len(base))
	}
	x := append([]byte(nil), base...)
	le := binary.LittleEndian
	le.PutUint16(x[0:], uint16(fp.GetCwd()))
	le.PutUint16(x[2:], uint16(fp.GetSwd()))
	// The abridged tag word is one byte; FXSAVE stores it in the low byte.
	le.PutUint16(x[4:], uint16(fp.GetTwd()))
	le.PutUint16(x[6:], uint16(fp.GetFop()))
	le.PutUint64(x[8:], fp.GetRip())
	le.PutUint64(x[16:], fp.GetRdp())
	le.PutUint32(x[24:], fp.GetMxcsr())
	le.PutUint32(x[28:], fp.GetMxcsrMask())
	put32 := func(off int, v []uint32, max int) error {
		if len(v) > max {
			return fmt.Errorf("fpregs: %d words where %d fit", len(v), max)
		}
		for i, w := range v {
			le.PutUint32(x[off+4*i:], w)
		}
		return nil
	}
	put64 := func(off int, v []uint64, max int) error {
		if len(v) > max {
			return fmt.Errorf("fpregs: %d words where %d fit", len(v), max)
		}
		for i, w := range v {
			le.PutUint64(x[off+8*i:], w)
		}
		return nil
	}
	if err := put32(32, fp.GetStSpace(), 32); err != nil {
		return nil, err
	}
	if err := put32(160, fp.GetXmmSpace(), 64); err != nil {
		return nil, err
	}
	if len(x) < xsaveHeaderOffset+xsaveHeaderSize {
		return x, nil // FXSAVE-only machine
	}
	bv := uint64(1<<xfeatX87 | 1<<xfeatSSE)
	xs := fp.GetXsave()
	if xs != nil {
		comps := []struct {
			bit, off, size int
			u32            []uint32
			u64            []uint64
		}{
			{xfeatYMM, l[xfeatYMM], ymmhSize, xs.GetYmmhSpace(), nil},
			{xfeatBndregs, l[xfeatBndregs], bndregSize, nil, xs.GetBndregState()},
			{xfeatBndcsr, l[xfeatBndcsr], bndcsrSize, nil, xs.GetBndcsrState()},
			{xfeatOpmask, l[xfeatOpmask], opmaskSize, nil, xs.GetOpmaskReg()},
			{xfeatZMMHi256, l[xfeatZMMHi256], zmmUpperSize, nil, xs.GetZmmUpper()},
			{xfeatHi16ZMM, l[xfeatHi16ZMM], hi16ZMMSize, nil, xs.GetHi16Zmm()},
			{xfeatPKRU, l[xfeatPKRU], pkruSize, xs.GetPkru(), nil},
		}
		want := xs.GetXstateBv()
		for _, c := range comps {
			if len(c.u32) == 0 && len(c.u64) == 0 {
				continue
			}
			if c.off == 0 || len(x) < c.off+c.size {
				if want&(1<<c.bit) != 0 {
					return nil, fmt.Errorf("fpregs: xfeature %d in the image, not on this CPU", c.bit)
				}
				continue
			}
			var err error
			if c.u32 != nil {
				err = put32(c.off, c.u32, c.size/4)
			} else {
				err = put64(c.off, c.u64, c.size/8)
			}
			if err != nil {
				return nil, err
			}
			bv |= 1 << c.bit
		}
		bv &= want | 1<<xfeatX87 | 1<<xfeatSSE
	}
	le.PutUint64(x[xsaveHeaderOffset:], bv)
	le.PutUint64(x[xsaveHeaderOffset+8:], 0) // xcomp_bv: standard format
	return x, nil
}
