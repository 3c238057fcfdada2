package wire

import (
	"bytes"
	"testing"
)

func TestHeaderRoundTrip(t *testing.T) {
	h := Header{Cmd: MakeCmd(CmdAddF, FlagPresent|FlagLazy), NrPages: 3, Vaddr: 0x7f0000001000, DstID: EncodeDst(TypePID, 42)}
	var b [HeaderSize]byte
	h.Marshal(b[:])
	// Layout of the C struct on x86-64: cmd, 4 bytes of padding, then the u64s.
	want := []byte{6, 0, 6, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0,
		0x00, 0x10, 0x00, 0x00, 0x00, 0x7f, 0, 0, 1 | 42<<8&0xff, 0, 0, 0, 0, 0, 0, 0}
	want[24], want[25] = 1, 42
	if !bytes.Equal(b[:], want) {
		t.Fatalf("marshal = % x, want % x", b, want)
	}
	g, err := Unmarshal(b[:])
	if err != nil || g != h {
		t.Fatalf("unmarshal = %+v, %v; want %+v", g, err, h)
	}
	if g.Command() != CmdAddF || g.Flags() != FlagPresent|FlagLazy {
		t.Fatalf("command %d flags %d", g.Command(), g.Flags())
	}
	typ, id, err := DecodeDst(g.DstID)
	if err != nil || typ != TypePID || id != 42 {
		t.Fatalf("dst = %d %d %v", typ, id, err)
	}
}

func TestDecodeDst(t *testing.T) {
	for _, c := range []struct {
		dst  uint64
		typ  uint8
		id   uint64
		fail bool
	}{
		{EncodeDst(TypeShmem, 7), TypeShmem, 7, false},
		{7<<8 | 11, TypePID, 7, false},   // CRIU 2.x numbering
		{9<<8 | 34, TypeShmem, 9, false}, // CRIU 2.x numbering
		{5<<8 | 3, 0, 0, true},
		{0, 0, 0, true},
	} {
		typ, id, err := DecodeDst(c.dst)
		if (err != nil) != c.fail || (!c.fail && (typ != c.typ || id != c.id)) {
			t.Errorf("DecodeDst(%#x) = %d, %d, %v", c.dst, typ, id, err)
		}
	}
}

func TestValidFlags(t *testing.T) {
	for f, want := range map[uint16]bool{0: false, FlagPresent: true, FlagLazy: true,
		FlagPresent | FlagLazy: true, FlagParent: true, FlagParent | FlagPresent: false, 8: false} {
		if ValidFlags(f) != want {
			t.Errorf("ValidFlags(%d) != %v", f, want)
		}
	}
}

func FuzzHeader(f *testing.F) {
	var b [HeaderSize]byte
	Header{Cmd: MakeCmd(CmdAdd, 0), NrPages: 1, Vaddr: 4096, DstID: 1<<8 | 1}.Marshal(b[:])
	f.Add(b[:])
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, in []byte) {
		h, err := Unmarshal(in)
		if len(in) < HeaderSize {
			if err == nil {
				t.Fatal("short input accepted")
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		var out [HeaderSize]byte
		h.Marshal(out[:])
		// Everything but the padding must survive a round trip.
		if !bytes.Equal(out[:4], in[:4]) || !bytes.Equal(out[8:], in[8:HeaderSize]) {
			t.Fatalf("round trip changed the header: % x -> % x", in[:HeaderSize], out)
		}
		if n, ok := h.Bytes(); ok && n != int64(h.NrPages)*PageSize {
			t.Fatal("Bytes overflowed silently")
		}
		_, _, _ = DecodeDst(h.DstID)
		_ = CommandName(h.Command())
		_ = ValidFlags(h.Flags())
	})
}
