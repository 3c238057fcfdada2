package dumper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"godwit/internal/actions"
	"godwit/internal/images"
	"godwit/internal/logging"
	"godwit/internal/pagexfer"
	"godwit/internal/procfs"
	"godwit/pageserver"
)

// LazyServe is where dump --lazy-pages serves the pages it leaves out.
type LazyServe struct {
	Addr      string // host:port to listen on
	Transport pageserver.TransportOptions
	// Listening, if set, is called with the address once it listens.
	Listening func(addr string)
	Log       *logging.Logger
}

// DumpLazyContext is dump --lazy-pages: it writes every image but the
// pages of lazy VMAs (their pagemap entries say PE_LAZY, without data),
// which it keeps aside in a memfd (shared memory, not godwit's heap),
// finishes the task as a dump does (killed, or left running or stopped),
// and serves the kept pages on ls.Addr (page-server GET, TLS or QUIC
// only) until a lazy-pages daemon has them all and says so with CLOSE.
// Post-copy cannot survive losing its source: if this ends early, the
// restored task cannot get its missing pages (its daemon kills it).
func DumpLazyContext(ctx context.Context, o Options, scripts *actions.Scripts, ls LazyServe) (*Result, error) {
	if o.PageServer != nil {
		return nil, errors.New("dump --lazy-pages: the pages are served from here: --page-server does not apply")
	}
	if o.PrevImagesDir != "" || o.TrackMem {
		return nil, errors.New("dump --lazy-pages on top of pre-dump rounds (--prev-images-dir, --track-mem) is not supported yet")
	}
	log := ls.Log
	if log == nil {
		log = logging.Default()
	}
	ln, err := pageserver.Listen(ls.Addr, ls.Transport)
	if err != nil {
		return nil, fmt.Errorf("dump --lazy-pages: %w", err)
	}
	defer ln.Close()
	if !ln.Authenticated() {
		return nil, fmt.Errorf("dump --lazy-pages on %s: serving memory needs --tls or --transport quic", ln.Addr())
	}
	fd, err := unix.MemfdCreate("godwit-lazy-pages", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("dump --lazy-pages: memfd_create: %w", err)
	}
	kept := &keptPages{pid: o.Pid, f: os.NewFile(uintptr(fd), "godwit-lazy-pages")}
	defer kept.f.Close()
	res, err := DumpToContext(ctx, o, scripts, &lazyTarget{pid: o.Pid, kept: kept})
	if err != nil {
		return res, err
	}
	if res.Stats != nil {
		res.Stats.PagesLazy = proto.Uint64(kept.pages())
	}
	log.Infof("dump %d: %d lazy pages kept out of the images; serving them on %s (%s)", o.Pid, kept.pages(), ln.Addr(), ln.Transport())
	if ls.Listening != nil {
		ls.Listening(ln.Addr().String())
	}
	serr := pageserver.Serve(ctx, ln, pageserver.Config{ImagesDir: o.ImagesDir, Lazy: true, LazyExitOnClose: true,
		LazyMemory: kept, Log: log})
	if serr == nil && ctx.Err() != nil {
		serr = fmt.Errorf("interrupted: %w", context.Cause(ctx))
	}
	if serr != nil {
		return res, fmt.Errorf("dump --lazy-pages %d: images written, but serving the lazy pages ended: %w", o.Pid, serr)
	}
	return res, nil
}

// keptPages holds the lazy pages of one task: run i of runs is at offset
// runs[i].off in f.
type keptPages struct {
	pid  int
	f    *os.File
	mu   sync.Mutex
	runs []keptRun // ascending vaddr
	size int64
}

type keptRun struct {
	vaddr, end uint64
	off        int64
}

func (k *keptPages) pages() uint64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	return uint64(k.size) / images.PageSize
}

// keep appends n bytes of src for the pages at vaddr.
func (k *keptPages) keep(vaddr uint64, n int64, src io.Reader) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	got, err := io.CopyN(io.NewOffsetWriter(k.f, k.size), src, n)
	if err != nil {
		return fmt.Errorf("keep lazy pages at %#x: %d of %d bytes: %w", vaddr, got, n, err)
	}
	k.runs = append(k.runs, keptRun{vaddr: vaddr, end: vaddr + uint64(n), off: k.size})
	k.size += n
	return nil
}

// ReadPages implements pageserver.LazyMemory.
func (k *keptPages) ReadPages(pid int, vaddr uint64, b []byte) error {
	if pid != k.pid {
		return fmt.Errorf("pid %d is not the dumped task %d", pid, k.pid)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	for len(b) > 0 {
		i := sort.Search(len(k.runs), func(i int) bool { return k.runs[i].end > vaddr })
		if i == len(k.runs) || k.runs[i].vaddr > vaddr {
			return fmt.Errorf("no lazy page kept at %#x", vaddr)
		}
		r := k.runs[i]
		n := min(uint64(len(b)), r.end-vaddr)
		if _, err := k.f.ReadAt(b[:n], r.off+int64(vaddr-r.vaddr)); err != nil {
			return fmt.Errorf("read kept pages at %#x: %w", vaddr, err)
		}
		b = b[n:]
		vaddr += n
	}
	return nil
}

// lazyTarget writes the pages into the images but for those of lazy
// VMAs, which it records as PE_LAZY without data.
type lazyTarget struct {
	pid  int
	kept *keptPages
}

func (t *lazyTarget) Open(d *images.Dir, name string, id uint32) (pagexfer.Sink, error) {
	s, err := pagexfer.NewImageSink(d, name, id)
	if err != nil || name != images.PagemapImg(t.pid) {
		return s, err
	}
	lazy, err := lazyRanges(t.pid)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("lazy pages: %w", err)
	}
	return &lazySink{inner: s, lazy: lazy, kept: t.kept}, nil
}

