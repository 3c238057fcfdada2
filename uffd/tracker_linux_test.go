package uffd

import (
	"fmt"
	"math/rand"
	"os"
	"sort"
	"strings"
	"testing"
)

// trackChild takes a uffd of the child's mm and starts a Tracker on it.
func trackChild(t *testing.T, c *child) (*Tracker, *Pagemap) {
	t.Helper()
	u := c.remoteUffd()
	if _, err := u.API(TrackerFeatures); err != nil {
		t.Fatal(err)
	}
	pm, err := OpenPagemap(c.pid())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pm.Close() })
	tr, err := NewTracker(u, pm)
	if err != nil {
		t.Fatal(err)
	}
	return tr, pm
}

func scanChild(t *testing.T, c *child, tr *Tracker) *ScanResult {
	t.Helper()
	vmas, err := ReadVMAs(c.pid())
	if err != nil {
		t.Fatal(err)
	}
	r, err := tr.Scan(vmas)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// pagesIn returns the page indexes of [base, base+n pages) covered by rs.
func pagesIn(rs []Region, base uint64, n int) map[int]bool {
	out := map[int]bool{}
	for _, r := range rs {
		for a := r.Start; a < r.End; a += PageSize {
			if a >= base && a < base+uint64(n)*PageSize {
				out[int((a-base)/PageSize)] = true
			}
		}
	}
	return out
}

func keys(m map[int]bool) []int {
	var k []int
	for i := range m {
		k = append(k, i)
	}
	sort.Ints(k)
	return k
}

func writePages(t *testing.T, c *child, base uint64, idx []int) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "wr %x %d", base, len(idx))
	for _, i := range idx {
		fmt.Fprintf(&b, " %d", i)
	}
	if r := c.do("%s", b.String()); r != "ok" {
		t.Fatalf("child wr: %s", r)
	}
}

// A child writes a known random set of pages each round (some of them never
// populated before); every scan must report exactly that set in the region.
// With THP the region starts as huge pages, which tracking splits.
func TestTrackerRandomRounds(t *testing.T) {
	needRoot(t)
	t.Run("4KiB", func(t *testing.T) { trackerRounds(t, false) })
	t.Run("THP", func(t *testing.T) { trackerRounds(t, true) })
}

func anonHuge(t *testing.T, pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "AnonHugePages:") {
			return strings.TrimSpace(strings.TrimPrefix(l, "AnonHugePages:"))
		}
	}
	return "?"
}

func trackerRounds(t *testing.T, thp bool) {
	c := startChild(t, false)
	tr, _ := trackChild(t, c)
	const n = 2048
	base := c.doHex("map %d", n)
	if thp {
		if r := c.do("thp %x %x", base, n*PageSize); r != "0" {
			t.Fatal(r)
		}
		if r := c.do("fill %x %d", base, n); r != "ok" {
			t.Fatal(r)
		}
		t.Logf("AnonHugePages before tracking: %s", anonHuge(t, c.pid()))
	}
	// Populate the even pages; odd pages stay never-touched.
	var even []int
	for i := 0; i < n; i += 2 {
		even = append(even, i)
	}
	writePages(t, c, base, even)

	first := scanChild(t, c, tr)
	if len(first.New) == 0 || len(first.Written) != 0 {
		t.Fatalf("first scan: %d new, %d written regions", len(first.New), len(first.Written))
	}
	pop := pagesIn(first.NewPopulated, base, n)
	for i := 0; i < n; i++ {
		if pop[i] != (i%2 == 0 || thp) {
			t.Fatalf("first scan: page %d populated=%v (populated reported %d pages of %d)", i, pop[i], len(pop), n/2)
		}
	}
	if len(first.Untrackable) != 0 {
		t.Logf("untrackable: %v (%v)", first.Untrackable, first.UntrackableErr)
	}

	rng := rand.New(rand.NewSource(42))
	falsePos, outside := 0, 0
	for round := 0; round < 20; round++ {
		k := 1 + rng.Intn(n/8)
		set := map[int]bool{}
		for len(set) < k {
			set[rng.Intn(n)] = true
		}
		idx := keys(set)
		writePages(t, c, base, idx)
		r := scanChild(t, c, tr)
		if len(r.New) != 0 || len(r.Gone) != 0 {
			t.Fatalf("round %d: VMAs changed? new %v gone %v", round, r.New, r.Gone)
		}
		got := pagesIn(r.Written, base, n)
		for _, i := range idx {
			if !got[i] {
				t.Fatalf("round %d: page %d written but not reported", round, i)
			}
		}
		for i := range got {
			if !set[i] {
				falsePos++
			}
		}
		outside += int(r.WrittenPages()) - len(got)
	}
	if thp {
		t.Logf("AnonHugePages after tracking: %s", anonHuge(t, c.pid()))
	}
	t.Logf("20 rounds: %d false positives in the region; %d pages written elsewhere in the child (stack, libc)", falsePos, outside)
	if falsePos != 0 {
		t.Errorf("%d false positives", falsePos)
	}
	smapsWP := func() int {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", c.pid()))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "VmFlags:") && strings.Contains(l+" ", " uw ") {
				n++
			}
		}
		return n
	}
	if n := smapsWP(); n == 0 {
		t.Fatal("no VMA of the child is uffd-wp registered while tracking")
	}
	if err := tr.Stop(); err != nil {
		t.Fatal(err)
	}
	// Stop leaves the child as it was: no VMA registered any more.
	if n := smapsWP(); n != 0 {
		t.Fatalf("%d VMAs still uffd-wp registered after Stop", n)
	}
}

