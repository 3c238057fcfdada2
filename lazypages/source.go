package lazypages

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"godwit/internal/images"
	"godwit/internal/pagexfer"
	"godwit/pageserver"
)

// remoteLevel marks a pagemap range whose data comes from the page server.
const remoteLevel = -1

// pagemap classifies the dumped pages of one task and says where each
// range's data is: in a level of the local images chain (0: the dump's
// own pages image, 1: its parent...) or on the page server.
type pagemap struct {
	pid    int
	ranges []images.PageRange
	// level[i] is where ranges[i] is read: a chain level, or remoteLevel.
	level []int
	pr    *images.PageReader // the local pages image; nil when none is read
	// chain, for an incremental dump, resolves the PARENT entries
	// through the local parent images.
	chain *pagexfer.Chain
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
	for i, e := range p.ranges {
		for _, r := range rs {
			if e.End() <= r[0] || e.Vaddr >= r[1] {
				continue
			}
			if p.level[i] != remoteLevel {
				continue // resolved in the local images
			}
			switch {
			case !remote && e.Flags&images.PageLazy != 0:
				return fmt.Errorf("pagemap-%d.img: pages at %#x are on the dumping host (dump --lazy-pages): use lazy-pages --page-server", p.pid, e.Vaddr)
			case !remote:
				return fmt.Errorf("pagemap-%d.img: pages at %#x have no data in the local images (flags %#x)", p.pid, e.Vaddr, e.Flags)
			case !e.Present() && e.Flags&(images.PageLazy|images.PageInParent) == 0:
				return fmt.Errorf("pagemap-%d.img: entry at %#x has neither data nor the lazy or parent flag (flags %#x)", p.pid, e.Vaddr, e.Flags)
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
	i := pm.entry(src)
	if i < 0 || pm.level[i] == remoteLevel {
		return fmt.Errorf("no local pages at %#x", src)
	}
	var n int
	var err error
	switch {
	case pm.chain != nil:
		n, err = pm.chain.ReadAt(pm.level[i], b, src)
	case pm.pr != nil:
		n, err = pm.pr.ReadAt(b, src)
	default:
		return errors.New("no local pages image")
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

// tieredSource reads each range where its pagemap says it is: the local
// images (the dump, its parent images) or the page server (remote, nil
// without one). It counts the pages each side gave.
type tieredSource struct {
	remote     source
	local, far atomic.Uint64
}

func (s *tieredSource) read(pm *pagemap, src uint64, b []byte) error {
	if i := pm.entry(src); i >= 0 && pm.level[i] != remoteLevel {
		if err := (localSource{}).read(pm, src, b); err != nil {
			return err
		}
		s.local.Add(uint64(len(b)) / pageSize)
		return nil
	}
	if s.remote == nil {
		return fmt.Errorf("pages at %#x of pid %d are not in the local images, and there is no page server", src, pm.pid)
	}
	if err := s.remote.read(pm, src, b); err != nil {
		return err
	}
	s.far.Add(uint64(len(b)) / pageSize)
	return nil
}

// local reports whether the pages at src are in the local images.
func (s *tieredSource) isLocal(pm *pagemap, src uint64) bool {
	i := pm.entry(src)
	return i >= 0 && pm.level[i] != remoteLevel
}

func (s *tieredSource) send(pm *pagemap, src, n uint64) error {
	if s.isLocal(pm, src) {
		return nil // read when received
	}
	if s.remote == nil {
		return fmt.Errorf("pages at %#x of pid %d are not in the local images, and there is no page server", src, pm.pid)
	}
	return s.remote.send(pm, src, n)
}

func (s *tieredSource) recv(pm *pagemap, src uint64, b []byte) (uint64, error) {
	if s.isLocal(pm, src) {
		if err := (localSource{}).read(pm, src, b); err != nil {
			return 0, err
		}
		s.local.Add(uint64(len(b)) / pageSize)
		return uint64(len(b)) / pageSize, nil
	}
	if s.remote == nil {
		return 0, fmt.Errorf("pages at %#x of pid %d are not in the local images, and there is no page server", src, pm.pid)
	}
	got, err := s.remote.recv(pm, src, b)
	s.far.Add(got)
	return got, err
}

func (s *tieredSource) close(complete bool) error {
	if s.remote == nil {
		return nil
	}
	return s.remote.close(complete)
}

// pagesFrom sums what the sources read locally and remotely.
func pagesFrom(ss ...source) (local, remote uint64) {
	for _, s := range ss {
		if t, ok := s.(*tieredSource); ok {
			local += t.local.Load()
			remote += t.far.Load()
		}
	}
	return local, remote
}

// remoteSource asks a page server. It holds its own connection so that the
// fault path and the background push do not wait for each other.
type remoteSource struct {
	mu sync.Mutex
	c  *pageserver.Client
	// blocking: the connection times its own receives out (plain TCP:
	// pageserver.Client.BlockingGets), no timer per GET is needed.
	blocking bool
}

func dialSource(ctx context.Context, addr string, o pageserver.TransportOptions) (*remoteSource, error) {
	c, err := pageserver.Dial(ctx, addr, o)
	if err != nil {
		return nil, err
	}
	// On plain TCP, a GET is one send and one receive that the kernel
	// wakes this thread for; TLS and QUIC go through Go's poller.
	s := &remoteSource{c: c, blocking: c.BlockingGets(getTimeout) == nil}
	return s, nil
}

// watch arms the GET watchdog where the connection has no timeout of its
// own; stop reports whether it fired (the GET timed out).
func (s *remoteSource) watch() (stop func() bool) {
	if s.blocking {
		return func() bool { return false }
	}
	var stalled atomic.Bool
	timer := time.AfterFunc(getTimeout, func() { stalled.Store(true); s.c.Abort() })
	return func() bool {
		timer.Stop()
		return stalled.Load()
	}
}

// getTimeout bounds one GET: a source that stops answering (its host or
// the link gone without a reset) must not leave the restored tasks waiting
// on their faults for TCP's retransmission timeout (minutes). A frozen
// tree or a page server answers in milliseconds.
var getTimeout = 30 * time.Second

func (s *remoteSource) read(pm *pagemap, src uint64, b []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(b) > 0 {
		nr := uint64(len(b)) / pageSize
		stop := s.watch()
		got, err := s.c.Get(pm.pid, src, nr, b)
		if stop() || errors.Is(err, pageserver.ErrGetTimeout) {
			return fmt.Errorf("the page server did not answer a GET at %#x of pid %d within %v", src, pm.pid, getTimeout)
		}
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
	stop := s.watch()
	pid, vaddr, got, err := s.c.RecvGet(b)
	if stop() || errors.Is(err, pageserver.ErrGetTimeout) {
		return 0, fmt.Errorf("the page server did not answer a GET at %#x of pid %d within %v", src, pm.pid, getTimeout)
	}
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
	// Close first reads the replies to GETs still in flight: a source
	// that stopped answering must not hang the end of the daemon. The
	// status of CLOSE is read by Go's poller, which no socket timeout
	// bounds: a timer does, blocking socket or not.
	var stalled atomic.Bool
	timer := time.AfterFunc(getTimeout, func() { stalled.Store(true); s.c.Abort() })
	err := s.c.Close()
	timer.Stop()
	if stalled.Load() || errors.Is(err, pageserver.ErrGetTimeout) {
		return fmt.Errorf("the page server did not answer within %v at close", getTimeout)
	}
	return err
}

// openPagemap reads a task's pagemap and places each range. Without a
// page server (remote false) every page must be in the local images: the
// dump's pages image and, for an incremental dump, its parent images.
// With one, the dump's own data and its lazy pages (dump --lazy-pages)
// come from the page server; PARENT pages come from the local parent
// images when the images directory links them (the pre-copy rounds a
// hybrid migration left here), else from the page server, which resolves
// them in its own chain.
func openPagemap(d *images.Dir, pid int, remote bool) (*pagemap, error) {
	name := images.PagemapImg(pid)
	pm := &pagemap{pid: pid}
	f, err := d.OpenRead(name)
	if err != nil {
		return nil, fmt.Errorf("lazy-pages: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	_, ents, err := images.ReadPagemap(f, name, st.Size())
	f.Close()
	if err != nil {
		return nil, err
	}
	parents := false
	for _, e := range ents {
		if !e.Present() && e.Flags&images.PageInParent != 0 {
			parents = true
		}
	}
	if remote && (!parents || !d.Exists(pagexfer.ParentLink)) {
		// Every page from the page server.
		pm.ranges = ents
		pm.level = make([]int, len(ents))
		for i := range pm.level {
			pm.level[i] = remoteLevel
		}
		return pm, nil
	}
	pr, err := images.OpenPages(d, name)
	if err != nil {
		return nil, err
	}
	pm.pr = pr
	if !parents {
		pm.ranges = ents
		pm.level = make([]int, len(ents))
		for i, e := range ents {
			if !e.Present() {
				pm.level[i] = remoteLevel
			}
		}
		return pm, nil
	}
	c, err := pagexfer.OpenChain(d, name, pr)
	if err != nil {
		pr.Close()
		pm.pr = nil
		return nil, err
	}
	pm.chain = c
	pm.place(c.Runs(), ents, remote)
	return pm, nil
}

// place merges the chain's resolved runs with the entries it does not
// resolve (lazy ones, or anything without data), in address order. With
// a page server, the dump's own data is read from it as well (as CRIU's
// lazy-pages does); only the parents' pages are read here.
func (pm *pagemap) place(runs []pagexfer.ChainRun, ents []images.PageRange, remote bool) {
	i := 0
	addRun := func(r pagexfer.ChainRun) {
		l := r.Level
		if remote && l == 0 {
			l = remoteLevel
		}
		pm.ranges = append(pm.ranges, images.PageRange{Vaddr: r.Vaddr, NrPages: r.NrPages, Flags: images.PagePresent, Offset: r.Offset})
		pm.level = append(pm.level, l)
	}
	for _, e := range ents {
		if e.Present() || e.Flags&images.PageInParent != 0 {
			continue // in the runs
		}
		for i < len(runs) && runs[i].Vaddr < e.Vaddr {
			addRun(runs[i])
			i++
		}
		pm.ranges = append(pm.ranges, e)
		pm.level = append(pm.level, remoteLevel)
	}
	for ; i < len(runs); i++ {
		addRun(runs[i])
	}
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
