package lazypages

import "testing"

func all(a, b uint64) bool { return true }

func pendingSet(s *mmState) map[uint64]uint64 {
	m := map[uint64]uint64{}
	for _, r := range s.regions {
		for i := uint64(0); i < r.n; i++ {
			if r.isPending(i) {
				m[r.dst+i*pageSize] = r.src + i*pageSize
			}
		}
	}
	return m
}

func TestStateFillRemapUnmap(t *testing.T) {
	const base = 0x100000
	s := newState([][2]uint64{{base, base + 100*pageSize}})
	if s.pending != 100 {
		t.Fatalf("pending %d", s.pending)
	}
	r, ok := s.runAt(base+5*pageSize+17, 8, all)
	if !ok || r.dst != base+5*pageSize || r.n != 8 || r.src != r.dst {
		t.Fatalf("run %+v %v", r, ok)
	}
	if c := s.clear(r.dst, r.dst+r.n*pageSize); c != 8 || s.pending != 92 {
		t.Fatalf("clear %d pending %d", c, s.pending)
	}
	if _, ok := s.runAt(base+6*pageSize, 1, all); ok {
		t.Fatal("filled page still pending")
	}
	// Move pages 10..20 to 0x900000.
	s.remap(base+10*pageSize, 0x900000, 10*pageSize)
	m := pendingSet(s)
	if len(m) != 92 || m[0x900000+3*pageSize] != base+13*pageSize || m[0x900000+9*pageSize] != base+19*pageSize {
		t.Fatalf("after remap: %d pending, %#x", len(m), m[0x900000+3*pageSize])
	}
	if _, ok := m[base+10*pageSize]; ok {
		t.Fatal("old address still pending")
	}
	// A run does not cross into the moved part.
	r, _ = s.runAt(base+4*pageSize, 100, all)
	if r.n != 1 {
		t.Fatalf("run across filled pages: %+v", r)
	}
	if c := s.clear(0x900000+2*pageSize, 0x900000+4*pageSize); c != 1 {
		t.Fatalf("unmap cleared %d", c)
	}
	a, ok := s.nextPending(0x900000 + pageSize)
	if !ok || a != 0x900000+4*pageSize {
		t.Fatalf("next %#x", a)
	}
	a, _ = s.nextPending(0x900000 + 10*pageSize) // wraps
	if a != base {
		t.Fatalf("wrap %#x", a)
	}
	c := s.clone()
	s.clear(0, 1<<60)
	if s.pending != 0 || len(s.regions) != 0 || c.pending != 91 {
		t.Fatalf("clear all: %d %d clone %d", s.pending, len(s.regions), c.pending)
	}
	if _, ok := s.nextPending(0); ok {
		t.Fatal("pending after all cleared")
	}
	if len(c.missing()) == 0 {
		t.Fatal("clone lost its pages")
	}
}
