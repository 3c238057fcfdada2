package dumper

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/images"
	"godwit/internal/pagexfer"
	"godwit/internal/procfs"
	"godwit/uffd"
)

// incrWriter writes one task's private pages for a round: a page that must
// be saved gets its data when it is dirty or its parent does not have it,
// and a PARENT entry otherwise. It reads with process_vm_readv (or
// /proc/PID/mem for unreadable VMAs) and works on a running target: with
// tolerant, a run that cannot be read any more (unmapped meanwhile) is
// left out of the round and out of its coverage, so the next round takes
// it if it still exists.
type incrWriter struct {
	pid      int
	sink     pagexfer.Sink
	tolerant bool
	dirty    []span // sorted, merged
	covered  []span // what the parent has, sorted, merged
	marker   int64  // swap type of uffd-wp markers, -1 unknown

	pm   *procfs.Pagemap
	ents []procfs.PagemapEntry
	scan *uffd.Pagemap // PAGEMAP_SCAN
	regs []uffd.Region
	dc   spanCursor // over dirty
	cc   spanCursor // over covered
	uc   spanCursor // over unchanged
	// taken counts the pages queued (data or PARENT).
	taken uint64
	mem   *os.File
	buf   []byte
	pend  []incrRun
	data  uint64 // data pages in pend

	out   []span // coverage of this round's pagemap
	stats MemStats
	// Parent counts the pages left to the parent images.
	Parent uint64
	// ScanTime is the time spent in PAGEMAP_SCAN (profile, -v4).
	ScanTime time.Duration
	// Lost counts the pages that vanished while being read (tolerant).
	Lost uint64
	// unchanged (sorted, merged) are pages known to hold the parent's
	// data (discards_linux.go): PARENT entries without a page walk.
	unchanged []span
	// Unwalked counts them.
	Unwalked uint64
	// lazy, for dump --lazy-pages on top of rounds, takes the data pages
	// of lazy VMAs as PE_LAZY entries, unread (their data stays in the
	// frozen task).
	lazy *lazySink
}

type incrRun struct {
	addr, nr      uint64
	parent, force bool
	lazy          bool // PE_LAZY: listed, not read
	failed        bool
}

func newIncrWriter(pid int, sink pagexfer.Sink, dirty, covered []span, tolerant bool) (*incrWriter, error) {
	_, _ = procfs.ZeroPagePFN()
	_, _ = procfs.HugeZeroPagePFN()
	pm, err := procfs.OpenPagemap(pid)
	if err != nil {
		return nil, err
	}
	sp, err := uffd.OpenPagemap(pid)
	if err != nil {
		pm.Close()
		return nil, err
	}
	return &incrWriter{pid: pid, sink: sink, tolerant: tolerant, dirty: dirty, covered: covered,
		marker: swapMarkerType(), pm: pm, scan: sp, ents: make([]procfs.PagemapEntry, scanPages), buf: make([]byte, batchBytes)}, nil
}

func (w *incrWriter) close() {
	if w.pm != nil {
		w.pm.Close()
		w.pm = nil
	}
	if w.scan != nil {
		w.scan.Close()
		w.scan = nil
	}
	if w.mem != nil {
		w.mem.Close()
		w.mem = nil
	}
}

// want tells whether a page of a private mapping holds data to save:
// present (not a clean page-cache page, not a zero page) or swapped out.
// A uffd-wp marker looks swapped but holds nothing.
func (w *incrWriter) want(e procfs.PagemapEntry) (ok, zero bool) {
	switch {
	case e.Present():
		if e.File() {
			return false, false
		}
		if procfs.IsZeroPFN(e.PFN()) {
			return false, true
		}
		return true, false
	case e.Swapped():
		if e.File() || (w.marker >= 0 && int64(e.SwapType()) == w.marker) {
			return false, false
		}
		return true, false
	}
	return false, false
}

// spanCursor answers "is addr in the set" for ascending addresses.
type spanCursor struct {
	s []span
	i int
}

func (c *spanCursor) has(a uint64) bool {
	in, _ := c.at(a)
	return in
}

