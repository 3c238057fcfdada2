package pageserver

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"godwit/internal/images"
	"godwit/pageserver/internal/wire"
)

// parentHas answers PARENT: does the parent images directory hold the
// pagemap of dst (CRIU's check_parent_local_xfer)?
func (s *Server) parentHas(dst uint64) (bool, error) {
	_, name, err := pagemapName(dst)
	if err != nil {
		return false, err
	}
	pd, err := s.dir.OpenSubdir(parentLink)
	if err != nil {
		return false, nil
	}
	defer pd.Close()
	return pd.Exists(name), nil
}

// lazyImages serves GET from the images directory and its parent chain.
// Readers are opened on first use and kept (lazy mode never writes), one
// per existing pagemap: the directory's content bounds the cache.
type lazyImages struct {
	s       *Server
	mu      sync.Mutex
	dirs    []*images.Dir // [0] is s.dir (not owned), then parent, grandparent...
	walked  bool
	readers map[lazyKey]*images.PageReader
}

type lazyKey struct {
	level int
	name  string
}

func (l *lazyImages) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.readers {
		r.Close()
	}
	l.readers = nil
	for i, d := range l.dirs {
		if i > 0 {
			d.Close()
		}
	}
	l.dirs = nil
	l.walked = false
}

// chain opens the parent chain once.
func (l *lazyImages) chain() []*images.Dir {
	if l.walked {
		return l.dirs
	}
	l.walked = true
	l.dirs = []*images.Dir{l.s.dir}
	for len(l.dirs) < maxParentDepth {
		pd, err := l.dirs[len(l.dirs)-1].OpenSubdir(parentLink)
		if err != nil {
			break
		}
		l.dirs = append(l.dirs, pd)
	}
	return l.dirs
}

func (l *lazyImages) reader(level int, name string) (*images.PageReader, error) {
	k := lazyKey{level, name}
	if r, ok := l.readers[k]; ok {
		return r, nil
	}
	dirs := l.chain()
	if level >= len(dirs) {
		return nil, errors.New("pages are in a parent, but there is no parent images directory")
	}
	if !dirs[level].Exists(name) {
		return nil, fmt.Errorf("no %s in %s", name, dirs[level].Path())
	}
	r, err := images.OpenPages(dirs[level], name)
	if err != nil {
		return nil, err
	}
	if l.readers == nil {
		l.readers = map[lazyKey]*images.PageReader{}
	}
	l.readers[k] = r
	return r, nil
}

// lookup finds the pages of a GET: how many of nr pages from vaddr one
// entry holds, the pages file and the offset of vaddr in it (no file:
// read them with readMemory at that address). dst is the
// pid as CRIU's lazy-pages sends it (pr->img_id, not id<<8|type).
func (l *lazyImages) lookup(dst, vaddr, nr uint64) (uint64, *os.File, int64, error) {
	if nr == 0 {
		return 0, nil, 0, errors.New("no pages asked")
	}
	if dst == 0 || dst >= maxPID {
		return 0, nil, 0, fmt.Errorf("pid %d out of range", dst)
	}
	if vaddr%wire.PageSize != 0 {
		return 0, nil, 0, fmt.Errorf("vaddr %#x not page aligned", vaddr)
	}
	if ix, ok := l.s.cfg.LazyMemory.(LazyIndex); ok {
		if n := ix.LazyRun(int(dst), vaddr, nr); n > 0 {
			return n, nil, int64(vaddr), nil
		}
	}
	name := images.PagemapImg(int(dst))
	l.mu.Lock()
	defer l.mu.Unlock()
	for level := 0; level < maxParentDepth; level++ {
		r, err := l.reader(level, name)
		if err != nil {
			return 0, nil, 0, err
		}
		e, ok := r.Find(vaddr)
		if !ok {
			return 0, nil, 0, fmt.Errorf("%#x is not in %s", vaddr, name)
		}
		switch {
		case e.Present():
			n := min(nr, (e.End()-vaddr)/wire.PageSize)
			return n, r.PagesFile(), e.Offset + int64(vaddr-e.Vaddr), nil
		case e.Flags&images.PageInParent != 0:
			continue
		case e.Flags&images.PageLazy != 0 && level == 0 && l.s.cfg.LazyMemory != nil:
			// Left out by dump --lazy-pages: in the task's memory.
			n := min(nr, (e.End()-vaddr)/wire.PageSize)
			return n, nil, int64(vaddr), nil
		default:
			return 0, nil, 0, fmt.Errorf("%#x has no data in %s (flags %#x)", vaddr, name, e.Flags)
		}
	}
	return 0, nil, 0, errors.New("parent chain too deep")
}

