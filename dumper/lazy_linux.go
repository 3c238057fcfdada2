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

	"godwit/internal/actions"
	"godwit/internal/images"
	"godwit/internal/logging"
	"godwit/internal/pagexfer"
	"godwit/internal/procfs"
	"godwit/internal/vmaflags"
	"godwit/pageserver"
	"godwit/uffd"
)

// LazyServe is where dump --lazy-pages serves the pages it leaves out.
type LazyServe struct {
	Addr      string // host:port to listen on
	Transport pageserver.TransportOptions
	// Listening, if set, is called with the address once it listens.
	Listening func(addr string)
	Log       *logging.Logger
	// Pages, if set, is the page server that receives the pagemaps and
	// the pages not left lazy (migrate --mode hybrid: the destination's
	// round chain); by default they go into the images directory.
	Pages *PageServer
	// DieWithServer: once the images stand, the frozen tree is killed if
	// this process dies while serving (PTRACE_O_EXITKILL) instead of
	// resuming, for a migration whose destination may already run the
	// copy: never two live copies.
	DieWithServer bool
}

// DumpLazyContext is dump --lazy-pages: it writes every image but the
// pages of lazy VMAs (their pagemap entries say PE_LAZY, without data;
// those pages are never read during the dump), keeps the tree frozen,
// and serves the lazy pages from the frozen task's memory on ls.Addr
// (page-server GET, TLS or QUIC only) until a lazy-pages daemon has them
// all and says so with CLOSE; then it finishes the tree as a dump does
// (killed, or left running or stopped). Post-copy cannot survive losing
// its source: if this ends early, the restored task cannot get its
// missing pages (its daemon kills it), and the tree is finished all the
// same.
//
// On top of pre-dump rounds (--prev-images-dir with --track-mem) only the
// pages of lazy VMAs written since the last round are left lazy; those
// the round has are PARENT entries, restored from the parent images.
func DumpLazyContext(ctx context.Context, o Options, scripts *actions.Scripts, ls LazyServe) (*Result, error) {
	if o.PageServer != nil {
		return nil, errors.New("dump --lazy-pages: the pages are served from here: --page-server does not apply")
	}
	var inner PageTarget = localPages{}
	if ls.Pages != nil {
		pt, err := dialPageServer(ctx, ls.Pages)
		if err != nil {
			return nil, fmt.Errorf("dump --lazy-pages: %w", err)
		}
		defer pt.abort()
		defer context.AfterFunc(ctx, pt.c.Abort)()
		inner = pt
	}
	log := ls.Log
	if log == nil {
		log = logging.FromContext(ctx)
	}
	ln, err := pageserver.Listen(ls.Addr, ls.Transport)
	if err != nil {
		return nil, fmt.Errorf("dump --lazy-pages: %w", err)
	}
	defer ln.Close()
	// Plain TCP is CRIU's default; the page server warns that anyone
	// who reaches the address can read the memory.
	kept := &keptPages{pid: o.Pid}
	serve := func(ctx context.Context) error {
		log.Infof("dump %d: %d lazy pages left in the frozen task; serving them on %s (%s)", o.Pid, kept.pages(), ln.Addr(), ln.Transport())
		if ls.Listening != nil {
			ls.Listening(ln.Addr().String())
		}
		serr := pageserver.Serve(ctx, ln, pageserver.Config{ImagesDir: o.ImagesDir, Lazy: true, LazyExitOnClose: true,
			LazyMemory: kept, Log: log})
		if serr == nil && ctx.Err() != nil {
			serr = fmt.Errorf("interrupted: %w", context.Cause(ctx))
		}
		if serr != nil {
			return fmt.Errorf("images written, but serving the lazy pages ended: %w", serr)
		}
		return nil
	}
	// The lazy VMAs are told by their flags while the tree is frozen:
	// from the kernel's VMAs when the table of flag names is learnt
	// (now, before the freeze), not from smaps' page walk.
	names, err := vmaflags.Calibrate()
	if err != nil {
		log.Infof("dump %d: lazy VMAs told from smaps while frozen: %v", o.Pid, err)
		names = nil
	}
	return DumpToContext(ctx, o, scripts, &lazyTarget{pid: o.Pid, kept: kept, serve: serve, inner: inner, exitKill: ls.DieWithServer, names: names, log: log})
}

// keptPages are the lazy pages of one task, left in its memory: the task
// stays frozen until they are served, so they are read (with
// process_vm_readv) as they were at the freeze.
type keptPages struct {
	pid  int
	mu   sync.Mutex
	runs []keptRun // ascending vaddr
	size int64
}

type keptRun struct {
	vaddr, end uint64
}

func (k *keptPages) pages() uint64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	return uint64(k.size) / images.PageSize
}

