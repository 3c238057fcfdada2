package restorer

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"

	"golang.org/x/sys/unix"

	"godwit/internal/images"
	"godwit/internal/model"
	"godwit/internal/pagexfer"
	"godwit/uffd"
)

// LazySocketName is the lazy-pages daemon's socket in the work directory
// (CRIU's name; the daemon listens there).
const LazySocketName = "lazy-pages.socket"

// lazyVMA is CRIU's rule for memory that may come lazily: private
// anonymous, not locked, not huge pages, not a stack (no thread's stack
// pointer in it: the restore and the first instructions touch it), not
// vDSO/vvar/vsyscall or a shadow stack.
func lazyVMA(v *model.VMA, sps []uint64) bool {
	if v.Status&images.VmaAnonPrivate == 0 ||
		v.Status&(images.VmaAreaStack|images.VmaAreaVdso|images.VmaAreaVvar|images.VmaAreaVsyscall|images.VmaAreaShstk|images.VmaAreaSysvipc|images.VmaAreaAioring) != 0 ||
		v.Flags&(unix.MAP_LOCKED|unix.MAP_HUGETLB|unix.MAP_GROWSDOWN) != 0 {
		return false
	}
	for _, sp := range sps {
		if sp >= v.Start && sp < v.End {
			return false
		}
	}
	return true
}

// lazyRanges are the VMAs a lazy restore leaves to the daemon, ascending.
func (r *taskRun) lazyRanges() []uffd.Range {
	var sps []uint64
	for _, t := range r.img.threads {
		sps = append(sps, t.Regs.Rsp)
	}
	var out []uffd.Range
	for i := range r.img.mm.VMAs {
		v := &r.img.mm.VMAs[i]
		if lazyVMA(v, sps) {
			out = append(out, uffd.Range{Start: v.Start, End: v.End})
		}
	}
	return out
}

// privatePages is the source of the private pages Layout fills. Without
// --lazy-pages a dump whose pages stayed on the dumping host (dump
// --lazy-pages: lazy entries without data) is refused rather than
// restored with zeros; with it, the pages of lazy VMAs are left out.
func (r *taskRun) privatePages() (pagexfer.Source, error) {
	pr := r.img.pages
	if !r.o.LazyPages {
		for e := range pr.Ranges() {
			if !e.Present() && e.Flags&images.PageLazy != 0 {
				return nil, fmt.Errorf("%s: pages %#x-%#x were left on the dumping host (dump --lazy-pages): restore them with --lazy-pages and a lazy-pages daemon",
					images.PagemapImg(r.img.pid), e.Vaddr, e.End())
			}
		}
		return r.img.imageSource(), nil
	}
	lazy := r.lazyRanges()
	if r.img.chain != nil {
		// An incremental dump: the pages outside lazy VMAs now, read
		// through the parent images; the daemon serves the rest, from
		// the same chain or (pages left lazy on the dumping host: a
		// lazy dump on top of pre-dump rounds) from the page server.
		for e := range pr.Ranges() {
			if !e.Present() && e.Flags&images.PageLazy != 0 && e.Flags&images.PageInParent == 0 &&
				lazyCovered(lazy, e.Vaddr, e.End()) != e.End()-e.Vaddr {
				return nil, fmt.Errorf("%s: pages %#x-%#x are on the dumping host but not in a VMA that can be restored lazily",
					images.PagemapImg(r.img.pid), e.Vaddr, e.End())
			}
		}
		rs := make([][2]uint64, len(lazy))
		for i, l := range lazy {
			rs[i] = [2]uint64{l.Start, l.End}
		}
		return r.img.chain.SourceExcept(rs), nil
	}
	s := &clippedSource{pr: pr}
	for e := range pr.Ranges() {
		in := lazyCovered(lazy, e.Vaddr, e.End())
		if !e.Present() {
			if e.Flags&images.PageLazy != 0 && in != e.End()-e.Vaddr {
				return nil, fmt.Errorf("%s: pages %#x-%#x are on the dumping host but not in a VMA that can be restored lazily",
					images.PagemapImg(r.img.pid), e.Vaddr, e.End())
			}
			continue
		}
		// The present parts outside lazy VMAs are filled now.
		for a := e.Vaddr; a < e.End(); {
			lo, hi := nextOutside(lazy, a, e.End())
			if lo >= hi {
				break
			}
			s.runs = append(s.runs, images.PageRange{Vaddr: lo, NrPages: (hi - lo) / pageSize, Flags: e.Flags,
				Offset: e.Offset + int64(lo-e.Vaddr)})
			a = hi
		}
	}
	return s, nil
}

// lazyCovered is how many bytes of [lo, hi) lie in the ranges.
func lazyCovered(rs []uffd.Range, lo, hi uint64) uint64 {
	var n uint64
	for _, r := range rs {
		a, b := max(lo, r.Start), min(hi, r.End)
		if a < b {
			n += b - a
		}
	}
	return n
}