// lazyDone ends Serve (Config.LazyExitOnClose) when the lazy-pages daemon
// closed its sessions with CLOSE and no connection is left.
func (s *Server) lazyDone(conns int32) {
	if !s.cfg.Lazy || !s.cfg.LazyExitOnClose || conns != 0 || !s.lazyClosed.Load() {
		return
	}
	s.mu.Lock()
	stop := s.stopServe
	s.mu.Unlock()
	if stop != nil {
		s.log.Infof("page-server: the lazy-pages daemon has every page: done")
		stop()
	}
}

// LazyMemory reads pages of a stopped task (dump --lazy-pages).
type LazyMemory interface {
	// ReadPages fills b with the task's memory at vaddr.
	ReadPages(pid int, vaddr uint64, b []byte) error
}

// LazyIndex is a LazyMemory that knows which pages it holds: GETs for
// them are answered without reading a pagemap (a dump whose pagemaps went
// to another page server).
type LazyIndex interface {
	// LazyRun returns how many of nr pages from vaddr of pid it holds
	// (0: none at vaddr).
	LazyRun(pid int, vaddr, nr uint64) uint64
}

// readLazy reads GET data: from the pages file f at off, or, without f,
// from the task's memory at address off.
func (s *Server) readLazy(f *os.File, pid uint64, off int64, b []byte) (int, error) {
	if f != nil {
		return f.ReadAt(b, off)
	}
	if err := s.cfg.LazyMemory.ReadPages(int(pid), uint64(off), b); err != nil {
		return 0, err
	}
	return len(b), nil
}

// smallGet is the largest GET reply sent by sendSmall rather than
// sendPages: a fault's page (or a few) costs less read into the session's
// buffer and written with its header in one send than spliced by
// sendfile, which also needs a send of its own for the header
// (BenchmarkLazyGetRoundTrip).
const smallGet = 16 * wire.PageSize

// sendSmall answers a small GET on plain TCP: the pages read from the
// pages file after the header in the session's buffer, and both sent in
// one write.
func (ss *session) sendSmall(hdr []byte, f *os.File, off, n int64, nr uint64) error {
	if ss.buf == nil {
		ss.buf = make([]byte, copyBufSize)
	}
	b := ss.buf[:len(hdr)+int(n)]
	copy(b, hdr)
	if m, err := f.ReadAt(b[len(hdr):], off); int64(m) != n {
		return reqErr(reasonIO, fmt.Errorf("read pages at %d: %d of %d bytes: %v", off, m, n, err))
	}
	if err := ss.reply(b); err != nil {
		return err
	}
	ss.s.m.addBytes("out", n)
	ss.s.m.addPages("out", nr)
	return nil
}

// sendPages answers a GET on plain TCP: the header, then the data straight
// from the pages file's page cache (sendfile), no copy through the server.
func (ss *session) sendPages(hdr []byte, f *os.File, off, n int64, nr uint64) error {
	done, err := sendFileAt(ss.tcp, hdr, f, off, n, ss.s.cfg.ReadTimeout)
	ss.s.m.addBytes("out", done)
	if err != nil {
		return reqErr(reasonIO, fmt.Errorf("send pages at %d: %d of %d bytes: %w", off, done, n, err))
	}
	ss.s.m.addPages("out", nr)
	return nil
}