// at tells whether a is in the set, and where that answer changes: the
// end of a's span, or the start of the next one (MaxUint64: none).
func (c *spanCursor) at(a uint64) (bool, uint64) {
	for c.i < len(c.s) && c.s[c.i].End <= a {
		c.i++
	}
	switch {
	case c.i >= len(c.s):
		return false, ^uint64(0)
	case c.s[c.i].Start <= a:
		return true, c.s[c.i].End
	}
	return false, c.s[c.i].Start
}

// pageCats are the PAGEMAP_SCAN categories a round sorts pages by.
const pageCats = uffd.PageIsPresent | uffd.PageIsSwapped | uffd.PageIsFile | uffd.PageIsPFNZero

// writePrivate walks the private VMAs (sorted) and sends their pages. The
// pages holding data are found with PAGEMAP_SCAN, in ranges; only ranges
// that look swapped out are read page by page from /proc/PID/pagemap, to
// tell uffd-wp markers (no data) from swap and migration entries.
func (w *incrWriter) writePrivate(vmas []VMA) error {
	w.dc, w.cc, w.uc = spanCursor{s: w.dirty}, spanCursor{s: w.covered}, spanCursor{s: w.unchanged}
	for i := range vmas {
		v := &vmas[i]
		force := v.Prot&unix.PROT_READ == 0
		if v.Status&images.VmaAreaVdso != 0 {
			// Saved whole in every round and dump, as a plain dump
			// saves it (DumpPrivate): CRIU's restore of the chain
			// reads the dumped vDSO ("vdso: Invalid ELF magic"
			// without it). Two or so pages, never tracked.
			nr := (v.End - v.Start) / pageSize
			w.stats.Scanned += nr
			if err := w.queue(v.Start, nr, false, false, force); err != nil {
				return fmt.Errorf("pages of vdso %#x-%#x: %w", v.Start, v.End, err)
			}
			continue
		}
		if !v.Private() {
			continue
		}
		cats := uint64(pageCats)
		if plainAnon(v) {
			// No page-cache page there: asking PAGE_IS_FILE has the
			// kernel read every page's struct page (vm_normal_page),
			// a cache miss per page: 87 ms of a 4 GiB scan that takes
			// ~2 ms without.
			cats &^= uffd.PageIsFile
		}
		n := (v.End - v.Start) / pageSize
		w.stats.Scanned += n
		taken, zero := w.taken, w.stats.Zero
		// Walk what may have changed; what is known unchanged goes to
		// the parent unread, in address order with the rest.
		for a := v.Start; a < v.End; {
			same, b := w.uc.at(a)
			b = min(b, v.End)
			var err error
			if same {
				err = w.addRun(a, (b-a)/pageSize, true, force)
				w.Unwalked += (b - a) / pageSize
			} else {
				err = w.walk(a, b, cats, force)
			}
			if err != nil {
				return fmt.Errorf("pages of vma %#x-%#x: %w", v.Start, v.End, err)
			}
			a = b
		}
		w.stats.Untouched += n - (w.taken - taken) - (w.stats.Zero - zero)
	}
	return w.flush()
}

// walk sorts the pages of [a, b) by what PAGEMAP_SCAN says they hold.
func (w *incrWriter) walk(a, b, cats uint64, force bool) error {
	var err error
	ts := time.Now()
	w.regs, err = w.scan.Scan(uffd.ScanArgs{Start: a, End: b, CategoryAnyof: uffd.PageIsPresent | uffd.PageIsSwapped,
		ReturnMask: cats}, w.regs[:0])
	w.ScanTime += time.Since(ts)
	if err != nil {
		return err
	}
	for _, r := range w.regs {
		switch c := r.Categories; {
		case c&uffd.PageIsSwapped != 0:
			if err := w.perPage(r.Start, r.End, force); err != nil {
				return err
			}
		case c&uffd.PageIsFile != 0:
			// Clean page-cache pages of a private file mapping.
		case c&uffd.PageIsPFNZero != 0:
			w.stats.Zero += (r.End - r.Start) / pageSize
		default:
			if err := w.addRange(r.Start, r.End, force); err != nil {
				return err
			}
		}
	}
	return nil
}