// VMAs appearing, disappearing, moving and being replaced between scans.
func TestTrackerVMAChanges(t *testing.T) {
	needRoot(t)
	c := startChild(t, false)
	tr, _ := trackChild(t, c)
	ps := PageSize
	a := c.doHex("map %d", 16)
	b := c.doHex("map %d", 16)
	writePages(t, c, a, []int{0, 1, 2, 3})
	writePages(t, c, b, []int{0})
	scanChild(t, c, tr)

	has := func(vs []VMA, v VMA) bool {
		for _, x := range vs {
			if x.Start <= v.Start && v.End <= x.End {
				return true
			}
		}
		return false
	}
	// munmap b: Gone. New mapping d: New, and its populated pages reported.
	if r := c.do("munmap %x %x", b, 16*ps); r != "0" {
		t.Fatal(r)
	}
	d := c.doHex("map %d", 8)
	writePages(t, c, d, []int{5})
	writePages(t, c, a, []int{9})
	r := scanChild(t, c, tr)
	if !has(r.Gone, VMA{b, b + 16*ps}) {
		t.Errorf("munmap: gone %v does not include %#x", r.Gone, b)
	}
	if !has(r.New, VMA{d, d + 8*ps}) || !pagesIn(r.NewPopulated, d, 8)[5] {
		t.Errorf("new mapping: new %v populated %v", r.New, r.NewPopulated)
	}
	if got := pagesIn(r.Written, a, 16); len(got) != 1 || !got[9] {
		t.Errorf("written in a: %v, want [9]", keys(got))
	}

	// mremap the second half of a elsewhere: the moved pages come back as
	// New (the tracking uffd has no REMAP event, so the kernel dropped the
	// registration) with their data, the old place is Gone.
	e := c.doHex("map %d", 8)
	if r := c.do("mremap %x %x %x", a+8*ps, 8*ps, e); r != "0" {
		t.Fatal(r)
	}
	r = scanChild(t, c, tr)
	if !has(r.Gone, VMA{a + 8*ps, a + 16*ps}) || !has(r.New, VMA{e, e + 8*ps}) || !pagesIn(r.NewPopulated, e, 8)[1] {
		t.Errorf("mremap: gone %v new %v populated %v", r.Gone, r.New, r.NewPopulated)
	}

	// Replace d behind the tracker's back (munmap + MAP_FIXED at the same
	// place) and write to a: the scan hits the unregistered VMA (EPERM),
	// keeps a's write and reports d New.
	old, err := ReadVMAs(c.pid())
	if err != nil {
		t.Fatal(err)
	}
	if r := c.do("mapat %x %d", d, 8); r == "" || strings.HasPrefix(r, "err") {
		t.Fatal(r)
	}
	writePages(t, c, d, []int{2})
	writePages(t, c, a, []int{3})
	r, err = tr.Scan(old)
	if err != nil {
		t.Fatal(err)
	}
	if !has(r.New, VMA{d, d + 8*ps}) || !pagesIn(r.NewPopulated, d, 8)[2] {
		t.Errorf("replaced mapping: new %v populated %v", r.New, r.NewPopulated)
	}
	if got := pagesIn(r.Written, a, 8); !got[3] {
		t.Errorf("write to a lost while recovering from the replaced VMA: %v", keys(got))
	}
	// And tracking continues on the replacement.
	writePages(t, c, d, []int{6})
	r = scanChild(t, c, tr)
	if got := pagesIn(r.Written, d, 8); len(got) != 1 || !got[6] {
		t.Errorf("after replacement: written in d %v, want [6]", keys(got))
	}
}

