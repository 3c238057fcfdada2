package xstate

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"

	core_x86 "github.com/checkpoint-restore/go-criu/v8/crit/images/core-x86"
	"google.golang.org/protobuf/proto"
)

func TestToCRIU(t *testing.T) {
	x := make([]byte, 2696)
	le := binary.LittleEndian
	le.PutUint16(x[0:], 0x37f)    // cwd
	le.PutUint32(x[24:], 0x1f80)  // mxcsr
	le.PutUint32(x[160:], 0xabcd) // xmm0 low word
	le.PutUint64(x[464:], 0x2e7)  // XCR0: x87 SSE AVX opmask ZMM_Hi256 Hi16_ZMM PKRU
	le.PutUint64(x[512:], 0x7)    // xstate_bv
	le.PutUint32(x[576:], 0x1234) // ymm0 high word
	le.PutUint32(x[2688:], 0x55)  // pkru
	fp, err := ToCRIU(x)
	if err != nil {
		t.Fatal(err)
	}
	if fp.GetCwd() != 0x37f || fp.GetMxcsr() != 0x1f80 || fp.XmmSpace[0] != 0xabcd || len(fp.StSpace) != 32 || len(fp.Padding) != 24 {
		t.Errorf("legacy area: %v", fp)
	}
	xs := fp.GetXsave()
	if xs.GetXstateBv() != 7 || len(xs.YmmhSpace) != 64 || xs.YmmhSpace[0] != 0x1234 {
		t.Errorf("xsave: %v", xs)
	}
	if len(xs.OpmaskReg) != 8 || len(xs.ZmmUpper) != 64 || len(xs.Hi16Zmm) != 128 || len(xs.Pkru) != 2 || xs.Pkru[0] != 0x55 {
		t.Errorf("AVX-512/PKRU components: %d %d %d %v", len(xs.OpmaskReg), len(xs.ZmmUpper), len(xs.Hi16Zmm), xs.Pkru)
	}
	if len(xs.BndregState) != 0 {
		t.Error("MPX state without its XCR0 bit")
	}
	if _, err := ToCRIU(x[:100]); err == nil {
		t.Error("short buffer accepted")
	}
}

func FuzzToCRIU(f *testing.F) {
	f.Add(make([]byte, 512))
	f.Add(make([]byte, 2696))
	f.Fuzz(func(t *testing.T, x []byte) {
		_, _ = ToCRIU(x)
	})
}

// FuzzFromCRIU: any fpregs entry gives an error or a buffer of the
// base's size, never a panic.
func FuzzFromCRIU(f *testing.F) {
	f.Add([]byte{1, 2, 3}, uint64(7), 64, 16)
	f.Fuzz(func(t *testing.T, words []byte, bv uint64, ymm, zmm int) {
		w32 := func(n int) []uint32 {
			n = min(max(n, 0), 300)
			out := make([]uint32, n)
			for i := range out {
				if len(words) > 0 {
					out[i] = uint32(words[i%len(words)])
				}
			}
			return out
		}
		fp := &core_x86.UserX86FpregsEntry{StSpace: w32(len(words)), XmmSpace: w32(ymm),
			Xsave: &core_x86.UserX86XsaveEntry{XstateBv: proto.Uint64(bv), YmmhSpace: w32(ymm), Pkru: w32(zmm % 4)}}
		for _, size := range []int{512, 576, 1088, 2696, 4096} {
			x, err := FromCRIU(make([]byte, size), fp)
			if err == nil && len(x) != size {
				t.Fatalf("size %d → %d", size, len(x))
			}
		}
	})
}

// TestRoundTrip: a raw buffer split into CRIU's fields and laid back over
// a base that holds only what the kernel fills itself (sw_reserved) comes
// back byte for byte, so the dumper and the restorer agree on the layout.
func TestRoundTrip(t *testing.T) {
	const size = pkruOffset + pkruSize
	const xcr0 = 1<<xfeatX87 | 1<<xfeatSSE | 1<<xfeatYMM | 1<<xfeatBndregs | 1<<xfeatBndcsr |
		1<<xfeatOpmask | 1<<xfeatZMMHi256 | 1<<xfeatHi16ZMM | 1<<xfeatPKRU
	rng := rand.New(rand.NewPCG(1, 2))
	raw := make([]byte, size)
	fill := func(off, n int) {
		for i := off; i < off+n; i++ {
			raw[i] = byte(rng.Uint32())
		}
	}
	fill(0, 416) // legacy area: control words, pointers, ST and XMM registers
	for _, c := range [][2]int{{ymmhOffset, ymmhSize}, {bndregOffset, bndregSize}, {bndcsrOffset, bndcsrSize},
		{opmaskOffset, opmaskSize}, {zmmUpperOffset, zmmUpperSize}, {hi16ZMMOffset, hi16ZMMSize}, {pkruOffset, pkruSize}} {
		fill(c[0], c[1])
	}
	le := binary.LittleEndian
	le.PutUint64(raw[swReservedOffset:], xcr0)
	le.PutUint64(raw[xsaveHeaderOffset:], xcr0) // xstate_bv: every component in use

	fp, err := ToCRIU(raw)
	if err != nil {
		t.Fatal(err)
	}
	base := make([]byte, size)
	copy(base[416:fxsaveSize], raw[416:fxsaveSize])
	back, err := FromCRIU(base, fp)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, raw) {
		for i := range raw {
			if back[i] != raw[i] {
				t.Fatalf("round trip differs first at byte %d: %#x, want %#x", i, back[i], raw[i])
			}
		}
	}

	// A component the image carries but this CPU's buffer cannot hold is
	// an error, not a silent loss.
	if _, err := FromCRIU(make([]byte, ymmhOffset+ymmhSize), fp); err == nil {
		t.Error("AVX-512 state restored into an AVX-only buffer")
	}
}
