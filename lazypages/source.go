package lazypages

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	"godwit/internal/images"
	"godwit/internal/pagexfer"
	"godwit/pageserver"
)

// pagemap classifies the dumped pages of one task and reads local data.
type pagemap struct {
	pid    int
	ranges []images.PageRange
	pr     *images.PageReader // nil when pages come from a page server
	// chain, for an incremental dump read locally, resolves the PARENT
	// entries: ranges are then its runs, each read from level[i].
	chain *pagexfer.Chain
	level []int
}

// entry returns the index of the pagemap entry holding src, or -1 when the
// dump has no data there (a page never written: zero).
func (p *pagemap) entry(src uint64) int {
	n := len(p.ranges)
	i := sort.Search(n, func(i int) bool { return p.ranges[i].End() > src })
	if i < n && p.ranges[i].Vaddr <= src {
		return i
	}
	return -1
}

// checkRanges refuses lazy ranges whose dumped pages godwit cannot serve.
func (p *pagemap) checkRanges(rs [][2]uint64, remote bool) error {
	for _, e := range p.ranges {
		for _, r := range rs {
			if e.End() <= r[0] || e.Vaddr >= r[1] {
				continue
			}
			switch {
			case e.Flags&images.PageInParent != 0:
				return fmt.Errorf("pagemap-%d.img: pages at %#x are in a parent image: a page server cannot serve an incremental dump lazily yet (run lazy-pages where the images chain is)", p.pid, e.Vaddr)
			case !e.Present() && e.Flags&images.PageLazy == 0:
				return fmt.Errorf("pagemap-%d.img: entry at %#x has neither data nor the lazy flag (flags %#x)", p.pid, e.Vaddr, e.Flags)
			case !e.Present() && !remote:
				return fmt.Errorf("pagemap-%d.img: pages at %#x are on the dumping host (dump --lazy-pages): use lazy-pages --page-server", p.pid, e.Vaddr)
			}
		}
	}
	return nil
}

// source reads the data of dumped pages: from the local pages image, or
// from a page server's GET.
type source interface {
	// read fills b (whole pages) with the pages dumped at src by task
	// pid; the span lies within one pagemap entry.
	read(pm *pagemap, src uint64, b []byte) error
	// send asks for n pages at src ahead of their use; recv then fills b
	// with the pages of the oldest run asked (in the order sent) and
	// returns how many came: as many as asked, or fewer if the source
	// keeps them in several pieces (the rest stays to be asked again).
	// One goroutine may send while another receives.
	send(pm *pagemap, src, n uint64) error
	recv(pm *pagemap, src uint64, b []byte) (uint64, error)
	close(complete bool) error
}

type localSource struct{}

func (localSource) read(pm *pagemap, src uint64, b []byte) error {
	if pm.pr == nil {
		return errors.New("no local pages image")
	}
	var n int
	var err error
	if pm.chain != nil {
		i := pm.entry(src)
		if i < 0 {
			return fmt.Errorf("no pages at %#x in the chain", src)
		}
		n, err = pm.chain.ReadAt(pm.level[i], b, src)
	} else {
		n, err = pm.pr.ReadAt(b, src)
	}
	if err == nil && n < len(b) {
		err = fmt.Errorf("short read %d of %d bytes", n, len(b))
	}
	return err
}

func (localSource) send(*pagemap, uint64, uint64) error { return nil }

func (l localSource) recv(pm *pagemap, src uint64, b []byte) (uint64, error) {
	if err := l.read(pm, src, b); err != nil {
		return 0, err
	}
	return uint64(len(b)) / pageSize, nil
}

func (localSource) close(bool) error { return nil }

// remoteSource asks a page server. It holds its own connection so that the
// fault path and the background push do not wait for each other.
type remoteSource struct {
	mu sync.Mutex
	c  *pageserver.Client
}

func dialSource(ctx context.Context, addr string, o pageserver.TransportOptions) (*remoteSource, error) {
	c, err := pageserver.Dial(ctx, addr, o)
	if err != nil {
		return nil, err
	}
	return &remoteSource{c: c}, nil
}

func (s *remoteSource) read(pm *pagemap, src uint64, b []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(b) > 0 {
		nr := uint64(len(b)) / pageSize
		got, err := s.c.Get(pm.pid, src, nr, b)
		if errors.Is(err, pageserver.ErrNoPages) {
			return fmt.Errorf("the page server has no pages at %#x of pid %d", src, pm.pid)
		}
		if err != nil {
			return err
		}
		b = b[got*pageSize:]
		src += got * pageSize
	}
	return nil
}

func (s *remoteSource) send(pm *pagemap, src, n uint64) error {
	return s.c.SendGet(pm.pid, src, n)
}

func (s *remoteSource) recv(pm *pagemap, src uint64, b []byte) (uint64, error) {
	pid, vaddr, got, err := s.c.RecvGet(b)
	if err == nil && (pid != pm.pid || vaddr != src) {
		err = fmt.Errorf("page server: reply to GET %#x of pid %d where %#x of pid %d was expected", vaddr, pid, src, pm.pid)
	}
	if errors.Is(err, pageserver.ErrNoPages) {
		return 0, fmt.Errorf("the page server has no pages at %#x of pid %d", src, pm.pid)
	}
	return got, err
}

// close ends the session: with CLOSE (the source may go) when every page
// is in, else by dropping the connection.
func (s *remoteSource) close(complete bool) error {
	if !complete {
		s.c.Abort()
		return nil
	}
	return s.c.Close()
}

// openPagemap reads a task's pagemap; with local data it also opens (and
// checks) the pages image.
func openPagemap(d *images.Dir, pid int, local bool) (*pagemap, error) {
	name := images.PagemapImg(pid)
	pm := &pagemap{pid: pid}
	if local {
		pr, err := images.OpenPages(d, name)
		if err != nil {
			return nil, err
		}
		pm.pr = pr
		if pagexfer.NeedsParent(pr) {
			return pm, pm.openChain(d, name)
		}
		for e := range pr.Ranges() {
			pm.ranges = append(pm.ranges, e)
		}
		return pm, nil
	}
	f, err := d.OpenRead(name)
	if err != nil {
		return nil, fmt.Errorf("lazy-pages: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	_, pm.ranges, err = images.ReadPagemap(f, name, st.Size())
	if err != nil {
		return nil, err
	}
	return pm, nil
}

// openChain resolves an incremental dump's pagemap through its parent
// images: the pages are served from whichever level holds them.
func (pm *pagemap) openChain(d *images.Dir, name string) error {
	for e := range pm.pr.Ranges() {
		if !e.Present() && e.Flags&images.PageInParent == 0 && e.Flags&images.PageLazy != 0 {
			return fmt.Errorf("%s: pages at %#x are on the dumping host and others in the parent images: a lazy dump on top of pre-dump rounds is not supported yet", name, e.Vaddr)
		}
	}
	c, err := pagexfer.OpenChain(d, name, pm.pr)
	if err != nil {
		return err
	}
	pm.chain = c
	for _, r := range c.Runs() {
		pm.ranges = append(pm.ranges, images.PageRange{Vaddr: r.Vaddr, NrPages: r.NrPages, Flags: images.PagePresent, Offset: r.Offset})
		pm.level = append(pm.level, r.Level)
	}
	return nil
}

// close releases the pages image and the chain's parents.
func (pm *pagemap) close() {
	if pm.chain != nil {
		pm.chain.Close()
		pm.chain = nil
	}
	if pm.pr != nil {
		pm.pr.Close()
		pm.pr = nil
	}
}