func TestRangeOps(t *testing.T) {
	v := func(s, e uint64) VMA { return VMA{s * 0x1000, e * 0x1000} }
	a := []VMA{v(0, 10), v(20, 30)}
	b := []VMA{v(5, 25)}
	if got := fmt.Sprint(Subtract(a, b)); got != fmt.Sprint([]VMA{v(0, 5), v(25, 30)}) {
		t.Errorf("subtract: %s", got)
	}
	if got := fmt.Sprint(Intersect(a, b)); got != fmt.Sprint([]VMA{v(5, 10), v(20, 25)}) {
		t.Errorf("intersect: %s", got)
	}
	if got := fmt.Sprint(normalize([]VMA{v(3, 4), v(1, 3), v(7, 7), v(2, 3)})); got != fmt.Sprint([]VMA{v(1, 3), v(3, 4)}) {
		t.Errorf("normalize: %s", got)
	}
	// An untracked VMA between two tracked ones splits the run; a hole does not.
	tracked := []VMA{v(0, 10), v(20, 30), v(40, 50)}
	cur := []VMA{v(0, 10), v(20, 30), v(32, 35), v(40, 50)}
	if got := fmt.Sprint(runs(tracked, cur)); got != fmt.Sprint([]VMA{v(0, 30), v(40, 50)}) {
		t.Errorf("runs: %s", got)
	}
}

// A Tracker that adopts another's ranges on the same uffd (a later godwit
// round) reports only the writes since, and nothing as new.
func TestTrackerAdopt(t *testing.T) {
	needRoot(t)
	c := startChild(t, false)
	tr, pm := trackChild(t, c)
	const n = 64
	base := c.doHex("map %d", n)
	writePages(t, c, base, []int{0, 1, 2, 3})
	scanChild(t, c, tr)
	writePages(t, c, base, []int{5, 9})
	tr2, err := NewTracker(tr.u, pm)
	if err != nil {
		t.Fatal(err)
	}
	tr2.Adopt(tr.Tracked())
	r := scanChild(t, c, tr2)
	if got := keys(pagesIn(r.Written, base, n)); fmt.Sprint(got) != "[5 9]" {
		t.Fatalf("adopted scan: written %v, want [5 9]", got)
	}
	for _, v := range r.New {
		if v.Start < base+n*PageSize && v.End > base {
			t.Fatalf("adopted scan: %v of the region reported new", v)
		}
	}
}

// Shared anonymous memory (shmem) tracked like private memory: with WP_ASYNC
// and WP as the only mode the kernel accepts registration of any VMA type, and
// PAGEMAP_SCAN reports exactly the pages this mm wrote each round. The
// write-protect bit lives in this mm's page tables only: writes through
// another process's mapping of the same shmem are not seen here.
func TestTrackerShmem(t *testing.T) {
	needRoot(t)
	c := startChild(t, false)
	tr, _ := trackChild(t, c)
	const n = 32
	s := c.doHex("smap %d", n)
	writePages(t, c, s, []int{0, 1, 2})
	r := scanChild(t, c, tr)
	for i, v := range r.Untrackable {
		if v.Start <= s && s < v.End {
			t.Fatalf("shmem %v untrackable: %v", v, r.UntrackableErr[i])
		}
	}
	if got := pagesIn(r.NewPopulated, s, n); len(got) != 3 || !got[0] || !got[1] || !got[2] {
		t.Fatalf("first scan: populated shmem pages %v, want [0 1 2]", keys(got))
	}
	for round, want := range [][]int{{1, 7}, {}, {0, 30, 31}, {15}} {
		writePages(t, c, s, want)
		r := scanChild(t, c, tr)
		got := keys(pagesIn(r.Written, s, n))
		if fmt.Sprint(got) != fmt.Sprint(want) && !(len(got) == 0 && len(want) == 0) {
			t.Errorf("round %d: written shmem pages %v, want %v", round, got, want)
		}
		if len(pagesIn(r.NewPopulated, s, n)) != 0 {
			t.Errorf("round %d: shmem reported new again: %v", round, r.New)
		}
	}
}
