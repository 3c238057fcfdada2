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
	fp, err := toCRIU(x, &intelLayout)
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

// amdLayout is how a Zen 4 places the components (no MPX, AVX-512 and PKRU
// packed lower than on Intel), as its CPUID leaf 0xD reports.
var amdLayout = layout{xfeatYMM: 576, xfeatOpmask: 832, xfeatZMMHi256: 896, xfeatHi16ZMM: 1408, xfeatPKRU: 2432}

var compSizes = [xfeatPKRU + 1]int{xfeatYMM: ymmhSize, xfeatBndregs: bndregSize, xfeatBndcsr: bndcsrSize,
	xfeatOpmask: opmaskSize, xfeatZMMHi256: zmmUpperSize, xfeatHi16ZMM: hi16ZMMSize, xfeatPKRU: pkruSize}

// rawState makes a standard-format buffer in layout l with random register
// contents in every component l has, all of them in use.
func rawState(l *layout, seed uint64) []byte {
	size, xcr0 := fxsaveSize+xsaveHeaderSize, uint64(1<<xfeatX87|1<<xfeatSSE)
	for c, off := range l {
		if off != 0 {
			size = max(size, off+compSizes[c])
			xcr0 |= 1 << c
		}
	}
	rng := rand.New(rand.NewPCG(seed, 2))
	raw := make([]byte, size)
	fill := func(off, n int) {
		for i := off; i < off+n; i++ {
			raw[i] = byte(rng.Uint32())
		}
	}
	fill(0, 416) // legacy area: control words, pointers, ST and XMM registers
	for c, off := range l {
		if off != 0 {
			fill(off, compSizes[c])
		}
	}
	le := binary.LittleEndian
	le.PutUint64(raw[swReservedOffset:], xcr0)
	le.PutUint64(raw[xsaveHeaderOffset:], xcr0) // xstate_bv: every component in use
	return raw
}

// TestRoundTrip: a raw buffer split into CRIU's fields and laid back over
// a base that holds only what the kernel fills itself (sw_reserved) comes
// back byte for byte, so the dumper and the restorer agree on the layout,
// on Intel's placement and on AMD's.
func TestRoundTrip(t *testing.T) {
	for name, l := range map[string]*layout{"intel": &intelLayout, "amd": &amdLayout} {
		raw := rawState(l, 1)
		fp, err := toCRIU(raw, l)
		if err != nil {
			t.Fatal(err)
		}
		base := make([]byte, len(raw))
		copy(base[416:fxsaveSize], raw[416:fxsaveSize])
		back, err := fromCRIU(base, fp, l)
		if err != nil {
			t.Fatal(err)
		}
		for i := range raw {
			if back[i] != raw[i] {
				t.Fatalf("%s: round trip differs first at byte %d: %#x, want %#x", name, i, back[i], raw[i])
			}
		}
	}

	// A component the image carries but this CPU's buffer cannot hold is
	// an error, not a silent loss.
	fp, _ := toCRIU(rawState(&intelLayout, 1), &intelLayout)
	if _, err := fromCRIU(make([]byte, 576+ymmhSize), fp, &intelLayout); err == nil {
		t.Error("AVX-512 state restored into an AVX-only buffer")
	}
}

// TestAcrossLayouts: state dumped on Intel lands at AMD's offsets when
// restored there (the registers, not the byte positions, travel).
func TestAcrossLayouts(t *testing.T) {
	raw := rawState(&intelLayout, 3)
	fp, err := toCRIU(raw, &intelLayout)
	if err != nil {
		t.Fatal(err)
	}
	// The Intel image carries MPX state, which AMD lacks: drop it, as
	// the kernel would for a task that never used MPX.
	fp.Xsave.BndregState, fp.Xsave.BndcsrState = nil, nil
	fp.Xsave.XstateBv = proto.Uint64(fp.Xsave.GetXstateBv() &^ (1<<xfeatBndregs | 1<<xfeatBndcsr))
	amd, err := fromCRIU(make([]byte, amdLayout[xfeatPKRU]+pkruSize), fp, &amdLayout)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []int{xfeatYMM, xfeatOpmask, xfeatZMMHi256, xfeatHi16ZMM, xfeatPKRU} {
		n := compSizes[c]
		if !bytes.Equal(amd[amdLayout[c]:amdLayout[c]+n], raw[intelLayout[c]:intelLayout[c]+n]) {
			t.Errorf("component %d not at AMD's offset %d", c, amdLayout[c])
		}
	}
}

// This CPU's CPUID agrees with the architectural AVX offset.
func TestHostLayout(t *testing.T) {
	if l := hostLayout(); l[xfeatYMM] != 0 && l[xfeatYMM] != 576 {
		t.Errorf("YMM_Hi128 at %d, want 576", l[xfeatYMM])
	}
}
