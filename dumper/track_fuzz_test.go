package dumper

import (
	"encoding/binary"
	"testing"

	"godwit/uffd"
)

// The tracking record comes from an images directory and the state from a
// holder's memfd: neither may make godwit panic, and what parses is sane.
func FuzzParseRecord(f *testing.F) {
	f.Add([]byte(`{"target_pid":10,"target_start":5,"holder_pid":11,"holder_start":6,"gen":1}`))
	f.Add([]byte(`{"target_pid":10,"target_start":5,"holder_pid":11,"holder_start":6,"gen":1,"tasks":[{"target_pid":12,"holder_pid":13,"gen":1}],"shm":[{"shmid":7,"mappings":[{"pid":10,"start":4096,"end":8192,"pgoff":0}]}]}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseTreeRecord(b)
		if err != nil {
			return
		}
		for _, k := range append([]trackRecord{r.trackRecord}, r.Tasks...) {
			if k.TargetPid <= 0 || k.HolderPid <= 0 || k.Gen == 0 {
				t.Fatalf("accepted %+v", k)
			}
		}
		for _, o := range r.Shm {
			for _, m := range o.Mappings {
				if m.Start >= m.End || m.Start%pageSize != 0 || m.Pgoff%pageSize != 0 {
					t.Fatalf("accepted mapping %+v", m)
				}
			}
		}
	})
}

func FuzzParseState(f *testing.F) {
	f.Add([]byte(`{"version":1,"target_pid":1,"gen":2,"tracked":[{"Start":4096,"End":8192}],"covered":[{"s":4096,"e":8192}]}`))
	f.Add([]byte(`{"version":1,"covered":[{"s":8192,"e":4096}]}`))
	f.Add([]byte(`{"version":2}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := parseState(b)
		if err != nil {
			return
		}
		var last uint64
		for _, c := range s.Covered {
			if c.Start >= c.End || c.Start%pageSize != 0 || c.Start < last {
				t.Fatalf("accepted covered %+v", s.Covered)
			}
			last = c.End
		}
	})
}

func TestSpans(t *testing.T) {
	a := []span{{Start: 0x1000, End: 0x5000}, {Start: 0x8000, End: 0x9000}}
	b := []span{{Start: 0x2000, End: 0x3000}, {Start: 0x4000, End: 0x8800}}
	if got := uffd.Subtract(a, b); len(got) != 3 || got[0] != (span{Start: 0x1000, End: 0x2000}) || got[1] != (span{Start: 0x3000, End: 0x4000}) || got[2] != (span{Start: 0x8800, End: 0x9000}) {
		t.Fatalf("a-b = %v", got)
	}
	if got := uffd.Intersect(a, b); len(got) != 3 || got[0] != (span{Start: 0x2000, End: 0x3000}) || got[1] != (span{Start: 0x4000, End: 0x5000}) || got[2] != (span{Start: 0x8000, End: 0x8800}) {
		t.Fatalf("a&b = %v", got)
	}
	if got := mergeSpans([]span{{Start: 0x3000, End: 0x4000}, {Start: 0x1000, End: 0x3000}, {Start: 0x5000, End: 0x6000}}); len(got) != 2 || got[0] != (span{Start: 0x1000, End: 0x4000}) {
		t.Fatalf("merge = %v", got)
	}
	c := spanCursor{s: a}
	for _, x := range []struct {
		a  uint64
		in bool
	}{{0, false}, {0x1000, true}, {0x4fff, true}, {0x5000, false}, {0x8000, true}, {0x9000, false}} {
		if c.has(x.a) != x.in {
			t.Fatalf("has(%#x) = %v", x.a, !x.in)
		}
	}
}

// The discard log's ranges decode to page-aligned, sorted, disjoint
// ranges or an error, never a panic.
func FuzzParseDiscards(f *testing.F) {
	f.Add([]byte{})
	f.Add(make([]byte, 16))
	good := make([]byte, 32)
	binary.NativeEndian.PutUint64(good[0:], 0x1000)
	binary.NativeEndian.PutUint64(good[8:], 0x3000)
	binary.NativeEndian.PutUint64(good[16:], 0x5000)
	binary.NativeEndian.PutUint64(good[24:], 0x6000)
	f.Add(good)
	f.Fuzz(func(t *testing.T, b []byte) {
		spans, err := parseDiscards(b)
		if err != nil {
			return
		}
		for i, s := range spans {
			if s.Start >= s.End || s.Start%pageSize != 0 || s.End%pageSize != 0 || (i > 0 && s.Start <= spans[i-1].End) {
				t.Fatalf("range %d: %#x-%#x", i, s.Start, s.End)
			}
		}
	})
}
