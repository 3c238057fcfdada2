package kerndat

import (
	"encoding/binary"
	"testing"
)

func TestParseNetlink(t *testing.T) {
	msg := func(typ uint16, payload string) []byte {
		l := 16 + len(payload)
		b := make([]byte, (l+3)&^3)
		binary.NativeEndian.PutUint32(b, uint32(l))
		binary.NativeEndian.PutUint16(b[4:], typ)
		binary.NativeEndian.PutUint32(b[8:], 7)
		copy(b[16:], payload)
		return b
	}
	b := append(msg(20, "abcde"), msg(3, "")...)
	ms, err := parseNetlink(b)
	if err != nil || len(ms) != 2 || string(ms[0].Payload) != "abcde" || ms[1].Type != 3 || ms[0].Seq != 7 {
		t.Fatalf("%v %+v", err, ms)
	}
	bad := msg(20, "x")
	binary.NativeEndian.PutUint32(bad, 1000)
	if _, err := parseNetlink(bad); err == nil {
		t.Fatal("oversized length accepted")
	}
	if _, err := parseNetlink([]byte{1, 2, 3}); err == nil {
		t.Fatal("trailing bytes accepted")
	}
}

func FuzzParseNetlink(f *testing.F) {
	f.Add([]byte{20, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		ms, err := parseNetlink(b)
		for _, m := range ms {
			if len(m.Payload) > len(b) {
				t.Fatal("payload larger than input")
			}
		}
		_ = err
	})
}
