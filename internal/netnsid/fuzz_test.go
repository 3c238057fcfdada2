package netnsid

import "testing"

func FuzzParseRecord(f *testing.F) {
	f.Add([]byte(`{"tree":{"dev":4,"ino":4026532300},"godwit":{"dev":4,"ino":4026531840}}`))
	f.Add([]byte(`{"tree":{"dev":4,"ino":1},"godwit":{"dev":4,"ino":1}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRecord(b)
		if err != nil {
			return
		}
		if r.Tree == r.Godwit || r.Tree.Ino == 0 {
			t.Fatalf("accepted %+v", r)
		}
		if _, err := ParseRecord(r.Marshal()); err != nil {
			t.Fatalf("round trip of %+v: %v", r, err)
		}
	})
}