func (t *lazyTarget) Commit() error { return nil }

// lazyRanges are the task's VMAs that restore --lazy-pages leaves to the
// lazy-pages daemon (the restorer's rule, read from /proc: private
// anonymous, not locked, huge, growing down or a shadow stack, no
// thread's stack pointer in it, not [stack]/[vdso]/[vvar]/[vsyscall]). A
// VMA the two rules judged differently is refused by the restore, never
// restored wrong.
func lazyRanges(pid int) ([][2]uint64, error) {
	sm, err := procfs.ReadSmaps(pid)
	if err != nil {
		return nil, err
	}
	sps, err := stackPointers(pid)
	if err != nil {
		return nil, err
	}
	var out [][2]uint64
	for i := range sm {
		e := &sm[i]
		if !e.IsAnon() || e.Shared || (strings.HasPrefix(e.Path, "[") && e.Path != "[heap]" && !strings.HasPrefix(e.Path, "[anon:")) ||
			e.HasFlag("lo") || e.HasFlag("ht") || e.HasFlag("gd") || e.HasFlag("ss") {
			continue
		}
		stack := false
		for _, sp := range sps {
			if sp >= e.Start && sp < e.End {
				stack = true
			}
		}
		if !stack {
			out = append(out, [2]uint64{e.Start, e.End})
		}
	}
	return out, nil
}

// stackPointers reads each thread's user stack pointer from
// /proc/PID/task/TID/syscall (the task is stopped: "nr args... sp pc" or
// "-1 sp pc").
func stackPointers(pid int) ([]uint64, error) {
	ents, err := os.ReadDir(procfs.Path(pid, "task"))
	if err != nil {
		return nil, err
	}
	var sps []uint64
	for _, e := range ents {
		b, err := os.ReadFile(procfs.Path(pid, "task/"+e.Name()+"/syscall"))
		if err != nil {
			return nil, err
		}
		f := strings.Fields(string(b))
		if len(f) < 3 {
			return nil, fmt.Errorf("thread %s: syscall %q: not stopped", e.Name(), b)
		}
		sp, err := strconv.ParseUint(strings.TrimPrefix(f[len(f)-2], "0x"), 16, 64)
		if err != nil {
			return nil, fmt.Errorf("thread %s: syscall %q: %w", e.Name(), b, err)
		}
		sps = append(sps, sp)
	}
	return sps, nil
}

// lazySink passes runs outside lazy ranges through and records those in
// them as lazy, keeping their data aside.
type lazySink struct {
	inner pagexfer.Sink
	lazy  [][2]uint64 // ascending
	kept  *keptPages
}

func (s *lazySink) AddPages(vaddr, nr uint64, flags uint32, src io.Reader) error {
	end := vaddr + nr*images.PageSize
	if flags&images.PagePresent == 0 || !s.overlaps(vaddr, end) {
		return s.inner.AddPages(vaddr, nr, flags, src)
	}
	for a := vaddr; a < end; {
		lazy, b := s.part(a, end)
		n := (b - a) / images.PageSize
		if lazy {
			if err := s.inner.AddPages(a, n, images.PageLazy, nil); err != nil {
				return err
			}
			if err := s.kept.keep(a, int64(b-a), src); err != nil {
				return err
			}
		} else if err := s.inner.AddPages(a, n, flags, io.LimitReader(src, int64(b-a))); err != nil {
			return err
		}
		a = b
	}
	return nil
}

func (s *lazySink) overlaps(lo, hi uint64) bool {
	i := sort.Search(len(s.lazy), func(i int) bool { return s.lazy[i][1] > lo })
	return i < len(s.lazy) && s.lazy[i][0] < hi
}

// part returns whether a is in a lazy range and where that stretch ends.
func (s *lazySink) part(a, end uint64) (bool, uint64) {
	i := sort.Search(len(s.lazy), func(i int) bool { return s.lazy[i][1] > a })
	if i < len(s.lazy) && s.lazy[i][0] <= a {
		return true, min(end, s.lazy[i][1])
	}
	if i < len(s.lazy) {
		return false, min(end, s.lazy[i][0])
	}
	return false, end
}

func (s *lazySink) Hole(vaddr, nr uint64) error { return s.inner.Hole(vaddr, nr) }
func (s *lazySink) Close() error                { return s.inner.Close() }