// plainAnon tells a private anonymous VMA that only ever holds anonymous
// pages (and the zero page): unnamed, heap, stack or named with
// PR_SET_VMA_ANON_NAME; not the kernel's special mappings, not hugetlb.
func plainAnon(v *VMA) bool {
	if v.Status&images.VmaAnonPrivate == 0 || v.Status&(images.VmaAreaVdso|images.VmaAreaVvar|images.VmaAreaVsyscall) != 0 || v.HugePage != 0 {
		return false
	}
	return v.Path == "" || v.Path == "[heap]" || v.Path == "[stack]" || strings.HasPrefix(v.Path, "[anon:")
}

// perPage sorts [a, b) page by page from /proc/PID/pagemap.
func (w *incrWriter) perPage(a, b uint64, force bool) error {
	for a < b {
		n := min((b-a)/pageSize, scanPages)
		ents := w.ents[:n]
		if err := w.pm.Read(a, ents); err != nil {
			return err
		}
		for k, e := range ents {
			addr := a + uint64(k)*pageSize
			ok, zero := w.want(e)
			if zero {
				w.stats.Zero++
			}
			if !ok {
				continue
			}
			var err error
			if e.Swapped() {
				// Swapped out or migrating, or a marker the probe
				// could not recognise: its data, never PARENT.
				err = w.addRun(addr, 1, false, force)
			} else {
				err = w.addRange(addr, addr+pageSize, force)
			}
			if err != nil {
				return err
			}
		}
		a += n * pageSize
	}
	return nil
}

// addRange adds the pages [a, b) that hold data: with their data where
// dirty or not in the parent, as PARENT entries elsewhere.
func (w *incrWriter) addRange(a, b uint64, force bool) error {
	for a < b {
		dirty, dEnd := w.dc.at(a)
		end := min(b, dEnd)
		parent := false
		if !dirty {
			in, cEnd := w.cc.at(a)
			parent = in
			end = min(end, cEnd)
		}
		if err := w.addRun(a, (end-a)/pageSize, parent, force); err != nil {
			return err
		}
		a = end
	}
	return nil
}

// addRun queues nr pages at addr; with a lazy sink, the data pages in
// lazy VMAs are queued as lazy.
func (w *incrWriter) addRun(addr, nr uint64, parent, force bool) error {
	if parent || w.lazy == nil {
		return w.queue(addr, nr, parent, false, force)
	}
	end := addr + nr*pageSize
	for a := addr; a < end; {
		lazy, b := w.lazy.part(a, end)
		if err := w.queue(a, (b-a)/pageSize, false, lazy, force); err != nil {
			return err
		}
		a = b
	}
	return nil
}

// queue queues nr pages at addr, flushing whenever a batch of data is
// full.
func (w *incrWriter) queue(addr, nr uint64, parent, lazy, force bool) error {
	data := !parent && !lazy
	for nr > 0 {
		k := nr
		if data {
			k = min(nr, maxBatchIovs-w.data)
		}
		if n := len(w.pend) - 1; n >= 0 && w.pend[n].addr+w.pend[n].nr*pageSize == addr &&
			w.pend[n].parent == parent && w.pend[n].lazy == lazy && w.pend[n].force == force {
			w.pend[n].nr += k
		} else {
			w.pend = append(w.pend, incrRun{addr: addr, nr: k, parent: parent, lazy: lazy, force: force})
		}
		if data {
			w.data += k
		}
		w.taken += k
		if err := w.maybeFlush(); err != nil {
			return err
		}
		addr += k * pageSize
		nr -= k
	}
	return nil
}

func (w *incrWriter) maybeFlush() error {
	if w.data >= maxBatchIovs || len(w.pend) >= 1024 {
		return w.flush()
	}
	return nil
}

// flush reads the data runs and sends every run in address order.
func (w *incrWriter) flush() error {
	if len(w.pend) == 0 {
		return nil
	}
	if err := w.read(); err != nil {
		return err
	}
	off := 0
	for _, r := range w.pend {
		if r.parent {
			if err := w.sink.Hole(r.addr, r.nr); err != nil {
				return err
			}
			w.Parent += r.nr
			w.cover(r.addr, r.nr)
			continue
		}
		if r.lazy {
			// Not covered: this pagemap has no data for them.
			if err := w.lazy.lazyPages(r.addr, r.nr); err != nil {
				return err
			}
			continue
		}
		n := int(r.nr * pageSize)
		if r.failed {
			w.Lost += r.nr
			off += n
			continue
		}
		c := pagexfer.NewChunk(w.buf[off : off+n])
		if err := w.sink.AddPages(r.addr, r.nr, images.PagePresent, &c); err != nil {
			return err
		}
		w.stats.Written += r.nr
		w.cover(r.addr, r.nr)
		off += n
	}
	w.pend, w.data = w.pend[:0], 0
	return nil
}