// nextOutside returns the first stretch of [a, end) outside the ranges.
func nextOutside(rs []uffd.Range, a, end uint64) (uint64, uint64) {
	i := sort.Search(len(rs), func(i int) bool { return rs[i].End > a })
	for ; i < len(rs) && rs[i].Start <= a; i++ {
		a = max(a, rs[i].End)
	}
	if a >= end {
		return end, end
	}
	hi := end
	if i < len(rs) && rs[i].Start < hi {
		hi = rs[i].Start
	}
	return a, hi
}

// clippedSource serves a pagemap's present pages restricted to runs.
type clippedSource struct {
	pr   *images.PageReader
	runs []images.PageRange
	i    int
	cur  images.PageRange
	done int64
}

func (s *clippedSource) Next() (uint64, uint64, error) {
	if s.i >= len(s.runs) {
		return 0, 0, io.EOF
	}
	s.cur, s.done = s.runs[s.i], 0
	s.i++
	return s.cur.Vaddr, s.cur.NrPages, nil
}

func (s *clippedSource) Read(b []byte) (int, error) {
	left := int64(s.cur.NrPages*pageSize) - s.done
	if left <= 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > left {
		b = b[:left]
	}
	n, err := s.pr.ReadAt(b, s.cur.Vaddr+uint64(s.done))
	s.done += int64(n)
	return n, err
}

func (s *clippedSource) RunFile() (*os.File, int64) {
	return s.pr.PagesFile(), s.cur.Offset + s.done
}

// lazyHandoff registers the lazy VMAs of each task, still empty, in
// MISSING mode with a userfaultfd made in the task, and hands it to the
// lazy-pages daemon, which serves the task from then on (Finalize's own
// accesses included). Every task of the tree exists by now: no fork is
// left for the uffds to follow into a half-made child.
func (r *Restorer) lazyHandoff() error {
	if !r.o.LazyPages {
		return nil
	}
	if r.o.LazyReady != nil {
		if err := r.o.LazyReady(); err != nil {
			return r.fail("lazy pages", err)
		}
	}
	for _, t := range r.tasks {
		if t.img.dead() {
			continue
		}
		if err := t.handoff(); err != nil {
			return r.fail(fmt.Sprintf("task %d: lazy pages", t.img.pid), err)
		}
	}
	return nil
}

func (r *taskRun) handoff() error {
	dir := r.o.WorkDir
	if dir == "" {
		dir = r.o.ImagesDir
	}
	path := filepath.Join(dir, LazySocketName)
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return fmt.Errorf("no lazy-pages daemon at %s (start `godwit lazy-pages -D %s` first): %w", path, r.o.ImagesDir, err)
	}
	defer c.Close()
	pid := r.img.pid
	s, err := r.begin(pid)
	if err != nil {
		return err
	}
	tfd, err := s.Call("userfaultfd", unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK)
	if err != nil {
		return s.End(err)
	}
	u, err := uffd.OpenRemote(pid, int(tfd))
	if _, cerr := s.Call("close userfaultfd", unix.SYS_CLOSE, tfd); cerr != nil && err == nil {
		err = cerr
	}
	if err = s.End(err); err != nil {
		if u != nil {
			u.Close()
		}
		return err
	}
	defer u.Close()
	feats, err := u.API(uffd.FeatureNonCoop)
	if err != nil {
		return err
	}
	h := uffd.Handoff{Pid: pid, Features: feats, Ranges: r.lazyRanges()}
	for _, rg := range h.Ranges {
		if _, err := u.Register(rg.Start, rg.End-rg.Start, uffd.ModeMissing); err != nil {
			return err
		}
	}
	if err := checkUnpopulated(pid, h.Ranges); err != nil {
		return err
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var herr error
	if cerr := rc.Control(func(fd uintptr) {
		unix.SetNonblock(int(fd), false)
		herr = uffd.SendHandoff(int(fd), h, u.Fd())
	}); cerr != nil {
		return cerr
	}
	if herr == nil {
		r.log.Infof("restore %d: %d lazy ranges handed to the lazy-pages daemon", pid, len(h.Ranges))
	}
	return herr
}

// checkUnpopulated refuses lazy ranges with pages already in: a
// MISSING-mode uffd never hears of them, so the daemon could not put the
// dumped data there.
func checkUnpopulated(pid int, rs []uffd.Range) error {
	pm, err := uffd.OpenPagemap(pid)
	if err != nil {
		return err
	}
	defer pm.Close()
	for _, rg := range rs {
		out, err := pm.Scan(uffd.ScanArgs{Start: rg.Start, End: rg.End, MaxPages: 1,
			CategoryAnyof: uffd.PageIsPresent | uffd.PageIsSwapped, ReturnMask: uffd.PageIsPresent | uffd.PageIsSwapped}, nil)
		if err != nil {
			return err
		}
		if len(out) > 0 {
			return fmt.Errorf("lazy vma %#x-%#x: page %#x is populated before the lazy-pages daemon took over", rg.Start, rg.End, out[0].Start)
		}
	}
	return nil
}
