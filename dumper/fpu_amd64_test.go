package dumper

import (
	"encoding/binary"
	"testing"
)

func TestFPRegsFromXState(t *testing.T) {
	x := make([]byte, 2696)
	le := binary.LittleEndian
	le.PutUint16(x[0:], 0x37f)    // cwd
	le.PutUint32(x[24:], 0x1f80)  // mxcsr
	le.PutUint32(x[160:], 0xabcd) // xmm0 low word
	le.PutUint64(x[464:], 0x2e7)  // XCR0: x87 SSE AVX opmask ZMM_Hi256 Hi16_ZMM PKRU
	le.PutUint64(x[512:], 0x7)    // xstate_bv
	le.PutUint32(x[576:], 0x1234) // ymm0 high word
	le.PutUint32(x[2688:], 0x55)  // pkru
	fp, err := FPRegsFromXState(x)
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
	if _, err := FPRegsFromXState(x[:100]); err == nil {
		t.Error("short buffer accepted")
	}
}

func FuzzFPRegsFromXState(f *testing.F) {
	f.Add(make([]byte, 512))
	f.Add(make([]byte, 2696))
	f.Fuzz(func(t *testing.T, x []byte) {
		_, _ = FPRegsFromXState(x)
	})
}