// read loads the data runs of pend into buf, one after the other: the
// unreadable VMAs' runs from /proc/PID/mem, stretches of the others with
// one process_vm_readv each. On a running target (tolerant) a stretch
// that fails is read again run by run, and runs that still fail are
// marked failed.
func (w *incrWriter) read() error {
	var seg []int // indexes in pend of the stretch being collected
	segOff, off := 0, 0
	end := func() error {
		if len(seg) == 0 {
			return nil
		}
		remote := make([]unix.RemoteIovec, 0, len(seg))
		total := 0
		for _, i := range seg {
			n := int(w.pend[i].nr * pageSize)
			remote = append(remote, unix.RemoteIovec{Base: uintptr(w.pend[i].addr), Len: n})
			total += n
		}
		err := readv(w.pid, w.buf[segOff:segOff+total], remote)
		if err != nil && w.tolerant {
			err = nil
			o := segOff
			for _, i := range seg {
				r := &w.pend[i]
				n := int(r.nr * pageSize)
				if readv(w.pid, w.buf[o:o+n], []unix.RemoteIovec{{Base: uintptr(r.addr), Len: n}}) != nil {
					r.failed = true
				}
				o += n
			}
		}
		seg = seg[:0]
		return err
	}
	for i := range w.pend {
		r := &w.pend[i]
		if r.parent || r.lazy {
			continue
		}
		n := int(r.nr * pageSize)
		if r.force {
			if err := end(); err != nil {
				return err
			}
			if err := w.readMem(w.buf[off:off+n], r.addr); err != nil {
				if !w.tolerant {
					return err
				}
				r.failed = true
			}
		} else {
			if len(seg) == 0 {
				segOff = off
			}
			seg = append(seg, i)
		}
		off += n
	}
	return end()
}

func (w *incrWriter) readMem(b []byte, addr uint64) error {
	if w.mem == nil {
		f, err := os.Open(procfs.Path(w.pid, "mem"))
		if err != nil {
			return err
		}
		w.mem = f
	}
	if _, err := w.mem.ReadAt(b, int64(addr)); err != nil {
		return fmt.Errorf("read /proc/%d/mem at %#x: %w", w.pid, addr, err)
	}
	return nil
}

func (w *incrWriter) cover(addr, nr uint64) {
	end := addr + nr*pageSize
	if k := len(w.out) - 1; k >= 0 && w.out[k].End == addr {
		w.out[k].End = end
		return
	}
	w.out = append(w.out, span{Start: addr, End: end})
}

// spans turns VMAs and regions into sorted, merged spans.
func spansOf(vs ...[]uffd.VMA) []span {
	var out []span
	for _, l := range vs {
		for _, v := range l {
			if v.End > v.Start {
				out = append(out, span{Start: v.Start &^ (pageSize - 1), End: (v.End + pageSize - 1) &^ (pageSize - 1)})
			}
		}
	}
	return mergeSpans(out)
}

func regionSpans(rs []uffd.Region) []span {
	out := make([]span, 0, len(rs))
	for _, r := range rs {
		out = append(out, span{Start: r.Start, End: r.End})
	}
	return out
}

func mergeSpans(s []span) []span {
	sort.Slice(s, func(i, j int) bool { return s[i].Start < s[j].Start })
	m := s[:0]
	for _, v := range s {
		if k := len(m) - 1; k >= 0 && v.Start <= m[k].End {
			m[k].End = max(m[k].End, v.End)
			continue
		}
		m = append(m, v)
	}
	return m
}

// trackVMAs are the ranges a round tracks: the private VMAs and the
// mappings of shared memory only mappings can write (predump_shm_linux.go).
func trackVMAs(vmas []VMA) []uffd.VMA {
	var out []uffd.VMA
	for i := range vmas {
		if vmas[i].Private() || trackedShm(&vmas[i]) {
			out = append(out, uffd.VMA{Start: vmas[i].Start, End: vmas[i].End})
		}
	}
	return out
}

