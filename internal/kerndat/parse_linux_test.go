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

func TestParseMaps(t *testing.T) {
	in := "00400000-00452000 r-xp 00000000 08:02 173521 /usr/bin/dbus daemon\n" +
		"7ffd1000-7ffd3000 r-xp 00000000 00:00 0 [vdso]\n" +
		"7ffe0000-7ffe1000 rw-p 00000000 00:00 0\n"
	m, err := parseMaps([]byte(in))
	if err != nil || len(m) != 3 {
		t.Fatal(err, m)
	}
	if m[0].Start != 0x400000 || m[0].End != 0x452000 || m[0].Path != "/usr/bin/dbus daemon" || m[1].Path != "[vdso]" || m[2].Path != "" {
		t.Fatalf("%+v", m)
	}
	for _, bad := range []string{"zz-10 r-xp 0 0 0\n", "10 r-xp 0 0 0\n", "20-10 r-xp 0 0 0\n", "10-20 r-xp\n"} {
		if _, err := parseMaps([]byte(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func TestStatFields(t *testing.T) {
	f, err := statFields([]byte("42 (a b) c) S 1 2 3"))
	if err != nil || len(f) != 4 || f[0] != "S" {
		t.Fatal(err, f)
	}
	if v, err := statField(f, 4); err != nil || v != 1 {
		t.Fatal(v, err)
	}
	if _, err := statField(f, 52); err == nil {
		t.Fatal("missing field accepted")
	}
	if _, err := statField(f, 3); err == nil {
		t.Fatal("non-numeric field accepted")
	}
	if _, err := statFields([]byte("no paren")); err == nil {
		t.Fatal("no ')' accepted")
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

func FuzzParseMaps(f *testing.F) {
	f.Add([]byte("00400000-00452000 r-xp 00000000 08:02 173521 /usr/bin/x\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ms, err := parseMaps(b)
		if err == nil {
			for _, m := range ms {
				if m.End < m.Start {
					t.Fatalf("inverted range %+v", m)
				}
			}
		}
	})
}

func FuzzStatFields(f *testing.F) {
	f.Add([]byte("1 (init) S 0 1 1 0 -1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		fs, err := statFields(b)
		if err == nil {
			for n := 0; n < 60; n++ {
				_, _ = statField(fs, n)
			}
		}
		_ = fdinfoHas(b, "x:")
		_, _ = fdinfoValue(b, "lock:")
	})
}
