package pagexfer

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"godwit/internal/images"
)

// ParentLink is the name of the link to the parent images, as CRIU's.
const ParentLink = "parent"

// maxChain bounds how many parents a chain may have (a link cycle ends
// there with an error).
const maxChain = 1024

// Chain is one pagemap and the parent images its PARENT entries resolve in
// (CRIU's incremental dumps: each images directory links its parent with
// a "parent" symlink; an entry flagged PARENT means "these pages are as in
// the parent's pagemap of the same name").
type Chain struct {
	name   string
	levels []*images.PageReader // [0]: the top
	dirs   []*images.Dir        // dirs[i] holds levels[i]; dirs[0] is the caller's
	runs   []ChainRun
}

// ChainRun is a stretch of pages and the level whose pages file holds it.
type ChainRun struct {
	Vaddr, NrPages uint64
	Level          int
	Offset         int64 // in that level's pages file
}

// OpenChain resolves top (pagemapName read from d) through the parents
// its PARENT entries need. Every PARENT page must be found with data in
// some parent, or OpenChain fails naming it. The Chain closes the parents
// it opened, not top.
func OpenChain(d *images.Dir, pagemapName string, top *images.PageReader) (*Chain, error) {
	c := &Chain{name: pagemapName, levels: []*images.PageReader{top}, dirs: []*images.Dir{d}}
	for {
		last := c.levels[len(c.levels)-1]
		if !hasParentEntries(last) {
			break
		}
		if len(c.levels) > maxChain {
			c.Close()
			return nil, fmt.Errorf("%s: more than %d parent images (a link cycle?)", pagemapName, maxChain)
		}
		pd, err := c.dirs[len(c.dirs)-1].OpenSubdir(ParentLink)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("%s: pages in the parent images, but: %w", pagemapName, err)
		}
		pr, err := images.OpenPages(pd, pagemapName)
		if err != nil {
			pd.Close()
			c.Close()
			return nil, fmt.Errorf("%s: parent images %s: %w", pagemapName, pd.Path(), err)
		}
		c.dirs = append(c.dirs, pd)
		c.levels = append(c.levels, pr)
	}
	for p := range top.Ranges() {
		var err error
		switch {
		case p.Present():
			c.runs = append(c.runs, ChainRun{Vaddr: p.Vaddr, NrPages: p.NrPages, Offset: p.Offset})
		case p.Flags&images.PageInParent != 0:
			err = c.resolve(1, p.Vaddr, p.End())
		}
		if err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

func hasParentEntries(pr *images.PageReader) bool {
	for p := range pr.Ranges() {
		if p.Flags&images.PageInParent != 0 {
			return true
		}
	}
	return false
}

// resolve finds [a, b) in level l.
func (c *Chain) resolve(l int, a, b uint64) error {
	if l >= len(c.levels) {
		return fmt.Errorf("%s: pages %#x-%#x are in no parent images", c.name, a, b)
	}
	pr := c.levels[l]
	i := sort.Search(pr.Len(), func(i int) bool { return pr.Range(i).End() > a })
	cur := a
	for ; cur < b && i < pr.Len(); i++ {
		e := pr.Range(i)
		if e.Vaddr > cur {
			break
		}
		t := min(b, e.End())
		switch {
		case e.Present():
			c.runs = append(c.runs, ChainRun{Vaddr: cur, NrPages: (t - cur) / images.PageSize, Level: l,
				Offset: e.Offset + int64(cur-e.Vaddr)})
		case e.Flags&images.PageInParent != 0:
			if err := c.resolve(l+1, cur, t); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: pages %#x-%#x: the parent images in %s hold no data for them", c.name, cur, t, c.dirs[l].Path())
		}
		cur = t
	}
	if cur < b {
		return fmt.Errorf("%s: pages %#x-%#x are not in the parent images in %s", c.name, cur, b, c.dirs[l].Path())
	}
	return nil
}

// Depth is the number of images directories the chain reads (1: no parent).
func (c *Chain) Depth() int { return len(c.levels) }

// Runs are the resolved stretches, in address order.
func (c *Chain) Runs() []ChainRun { return c.runs }

// Close closes the parents the chain opened.
func (c *Chain) Close() error {
	var errs []error
	for i := 1; i < len(c.levels); i++ {
		errs = append(errs, c.levels[i].Close())
	}
	for i := 1; i < len(c.dirs); i++ {
		errs = append(errs, c.dirs[i].Close())
	}
	c.levels, c.dirs = c.levels[:1], c.dirs[:1]
	return errors.Join(errs...)
}

// Source returns a Source over the resolved pages (with FileRuns).
func (c *Chain) Source() *ChainSource { return &ChainSource{c: c, runs: c.runs, i: -1} }

// SourceRange is Source clipped to [lo, hi): the part of a shared
// object's pagemap one mapping shows.
func (c *Chain) SourceRange(lo, hi uint64) *ChainSource {
	var runs []ChainRun
	for _, r := range c.runs {
		a, b := max(r.Vaddr, lo), min(r.Vaddr+r.NrPages*images.PageSize, hi)
		if a >= b {
			continue
		}
		runs = append(runs, ChainRun{Vaddr: a, NrPages: (b - a) / images.PageSize, Level: r.Level, Offset: r.Offset + int64(a-r.Vaddr)})
	}
	return &ChainSource{c: c, runs: runs, i: -1}
}

// ReadAt reads the pages at vaddr from the pages file of level l (a run's
// Level): b must lie within one entry of that level's pagemap.
func (c *Chain) ReadAt(l int, b []byte, vaddr uint64) (int, error) {
	if l < 0 || l >= len(c.levels) {
		return 0, fmt.Errorf("%s: no level %d in the chain", c.name, l)
	}
	return c.levels[l].ReadAt(b, vaddr)
}

// SourceExcept is Source without the pages in rs (sorted, disjoint
// [start, end) ranges): e.g. those a lazy restore leaves to its daemon.
func (c *Chain) SourceExcept(rs [][2]uint64) *ChainSource {
	var runs []ChainRun
	for _, r := range c.runs {
		end := r.Vaddr + r.NrPages*images.PageSize
		for a := r.Vaddr; a < end; {
			i := sort.Search(len(rs), func(i int) bool { return rs[i][1] > a })
			if i < len(rs) && rs[i][0] <= a {
				a = rs[i][1]
				continue
			}
			b := end
			if i < len(rs) && rs[i][0] < b {
				b = rs[i][0]
			}
			runs = append(runs, ChainRun{Vaddr: a, NrPages: (b - a) / images.PageSize, Level: r.Level, Offset: r.Offset + int64(a-r.Vaddr)})
			a = b
		}
	}
	return &ChainSource{c: c, runs: runs, i: -1}
}

// SourceRangeExcept is SourceExcept(rs) clipped to [lo, hi): the part of
// a shared object's pagemap one mapping shows, without what is already in.
func (c *Chain) SourceRangeExcept(lo, hi uint64, rs [][2]uint64) *ChainSource {
	s := c.SourceExcept(rs)
	var runs []ChainRun
	for _, r := range s.runs {
		a, b := max(r.Vaddr, lo), min(r.Vaddr+r.NrPages*images.PageSize, hi)
		if a < b {
			runs = append(runs, ChainRun{Vaddr: a, NrPages: (b - a) / images.PageSize, Level: r.Level, Offset: r.Offset + int64(a-r.Vaddr)})
		}
	}
	s.runs = runs
	return s
}

// NeedsParent tells whether pr has entries kept in the parent images (an
// incremental dump: read it through OpenChain).
func NeedsParent(pr *images.PageReader) bool { return hasParentEntries(pr) }

// ChainSource yields a Chain's pages, each run read from the level that
// holds it.
type ChainSource struct {
	c    *Chain
	runs []ChainRun
	i    int
	done int64
}

var (
	_ Source   = (*ChainSource)(nil)
	_ FileRuns = (*ChainSource)(nil)
)

// Next implements Source.
func (s *ChainSource) Next() (uint64, uint64, error) {
	s.i++
	s.done = 0
	if s.i >= len(s.runs) {
		return 0, 0, io.EOF
	}
	r := s.runs[s.i]
	return r.Vaddr, r.NrPages, nil
}

// Read implements Source.
func (s *ChainSource) Read(b []byte) (int, error) {
	if s.i < 0 || s.i >= len(s.runs) {
		return 0, io.EOF
	}
	r := s.runs[s.i]
	left := int64(r.NrPages*images.PageSize) - s.done
	if left <= 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > left {
		b = b[:left]
	}
	n, err := s.c.levels[r.Level].ReadAt(b, r.Vaddr+uint64(s.done))
	s.done += int64(n)
	return n, err
}

// RunFile implements FileRuns.
func (s *ChainSource) RunFile() (*os.File, int64) {
	r := s.runs[s.i]
	return s.c.levels[r.Level].PagesFile(), r.Offset + s.done
}

// punch frees [off, off+n) of level l's pages file (the file keeps its
// size; the range reads as zeros).
func (c *Chain) punch(l int, off, n int64) error {
	pr := c.levels[l]
	name := images.PagesImg(pr.PagesID())
	f, err := c.dirs[l].OpenFile(name, unix.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n); err != nil {
		return fmt.Errorf("punch %s at %d+%d: %w", name, off, n, err)
	}
	return nil
}

// PunchResolved frees the data of every resolved run in its pages file:
// a restore with --auto-dedup, once the pages are in the task.
func (c *Chain) PunchResolved() error {
	for _, r := range c.runs {
		if err := c.punch(r.Level, r.Offset, int64(r.NrPages*images.PageSize)); err != nil {
			return err
		}
	}
	return nil
}

// DedupStats counts what Dedup freed.
type DedupStats struct {
	Pagemaps int
	Pages    uint64 // pages punched out of parent images
}

// Dedup punches out of d's parent images every page that a newer image
// of the chain replaces (CRIU's dedup): the chain from d still restores
// the same, the parents alone no longer do.
func Dedup(d *images.Dir) (DedupStats, error) {
	var st DedupStats
	names, err := d.List()
	if err != nil {
		return st, err
	}
	sort.Strings(names)
	for _, n := range names {
		if !strings.HasPrefix(n, "pagemap-") || !strings.HasSuffix(n, ".img") {
			continue
		}
		k, err := dedupOne(d, n)
		st.Pages += k
		if err != nil {
			return st, err
		}
		st.Pagemaps++
	}
	return st, nil
}

func dedupOne(d *images.Dir, name string) (uint64, error) {
	top, err := images.OpenPages(d, name)
	if err != nil {
		return 0, err
	}
	defer top.Close()
	// Every parent level, whether or not the top still refers to it.
	c := &Chain{name: name, levels: []*images.PageReader{top}, dirs: []*images.Dir{d}}
	defer c.Close()
	// A level met twice (a parent link pointing back into the chain)
	// would have all its pages "replaced" by itself and punched out:
	// such a chain is refused, as OpenChain refuses it.
	seen := map[[2]uint64]bool{}
	id, err := dirID(d)
	if err != nil {
		return 0, err
	}
	seen[id] = true
	for len(c.levels) <= maxChain {
		pd, err := c.dirs[len(c.dirs)-1].OpenSubdir(ParentLink)
		if err != nil {
			break // no (further) parent
		}
		id, err := dirID(pd)
		if err != nil || seen[id] {
			pd.Close()
			if err == nil {
				err = fmt.Errorf("parent image %d is an image of the chain again (a link cycle)", len(c.levels))
			}
			return 0, fmt.Errorf("dedup %s: %w", name, err)
		}
		seen[id] = true
		pr, err := images.OpenPages(pd, name)
		if err != nil {
			pd.Close()
			break // the parent has no such pagemap
		}
		c.dirs = append(c.dirs, pd)
		c.levels = append(c.levels, pr)
	}
	var replaced []ChainRun // as Vaddr/NrPages spans, sorted, merged
	var punched uint64
	for l, pr := range c.levels {
		var present []ChainRun
		for p := range pr.Ranges() {
			if p.Present() {
				present = append(present, ChainRun{Vaddr: p.Vaddr, NrPages: p.NrPages, Offset: p.Offset})
			}
		}
		if l > 0 {
			for _, p := range present {
				for _, x := range overlap(p, replaced) {
					if err := c.punch(l, p.Offset+int64(x.Vaddr-p.Vaddr), int64(x.NrPages*images.PageSize)); err != nil {
						return punched, err
					}
					punched += x.NrPages
				}
			}
		}
		replaced = mergeRuns(append(replaced, present...))
	}
	return punched, nil
}

// overlap returns the parts of p inside the sorted, merged spans.
func overlap(p ChainRun, spans []ChainRun) []ChainRun {
	end := p.Vaddr + p.NrPages*images.PageSize
	i := sort.Search(len(spans), func(i int) bool { return spans[i].Vaddr+spans[i].NrPages*images.PageSize > p.Vaddr })
	var out []ChainRun
	for ; i < len(spans) && spans[i].Vaddr < end; i++ {
		s := max(p.Vaddr, spans[i].Vaddr)
		e := min(end, spans[i].Vaddr+spans[i].NrPages*images.PageSize)
		if s < e {
			out = append(out, ChainRun{Vaddr: s, NrPages: (e - s) / images.PageSize})
		}
	}
	return out
}

func mergeRuns(rs []ChainRun) []ChainRun {
	sort.Slice(rs, func(i, j int) bool { return rs[i].Vaddr < rs[j].Vaddr })
	m := rs[:0]
	for _, r := range rs {
		r.Offset, r.Level = 0, 0
		if k := len(m) - 1; k >= 0 && r.Vaddr <= m[k].Vaddr+m[k].NrPages*images.PageSize {
			e := max(m[k].Vaddr+m[k].NrPages*images.PageSize, r.Vaddr+r.NrPages*images.PageSize)
			m[k].NrPages = (e - m[k].Vaddr) / images.PageSize
			continue
		}
		m = append(m, r)
	}
	return m
}

// dirID is a directory's device and inode, which name it whatever the
// path that led there.
func dirID(d *images.Dir) ([2]uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(d.FD(), &st); err != nil {
		return [2]uint64{}, fmt.Errorf("stat %s: %w", d.Path(), err)
	}
	return [2]uint64{st.Dev, st.Ino}, nil
}

// CheckParent refuses parent as the parent image of top when the chain
// through it comes back to top or to itself: a dump on such a chain would
// leave its pages to itself, and a dedup would punch them all.
func CheckParent(top, parent *images.Dir) error {
	seen := map[[2]uint64]bool{}
	id, err := dirID(top)
	if err != nil {
		return err
	}
	seen[id] = true
	d := parent
	for n := 1; n <= maxChain; n++ {
		id, err := dirID(d)
		if err != nil {
			return err
		}
		if seen[id] {
			return fmt.Errorf("parent image %d of %s is an image of the chain again (a link cycle)", n, top.Path())
		}
		seen[id] = true
		next, err := d.OpenSubdir(ParentLink)
		if d != parent {
			d.Close()
		}
		if err != nil {
			return nil // the chain ends
		}
		d = next
	}
	if d != parent {
		d.Close()
	}
	return fmt.Errorf("%s: more than %d parent images", top.Path(), maxChain)
}
