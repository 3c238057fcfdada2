package lazypages

import (
	"math/bits"
	"sort"
)

const pageSize = 4096

// region is a stretch of a task's lazy memory: n pages now at dst whose
// contents are those dumped at src (they differ once the task mremaps).
// pend has a bit per page still to be filled.
type region struct {
	dst, src uint64
	n        uint64
	pend     []uint64
}

func (r *region) end() uint64 { return r.dst + r.n*pageSize }

func (r *region) isPending(i uint64) bool { return r.pend[i/64]&(1<<(i%64)) != 0 }

// nextPending returns the first pending page index ≥ i, or r.n.
func (r *region) nextPending(i uint64) uint64 {
	for i < r.n {
		w := r.pend[i/64] >> (i % 64)
		if w != 0 {
			i += uint64(bits.TrailingZeros64(w))
			return min(i, r.n)
		}
		i = (i/64 + 1) * 64
	}
	return r.n
}

// clear clears pages [i, j) and returns how many were pending.
func (r *region) clear(i, j uint64) uint64 {
	var c uint64
	for ; i < j; i++ {
		if i%64 == 0 && j-i >= 64 {
			c += uint64(bits.OnesCount64(r.pend[i/64]))
			r.pend[i/64] = 0
			i += 63
			continue
		}
		if r.isPending(i) {
			r.pend[i/64] &^= 1 << (i % 64)
			c++
		}
	}
	return c
}

// slice returns the pages [i, j) as a new region.
func (r *region) slice(i, j uint64) region {
	out := region{dst: r.dst + i*pageSize, src: r.src + i*pageSize, n: j - i, pend: make([]uint64, (j-i+63)/64)}
	for k := i; k < j; k++ {
		if r.isPending(k) {
			o := k - i
			out.pend[o/64] |= 1 << (o % 64)
		}
	}
	return out
}

// mmState is what is still to be filled in one mm, by address.
type mmState struct {
	regions []region // sorted by dst, disjoint
	pending uint64   // pages pending in all regions
}

// newState makes every page of ranges pending; src = dst at the start.
func newState(ranges [][2]uint64) *mmState {
	s := &mmState{}
	for _, rg := range ranges {
		n := (rg[1] - rg[0]) / pageSize
		r := region{dst: rg[0], src: rg[0], n: n, pend: make([]uint64, (n+63)/64)}
		for i := range r.pend {
			r.pend[i] = ^uint64(0)
		}
		if n%64 != 0 {
			r.pend[len(r.pend)-1] = 1<<(n%64) - 1
		}
		s.regions = append(s.regions, r)
		s.pending += n
	}
	sort.Slice(s.regions, func(i, j int) bool { return s.regions[i].dst < s.regions[j].dst })
	return s
}

// find returns the region holding addr.
func (s *mmState) find(addr uint64) (*region, bool) {
	i := sort.Search(len(s.regions), func(i int) bool { return s.regions[i].end() > addr })
	if i < len(s.regions) && s.regions[i].dst <= addr {
		return &s.regions[i], true
	}
	return nil, false
}

// run is a stretch of pending pages: n pages at dst, dumped at src.
type run struct{ dst, src, n uint64 }

// runAt returns the pending run starting at the page of addr, at most max
// pages, cut where same(src of first page, src of page) turns false; ok is
// false when that page is not pending.
func (s *mmState) runAt(addr, max uint64, same func(a, b uint64) bool) (run, bool) {
	addr &^= pageSize - 1
	r, ok := s.find(addr)
	if !ok {
		return run{}, false
	}
	i := (addr - r.dst) / pageSize
	if !r.isPending(i) {
		return run{}, false
	}
	first := r.src + i*pageSize
	n := uint64(1)
	for i+n < r.n && n < max && r.isPending(i+n) && same(first, first+n*pageSize) {
		n++
	}
	return run{dst: addr, src: first, n: n}, true
}

// nextPending returns the first pending page at or above addr, wrapping
// to the lowest one; ok is false when nothing is pending.
func (s *mmState) nextPending(addr uint64) (uint64, bool) {
	if s.pending == 0 {
		return 0, false
	}
	for pass := 0; pass < 2; pass++ {
		for i := range s.regions {
			r := &s.regions[i]
			if r.end() <= addr {
				continue
			}
			k := uint64(0)
			if addr > r.dst {
				k = (addr - r.dst) / pageSize
			}
			if k = r.nextPending(k); k < r.n {
				return r.dst + k*pageSize, true
			}
		}
		addr = 0
	}
	return 0, false
}

// clear marks [start, end) filled (or gone: unmapped, zapped) and returns
// how many pending pages that was.
func (s *mmState) clear(start, end uint64) uint64 {
	var c uint64
	for i := range s.regions {
		r := &s.regions[i]
		lo, hi := max(start, r.dst), min(end, r.end())
		if lo >= hi {
			continue
		}
		c += r.clear((lo-r.dst)/pageSize, (hi-r.dst+pageSize-1)/pageSize)
	}
	s.pending -= c
	s.compact()
	return c
}

// compact drops regions with nothing pending.
func (s *mmState) compact() {
	out := s.regions[:0]
	for _, r := range s.regions {
		if r.nextPending(0) < r.n {
			out = append(out, r)
		}
	}
	clear(s.regions[len(out):])
	s.regions = out
}

// remap follows mremap: what was at [from, from+length) is now at to.
func (s *mmState) remap(from, to, length uint64) {
	if from == to || length == 0 {
		return
	}
	// Whatever was mapped at the target was unmapped by the kernel.
	s.clear(to, to+length)
	var moved, kept []region
	for i := range s.regions {
		r := &s.regions[i]
		lo, hi := max(from, r.dst), min(from+length, r.end())
		if lo >= hi {
			kept = append(kept, *r)
			continue
		}
		a, b := (lo-r.dst)/pageSize, (hi-r.dst)/pageSize
		if a > 0 {
			kept = append(kept, r.slice(0, a))
		}
		m := r.slice(a, b)
		m.dst = m.dst - from + to
		moved = append(moved, m)
		if b < r.n {
			kept = append(kept, r.slice(b, r.n))
		}
	}
	s.regions = append(kept, moved...)
	sort.Slice(s.regions, func(i, j int) bool { return s.regions[i].dst < s.regions[j].dst })
	s.compact()
}

// clone copies the state, for the child of a fork.
func (s *mmState) clone() *mmState {
	c := &mmState{pending: s.pending, regions: make([]region, len(s.regions))}
	for i, r := range s.regions {
		r.pend = append([]uint64(nil), r.pend...)
		c.regions[i] = r
	}
	return c
}

// missing describes what is still pending, for error messages: the first
// few runs.
func (s *mmState) missing() []run {
	var out []run
	for _, r := range s.regions {
		for i := r.nextPending(0); i < r.n && len(out) < 4; {
			j := i
			for j < r.n && r.isPending(j) {
				j++
			}
			out = append(out, run{dst: r.dst + i*pageSize, src: r.src + i*pageSize, n: j - i})
			i = r.nextPending(j)
		}
	}
	return out
}