// scanDirty runs the tracker for a round and returns the dirty spans: the
// written pages, and every part of the current private VMAs that was not
// tracked continuously since the previous round (new, moved, grown,
// re-registered or untrackable ranges), which is taken whole.
func (t *tracking) scanDirty(vmas []VMA) (dirty []span, tr *uffd.Tracker, res *uffd.ScanResult, err error) {
	pm, err := uffd.OpenPagemap(t.pid)
	if err != nil {
		return nil, nil, nil, err
	}
	defer pm.Close()
	tr, err = uffd.NewTracker(t.u, pm)
	if err != nil {
		return nil, nil, nil, err
	}
	var prev []span
	if !t.fresh {
		tr.Adopt(t.st.Tracked)
		prev = spansOf(t.st.Tracked)
	}
	if t.forks != nil {
		// Read before the scan: a fork after it shows in the next round.
		c, err := readForks(t.forks)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("track %d: %w", t.pid, err)
		}
		t.scanForks, t.forked = c, t.fresh || c != t.st.Forks
	}
	cur := trackVMAs(vmas)
	t.scanned = true
	res, err = tr.Scan(cur)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("track %d: %w", t.pid, err)
	}
	post := spansOf(tr.Tracked())
	steady := uffd.Intersect(prev, post)
	dirty = append(regionSpans(res.Written), spansOf(res.New, res.Untrackable)...)
	dirty = append(dirty, uffd.Subtract(spansOf(cur), steady)...)
	dirty = mergeSpans(dirty)
	t.dirty = dirty
	// The vDSO cannot be registered, and needs no note.
	var odd []uffd.VMA
	var oddErr error
	for i, u := range res.Untrackable {
		if !isSpecial(vmas, u.Start) {
			odd = append(odd, u)
			oddErr = res.UntrackableErr[i]
		}
	}
	if len(odd) > 0 {
		t.note("%d range(s) cannot be tracked (e.g. %v: %v): taken whole every round", len(odd), odd[0], oddErr)
	}
	return dirty, tr, res, nil
}

// isSpecial tells whether addr lies in the vDSO or vvar.
func isSpecial(vmas []VMA, addr uint64) bool {
	for i := range vmas {
		if v := &vmas[i]; v.Start <= addr && addr < v.End {
			return v.Status&(images.VmaAreaVdso|images.VmaAreaVvar) != 0
		}
	}
	return false
}

// roundVMAs lists a running target's mappings for a pre-dump round from
// /proc/PID/maps, which is cheap (smaps walks every page table to count
// RSS: ~100 ms for 1 GiB): a round needs only the ranges, protection and
// kind (private, shared anonymous, special).
func roundVMAs(pid int) ([]VMA, error) {
	ms, err := procfs.ReadMaps(pid)
	if err != nil {
		return nil, err
	}
	out := make([]VMA, 0, len(ms))
	for i := range ms {
		m := &ms[i]
		v := VMA{Start: m.Start, End: m.End, Path: m.Path, Status: images.VmaAreaRegular}
		if m.Read {
			v.Prot |= unix.PROT_READ
		}
		if m.Write {
			v.Prot |= unix.PROT_WRITE
		}
		if m.Exec {
			v.Prot |= unix.PROT_EXEC
		}
		switch {
		case m.Path == "[vdso]":
			v.Status |= images.VmaAreaVdso
		case m.Path == "[vvar]" || m.Path == "[vvar_vclock]" || m.Path == "[vsyscall]":
			v.Status |= images.VmaAreaVvar
		case m.IsAnon() && !m.Shared:
			v.Status |= images.VmaAnonPrivate
		case m.Shared && (m.IsAnon() || m.Path == "/dev/zero" || strings.HasPrefix(m.Path, "/memfd:") ||
			strings.HasPrefix(m.Path, "[anon_shmem:") || strings.HasPrefix(m.Path, "/SYSV")):
			v.Status |= images.VmaAnonShared
			v.Shmid, v.Pgoff = m.Inode, m.Offset
		case m.Shared:
			v.Status |= images.VmaFileShared
		default:
			v.Status |= images.VmaFilePrivate
		}
		out = append(out, v)
	}
	return out, nil
}