// keep records the lazy pages [vaddr, vaddr+n).
func (k *keptPages) keep(vaddr uint64, n int64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if l := len(k.runs) - 1; l >= 0 && k.runs[l].end == vaddr {
		k.runs[l].end += uint64(n)
	} else {
		k.runs = append(k.runs, keptRun{vaddr: vaddr, end: vaddr + uint64(n)})
	}
	k.size += n
}

// LazyRun implements pageserver.LazyIndex: how many of nr pages from
// vaddr are kept in the task, without reading a pagemap (with
// LazyServe.Pages the pagemap is on the page server).
func (k *keptPages) LazyRun(pid int, vaddr, nr uint64) uint64 {
	if pid != k.pid {
		return 0
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	i := sort.Search(len(k.runs), func(i int) bool { return k.runs[i].end > vaddr })
	if i == len(k.runs) || k.runs[i].vaddr > vaddr {
		return 0
	}
	return min(nr, (k.runs[i].end-vaddr)/images.PageSize)
}

// ReadPages implements pageserver.LazyMemory: only pages recorded lazy,
// from the frozen task.
func (k *keptPages) ReadPages(pid int, vaddr uint64, b []byte) error {
	if pid != k.pid {
		return fmt.Errorf("pid %d is not the dumped task %d", pid, k.pid)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	for len(b) > 0 {
		i := sort.Search(len(k.runs), func(i int) bool { return k.runs[i].end > vaddr })
		if i == len(k.runs) || k.runs[i].vaddr > vaddr {
			return fmt.Errorf("no lazy page at %#x", vaddr)
		}
		n := min(uint64(len(b)), k.runs[i].end-vaddr)
		if err := readv(k.pid, b[:n], []unix.RemoteIovec{{Base: uintptr(vaddr), Len: int(n)}}); err != nil {
			return fmt.Errorf("read lazy pages at %#x of the frozen task %d: %w", vaddr, k.pid, err)
		}
		b = b[n:]
		vaddr += n
	}
	return nil
}

// lazyTarget passes the pages to inner but for those of lazy VMAs, which
// it records as PE_LAZY without data.
type lazyTarget struct {
	pid      int
	kept     *keptPages
	serve    func(context.Context) error
	inner    PageTarget
	exitKill bool
	names    *vmaflags.Names // nil: read smaps
	log      *logging.Logger
}

// hold serves the lazy pages while the dumped tree is still frozen
// (DumpToContext calls it once the images stand).
func (t *lazyTarget) hold(ctx context.Context) error { return t.serve(ctx) }

func (t *lazyTarget) lazyPages() uint64 { return t.kept.pages() }

func (t *lazyTarget) dieWithDumper() bool { return t.exitKill }

// exitKillTree has every thread of the frozen tree die with this process.
func exitKillTree(tree []*frozenTask) error {
	for _, ft := range tree {
		for _, tid := range ft.tids {
			if err := ft.tr.ExitKill(tid); err != nil {
				return fmt.Errorf("task %d: %w", ft.pid, err)
			}
		}
	}
	return nil
}

func (t *lazyTarget) Open(d *images.Dir, name string, id uint32) (pagexfer.Sink, error) {
	s, err := t.inner.Open(d, name, id)
	if err != nil || name != images.PagemapImg(t.pid) {
		return s, err
	}
	lazy, err := lazyRanges(t.pid, t.smaps)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("lazy pages: %w", err)
	}
	return &lazySink{inner: s, lazy: lazy, kept: t.kept}, nil
}

func (t *lazyTarget) Commit() error { return t.inner.Commit() }

// smaps reads the frozen task's VMAs with their flags: vmaflags.Smaps
// (no page walk) when it can name them, smaps otherwise.
func (t *lazyTarget) smaps(pid int) ([]procfs.SmapsEntry, error) {
	if t.names != nil {
		sm, err := vmaflags.Smaps(pid, t.names)
		if err == nil {
			return sm, nil
		}
		t.log.Infof("dump %d: lazy VMAs: reading smaps: %v", pid, err)
	}
	return procfs.ReadSmaps(pid)
}

// lazyRanges are the task's VMAs that restore --lazy-pages leaves to the
// lazy-pages daemon (the restorer's rule, read from /proc: private
// anonymous, not locked, huge, growing down or a shadow stack, no
// thread's stack pointer in it, not [stack]/[vdso]/[vvar]/[vsyscall]). A
// VMA the two rules judged differently is refused by the restore, never
// restored wrong.
func lazyRanges(pid int, smaps func(int) ([]procfs.SmapsEntry, error)) ([][2]uint64, error) {
	sm, err := smaps(pid)
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
			// Read by a source that did not know the range was lazy:
			// the data is dropped, and served from the frozen task.
			if _, err := io.CopyN(io.Discard, src, int64(b-a)); err != nil {
				return fmt.Errorf("lazy pages at %#x: %w", a, err)
			}
			if err := s.lazyPages(a, n); err != nil {
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

// lazyPages records nr pages at vaddr as lazy, without data.
func (s *lazySink) lazyPages(vaddr, nr uint64) error {
	if err := s.inner.AddPages(vaddr, nr, images.PageLazy, nil); err != nil {
		return err
	}
	s.kept.keep(vaddr, int64(nr*images.PageSize))
	return nil
}

// lazyVMA tells whether [start, end) lies in a lazy range: its pages are
// then only listed (lazyScan), never read.
func (s *lazySink) lazyVMA(start, end uint64) bool {
	lazy, b := s.part(start, end)
	return lazy && b == end
}

func (s *lazySink) Hole(vaddr, nr uint64) error { return s.inner.Hole(vaddr, nr) }
func (s *lazySink) Close() error                { return s.inner.Close() }

// lazyLister is a sink that takes some VMAs' pages as lazy, without data.
type lazyLister interface {
	lazyVMA(start, end uint64) bool
	lazyPages(vaddr, nr uint64) error
}

// lazyScan lists the pages of VMA v that hold data to the sink as lazy,
// without reading them. While the tree is frozen: PAGEMAP_SCAN returns the
// VMA's pages as ranges by category, so the listing costs the kernel's
// page-table walk, not a pagemap entry per page read and sorted here
// (~1 M entries at 4 GiB). Ranges that look swapped out are sorted page
// by page, as the pagemap says (a uffd-wp marker is no data); without
// PAGEMAP_SCAN (kernel before 6.7) every page is.
func (d *MemoryDumper) lazyScan(l lazyLister, v *VMA) error {
	if d.pmScan == nil && !d.noScan {
		sp, err := uffd.OpenPagemap(d.pid)
		if err != nil {
			d.noScan = true
		} else {
			d.pmScan = sp
		}
	}
	if d.pmScan == nil {
		return d.lazyPagemap(l, v.Start, v.End)
	}
	cats := uint64(pageCats)
	if plainAnon(v) {
		// No page-cache page there (see writePrivate).
		cats &^= uffd.PageIsFile
	}
	regs, err := d.pmScan.Scan(uffd.ScanArgs{Start: v.Start, End: v.End, CategoryAnyof: uffd.PageIsPresent | uffd.PageIsSwapped,
		ReturnMask: cats}, d.regs[:0])
	if err != nil {
		if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EINVAL) {
			// No PAGEMAP_SCAN here.
			d.pmScan.Close()
			d.pmScan, d.noScan = nil, true
			return d.lazyPagemap(l, v.Start, v.End)
		}
		return err
	}
	d.regs = regs
	n := (v.End - v.Start) / pageSize
	// Pages in no range were never touched; lazyPagemap counts its own.
	var inRegs, perPage uint64
	runStart, runEnd := uint64(0), uint64(0)
	flush := func() error {
		if runEnd > runStart {
			if err := l.lazyPages(runStart, (runEnd-runStart)/pageSize); err != nil {
				return err
			}
		}
		runStart, runEnd = 0, 0
		return nil
	}
	for _, r := range regs {
		nr := (r.End - r.Start) / pageSize
		inRegs += nr
		switch c := r.Categories; {
		case c&uffd.PageIsSwapped != 0:
			if err := flush(); err != nil {
				return err
			}
			perPage += nr
			if err := d.lazyPagemap(l, r.Start, r.End); err != nil {
				return err
			}
		case c&uffd.PageIsFile != 0:
			// Clean page-cache pages of a private file mapping.
			d.stats.Untouched += nr
		case c&uffd.PageIsPFNZero != 0:
			d.stats.Zero += nr
		default:
			if runEnd != r.Start {
				if err := flush(); err != nil {
					return err
				}
				runStart = r.Start
			}
			runEnd = r.End
		}
	}
	if err := flush(); err != nil {
		return err
	}
	d.stats.Scanned += n - perPage
	d.stats.Untouched += n - inRegs
	return nil
}

// lazyPagemap lists the pages of [start, end) that hold data as lazy, as
// /proc/PID/pagemap says page by page.
func (d *MemoryDumper) lazyPagemap(l lazyLister, start, end uint64) error {
	for a := start; a < end; {
		n := min((end-a)/pageSize, scanPages)
		ents := d.ents[:n]
		if err := d.pm.Read(a, ents); err != nil {
			return err
		}
		d.stats.Scanned += n
		runStart, runLen := uint64(0), uint64(0)
		for i, e := range ents {
			ok, zero := d.want(e, false)
			if zero {
				d.stats.Zero++
			} else if !ok {
				d.stats.Untouched++
			}
			if ok {
				if runLen == 0 {
					runStart = a + uint64(i)*pageSize
				}
				runLen++
				continue
			}
			if runLen > 0 {
				if err := l.lazyPages(runStart, runLen); err != nil {
					return err
				}
				runLen = 0
			}
		}
		if runLen > 0 {
			if err := l.lazyPages(runStart, runLen); err != nil {
				return err
			}
		}
		a += n * pageSize
	}
	return nil
}
