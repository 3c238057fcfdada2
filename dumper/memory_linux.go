package dumper

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/images"
	"godwit/internal/pagexfer"
	"godwit/internal/procfs"
	"godwit/internal/ptrace"
	"godwit/uffd"
)

const (
	pageSize = images.PageSize
	// batchBytes bounds one transfer: the pipe of the vmsplice path
	// cannot grow past /proc/sys/fs/pipe-max-size (1 MiB) without
	// CAP_SYS_RESOURCE, and the read buffer of the readv path is this
	// size, which is all godwit holds of the target's memory at a time.
	batchBytes   = 1 << 20
	maxBatchIovs = batchBytes / pageSize
	// scanPages is how many pagemap entries are read at once (16 MiB of
	// address space, a 32 KiB buffer).
	scanPages = 4096
)

// Method is how page data leaves the target.
type Method int

const (
	// MethodReadv copies pages with process_vm_readv into a buffer and
	// writes it out (two copies, the second from cache; needs no
	// injection, so it also works on a running target). The default: a
	// target is never inside an injection session during the transfer,
	// so a godwit killed then leaves it intact.
	MethodReadv Method = iota
	// MethodVmsplice injects vmsplice(2) into the frozen target: its
	// pages are referenced by a pipe whose read end godwit took with
	// pidfd_getfd, then spliced to the pages file (one copy). Each
	// batch borrows the target for one injected call.
	MethodVmsplice
)

func (m Method) String() string {
	if m == MethodVmsplice {
		return "vmsplice"
	}
	return "readv"
}

// MemStats counts what a MemoryDumper did.
type MemStats struct {
	Scanned   uint64 // pages of the VMAs looked at
	Zero      uint64 // skipped: the zero page / huge zero page
	Untouched uint64 // skipped: never touched (or clean file pages)
	Written   uint64 // pages sent to a sink
	// Unwalked: left to the parent images without a page walk, known
	// unchanged since (a final dump on top of rounds).
	Unwalked uint64
	// ZeroSent and SameSent: of Written, the pages a page server link
	// carried as short records, all zero or the same as a page sent
	// before, not as data (pageserver.TransportOptions.Dedup).
	ZeroSent, SameSent uint64
	DumpTime           time.Duration
	WriteTime          time.Duration
}

// MemoryDumper reads the pages of a process that must be saved and sends
// them to page sinks (an images directory or a page server). It needs no
// other collected state: give it the VMAs (CollectVMAs) and sinks.
type MemoryDumper struct {
	pid   int
	src   pageSource
	stats MemStats
	pm    *procfs.Pagemap
	ents  []procfs.PagemapEntry
	force *readvSource // for VMAs the task cannot read itself
	// pmScan lists lazy VMAs with PAGEMAP_SCAN (opened on first use;
	// noScan once it failed: the per-page pagemap then).
	pmScan *uffd.Pagemap
	noScan bool
	regs   []uffd.Region
	// ctx, when set, stops the transfer between batches once done.
	ctx context.Context
}

// SetContext makes the dumper stop between batches, with an error, once
// ctx is done.
func (d *MemoryDumper) SetContext(ctx context.Context) { d.ctx = ctx }

// NewMemoryDumper prepares a dumper for pid with MethodReadv (running or
// frozen target).
func NewMemoryDumper(pid int) (*MemoryDumper, error) {
	return newMemoryDumper(pid, nil)
}

// NewInjectingMemoryDumper prepares a MethodVmsplice dumper for pid, a
// process frozen by tr: s is an open injection session in its thread tid,
// used to make the pipes; scratch a writable mapping of scratchSize bytes
// in it (see Dump). Each later batch is moved by its own short session in
// tid (a burst: open, vmsplice, end), so that the target never waits on
// godwit's file or network I/O with borrowed registers and every signal
// blocked. Close removes the pipes from the target (its own burst).
func NewInjectingMemoryDumper(pid int, tr *ptrace.Tracer, tid int, s *ptrace.Session, scratch uint64) (*MemoryDumper, error) {
	vs, err := newVmspliceSource(pid, tr, tid, s, scratch)
	if err != nil {
		return nil, err
	}
	d, err := newMemoryDumper(pid, vs)
	if err != nil {
		_ = vs.close()
		return nil, err
	}
	return d, nil
}

func newMemoryDumper(pid int, src pageSource) (*MemoryDumper, error) {
	// PFNs of the zero pages (needs CAP_SYS_ADMIN); without them read-only
	// zero pages are dumped as data, which is correct, only bigger.
	_, _ = procfs.ZeroPagePFN()
	_, _ = procfs.HugeZeroPagePFN()
	pm, err := procfs.OpenPagemap(pid)
	if err != nil {
		return nil, err
	}
	force := &readvSource{pid: pid, force: true}
	if src == nil {
		src = &readvSource{pid: pid}
	}
	return &MemoryDumper{pid: pid, src: src, pm: pm, ents: make([]procfs.PagemapEntry, scanPages), force: force}, nil
}

// Method reports the transfer method in use.
func (d *MemoryDumper) Method() Method {
	if _, ok := d.src.(*vmspliceSource); ok {
		return MethodVmsplice
	}
	return MethodReadv
}

// addStats adds counters of pages moved by another writer.
func (d *MemoryDumper) addStats(s MemStats) {
	d.stats.Scanned += s.Scanned
	d.stats.Zero += s.Zero
	d.stats.Untouched += s.Untouched
	d.stats.Written += s.Written
	d.stats.Unwalked += s.Unwalked
	d.stats.DumpTime += s.DumpTime
	d.stats.WriteTime += s.WriteTime
}

// Stats returns the counters so far.
func (d *MemoryDumper) Stats() MemStats { return d.stats }

// Close releases the pagemap and (vmsplice) the pipes in the target; no
// injection session of the dumped thread may be open.
func (d *MemoryDumper) Close() error {
	var err error
	if d.src != nil {
		err = d.src.close()
	}
	if d.pm != nil {
		if cerr := d.pm.Close(); err == nil {
			err = cerr
		}
	}
	if d.pmScan != nil {
		if cerr := d.pmScan.Close(); err == nil {
			err = cerr
		}
	}
	d.src, d.pm, d.pmScan = nil, nil, nil
	return err
}

// run is a stretch of pages to save: at addr in the target, at vaddr in
// the image (differs for shared memory: the offset in the object).
type run struct {
	addr, vaddr, nr uint64
}

// batch collects runs up to batchBytes and flushes them to a sink. Two
// slots (pipes or buffers) alternate: while a writer goroutine moves batch
// k from one slot into the sink, the next batch is loaded into the other,
// so taking pages out of the target and writing them overlap (the machine
// has more than one CPU). At most one writer runs at a time, so the sink
// sees its ranges in order.
type batch struct {
	d       *MemoryDumper
	sink    pagexfer.Sink
	src     pageSource
	runs    []run
	pages   uint64
	slot    int
	spare   []run
	pending chan error // the writer of the previous batch
}

func (b *batch) add(r run) error {
	// Merge with the previous run when both sides are contiguous.
	for r.nr > 0 {
		room := uint64(maxBatchIovs) - b.pages
		if room == 0 {
			if err := b.flush(); err != nil {
				return err
			}
			continue
		}
		n := min(r.nr, room)
		if k := len(b.runs); k > 0 && b.runs[k-1].addr+b.runs[k-1].nr*pageSize == r.addr &&
			b.runs[k-1].vaddr+b.runs[k-1].nr*pageSize == r.vaddr {
			b.runs[k-1].nr += n
		} else {
			b.runs = append(b.runs, run{addr: r.addr, vaddr: r.vaddr, nr: n})
		}
		b.pages += n
		r.addr += n * pageSize
		r.vaddr += n * pageSize
		r.nr -= n
	}
	return nil
}

// flush loads the collected runs into the free slot and hands them to a
// writer goroutine.
func (b *batch) flush() error {
	if b.pages == 0 {
		return nil
	}
	if err := interrupted(b.d.ctx); err != nil {
		_ = b.wait()
		return err
	}
	t0 := time.Now()
	slot := b.slot
	if err := b.src.load(slot, b.runs); err != nil {
		_ = b.wait()
		return err
	}
	b.d.stats.DumpTime += time.Since(t0)
	if err := b.wait(); err != nil {
		return err
	}
	runs, pages := b.runs, b.pages
	ch := make(chan error, 1)
	b.pending = ch
	go func() {
		t1 := time.Now()
		var err error
		for _, r := range runs {
			if err = b.sink.AddPages(r.vaddr, r.nr, images.PagePresent, b.src.reader(slot)); err != nil {
				break
			}
		}
		if err == nil {
			b.d.stats.Written += pages
		}
		b.d.stats.WriteTime += time.Since(t1)
		ch <- err
	}()
	b.slot ^= 1
	b.runs, b.spare = b.spare[:0], runs
	b.pages = 0
	return nil
}

// wait waits for the writer in flight, if any.
func (b *batch) wait() error {
	if b.pending == nil {
		return nil
	}
	err := <-b.pending
	b.pending = nil
	return err
}

// drain flushes and waits: the sink has everything added so far.
func (b *batch) drain() error {
	if err := b.flush(); err != nil {
		return err
	}
	return b.wait()
}

// wantPrivate tells whether a page of a private mapping must be saved:
// present or swapped, not an unmodified page-cache page, not a zero page.
func (d *MemoryDumper) want(e procfs.PagemapEntry, shared bool) (bool, bool) {
	if !e.Present() && !e.Swapped() {
		return false, false
	}
	if e.Present() && !shared && e.File() {
		return false, false
	}
	if e.Present() && procfs.IsZeroPFN(e.PFN()) {
		return false, true
	}
	return true, false
}

// scan walks [start, end) of the target and adds the pages to save to b,
// with image addresses shifted by delta (vaddr = addr + delta).
func (d *MemoryDumper) scan(b *batch, start, end uint64, delta uint64, shared bool) error {
	for a := start; a < end; {
		n := min((end-a)/pageSize, scanPages)
		ents := d.ents[:n]
		if err := d.pm.Read(a, ents); err != nil {
			return err
		}
		d.stats.Scanned += n
		runStart, runLen := uint64(0), uint64(0)
		for i, e := range ents {
			ok, zero := d.want(e, shared)
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
				if err := b.add(run{addr: runStart, vaddr: runStart + delta, nr: runLen}); err != nil {
					return err
				}
				runLen = 0
			}
		}
		if runLen > 0 {
			if err := b.add(run{addr: runStart, vaddr: runStart + delta, nr: runLen}); err != nil {
				return err
			}
		}
		a += n * pageSize
	}
	return nil
}

// DumpPrivate sends the pages of the private VMAs (anonymous, and the
// written pages of private file mappings) to sink, in address order. The
// sink is not closed.
func (d *MemoryDumper) DumpPrivate(vmas []VMA, sink pagexfer.Sink) error {
	b := &batch{d: d, sink: sink, src: d.src}
	fb := &batch{d: d, sink: sink, src: d.force}
	defer b.wait()
	defer fb.wait()
	for i := range vmas {
		v := &vmas[i]
		if !v.Private() && v.Status&images.VmaAreaVdso == 0 {
			continue
		}
		cur := b
		if v.Prot&unix.PROT_READ == 0 {
			// vmsplice and process_vm_readv honour the protection;
			// /proc/PID/mem reads with FOLL_FORCE.
			if err := b.drain(); err != nil {
				return err
			}
			cur = fb
		} else if err := fb.drain(); err != nil {
			return err
		}
		if v.Status&images.VmaAreaVdso != 0 {
			// Saved whole, as CRIU does: CRIU's restore reads the dumped
			// vDSO to compare its symbols with the running kernel's.
			// godwit's restore keeps this kernel's vDSO and skips them.
			nr := (v.End - v.Start) / pageSize
			d.stats.Scanned += nr
			if err := cur.add(run{addr: v.Start, vaddr: v.Start, nr: nr}); err != nil {
				return fmt.Errorf("pages of vdso %#x-%#x: %w", v.Start, v.End, err)
			}
			continue
		}
		if l, ok := sink.(lazyLister); ok && l.lazyVMA(v.Start, v.End) {
			// dump --lazy-pages: listed in order, never read.
			if err := cur.drain(); err != nil {
				return err
			}
			if err := d.lazyScan(l, v); err != nil {
				return fmt.Errorf("pages of vma %#x-%#x: %w", v.Start, v.End, err)
			}
			continue
		}
		if err := d.scan(cur, v.Start, v.End, 0, false); err != nil {
			return fmt.Errorf("pages of vma %#x-%#x: %w", v.Start, v.End, err)
		}
	}
	if err := fb.drain(); err != nil {
		return err
	}
	return b.drain()
}

// DumpShared sends the pages of every shared anonymous object once, to
// the sink open returns for its shmid (pagemap-shmem-SHMID), with image
// addresses being offsets in the object. open's sinks are closed here.
func (d *MemoryDumper) DumpShared(vmas []VMA, open func(shmid uint64) (pagexfer.Sink, error)) error {
	groups := map[uint64][]*VMA{}
	var ids []uint64
	for i := range vmas {
		v := &vmas[i]
		if !v.SharedAnon() {
			continue
		}
		if _, ok := groups[v.Shmid]; !ok {
			ids = append(ids, v.Shmid)
		}
		groups[v.Shmid] = append(groups[v.Shmid], v)
	}
	for _, id := range ids {
		g := groups[id]
		sort.Slice(g, func(i, j int) bool { return g[i].Pgoff < g[j].Pgoff })
		sink, err := open(id)
		if err != nil {
			return err
		}
		err = d.dumpObject(g, sink)
		if cerr := sink.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("shared memory %d: %w", id, err)
		}
	}
	return nil
}

// dumpObject saves the pages of one shared anonymous (shmem) object. It
// reads the object itself through /proc/PID/map_files, not the target's
// page tables: a page that this process never touched through one mapping
// (written through another mapping, or by another process sharing the
// object) is still the object's data. SEEK_DATA/SEEK_HOLE give the pages
// the object holds; holes stay holes.
func (d *MemoryDumper) dumpObject(g []*VMA, sink pagexfer.Sink) error {
	v := g[0]
	t0 := time.Now()
	f, err := os.Open(fmt.Sprintf("/proc/%d/map_files/%x-%x", d.pid, v.Start, v.End))
	if err != nil {
		return fmt.Errorf("open object: %w", err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("stat object: %w", err)
	}
	size := uint64(st.Size) &^ (pageSize - 1)
	d.stats.Scanned += size / pageSize
	fd := int(f.Fd())
	for off := uint64(0); off < size; {
		if err := interrupted(d.ctx); err != nil {
			return err
		}
		data, err := unix.Seek(fd, int64(off), unix.SEEK_DATA)
		if err == unix.ENXIO {
			break // no data after off
		}
		if err != nil {
			return fmt.Errorf("SEEK_DATA at %#x: %w", off, err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("SEEK_HOLE at %#x: %w", data, err)
		}
		from := uint64(data) &^ (pageSize - 1)
		to := min((uint64(hole)+pageSize-1)&^(pageSize-1), size)
		if from >= to {
			break
		}
		d.stats.Untouched += (from - off) / pageSize
		nr := (to - from) / pageSize
		if err := sink.AddPages(from, nr, images.PagePresent, io.NewSectionReader(f, int64(from), int64(to-from))); err != nil {
			return err
		}
		d.stats.Written += nr
		off = to
	}
	d.stats.DumpTime += time.Since(t0)
	return nil
}

// pageSource moves a batch of runs out of the target; reader then yields
// their bytes in order (each AddPages consumes one run).
type pageSource interface {
	load(slot int, runs []run) error
	reader(slot int) interface{ Read([]byte) (int, error) }
	close() error
}

// readvSource copies with process_vm_readv (or, force, /proc/PID/mem).
type readvSource struct {
	pid    int
	force  bool
	buf    [2][]byte
	c      [2]pagexfer.Chunk
	mem    *os.File
	remote []unix.RemoteIovec
}

func (s *readvSource) load(slot int, runs []run) error {
	if s.buf[slot] == nil {
		s.buf[slot] = make([]byte, batchBytes)
	}
	buf := s.buf[slot]
	total := 0
	for _, r := range runs {
		total += int(r.nr * pageSize)
	}
	if s.force {
		if s.mem == nil {
			f, err := os.Open(procfs.Path(s.pid, "mem"))
			if err != nil {
				return err
			}
			s.mem = f
		}
		off := 0
		for _, r := range runs {
			n := int(r.nr * pageSize)
			if _, err := s.mem.ReadAt(buf[off:off+n], int64(r.addr)); err != nil {
				return fmt.Errorf("read /proc/%d/mem at %#x: %w", s.pid, r.addr, err)
			}
			off += n
		}
	} else {
		s.remote = s.remote[:0]
		for _, r := range runs {
			s.remote = append(s.remote, unix.RemoteIovec{Base: uintptr(r.addr), Len: int(r.nr * pageSize)})
		}
		if err := readv(s.pid, buf[:total], s.remote); err != nil {
			return err
		}
	}
	s.c[slot] = pagexfer.NewChunk(buf[:total])
	return nil
}

// readv reads remote into b with process_vm_readv, resuming after
// partial transfers.
func readv(pid int, b []byte, remote []unix.RemoteIovec) error {
	local := []unix.Iovec{{Base: &b[0]}}
	local[0].SetLen(len(b))
	done := 0
	for done < len(b) {
		n, err := unix.ProcessVMReadv(pid, local, remote, 0)
		if err != nil {
			return fmt.Errorf("process_vm_readv of %d at %#x: %w", pid, remote[0].Base, err)
		}
		if n == 0 {
			return fmt.Errorf("process_vm_readv of %d at %#x: no progress", pid, remote[0].Base)
		}
		done += n
		if done == len(b) {
			return nil
		}
		// Drop what was transferred from both sides.
		local[0] = unix.Iovec{Base: &b[done]}
		local[0].SetLen(len(b) - done)
		for n > 0 && len(remote) > 0 {
			if n >= remote[0].Len {
				n -= remote[0].Len
				remote = remote[1:]
				continue
			}
			remote[0].Base += uintptr(n)
			remote[0].Len -= n
			n = 0
		}
	}
	return nil
}

func (s *readvSource) reader(slot int) interface{ Read([]byte) (int, error) } { return &s.c[slot] }

func (s *readvSource) close() error {
	if s.mem != nil {
		s.mem.Close()
		s.mem = nil
	}
	return nil
}

// vmspliceSource makes the target vmsplice its pages into one of two
// pipes (one per batch slot), one short injection session per batch.
type vmspliceSource struct {
	pid     int
	tr      *ptrace.Tracer
	tid     int // the thread the calls are injected into
	scratch uint64
	r       [2]*os.File // our copies of the read ends
	w       [2]int      // the write ends, in the target (-1: none)
	iov     []byte
}

func newVmspliceSource(pid int, tr *ptrace.Tracer, tid int, s *ptrace.Session, scratch uint64) (*vmspliceSource, error) {
	v := &vmspliceSource{pid: pid, tr: tr, tid: tid, scratch: scratch, w: [2]int{-1, -1}, iov: make([]byte, 0, maxBatchIovs*16)}
	for i := range v.r {
		if err := v.openPipe(s, i); err != nil {
			_ = v.closeIn(s)
			return nil, err
		}
	}
	return v, nil
}

// openPipe makes pipe i in the target, takes its read end and closes the
// target's copy of it.
func (v *vmspliceSource) openPipe(s *ptrace.Session, i int) error {
	if _, err := s.Syscall(unix.SYS_PIPE2, v.scratch+scratchPipe, unix.O_CLOEXEC); err != nil {
		return fmt.Errorf("pipe2 in target: %w", err)
	}
	var fds [8]byte
	if err := ptrace.ReadMem(v.pid, v.scratch+scratchPipe, fds[:]); err != nil {
		return err
	}
	rfd := int(int32(leUint32(fds[0:])))
	v.w[i] = int(int32(leUint32(fds[4:])))
	our, err := uffd.TakeFD(v.pid, rfd)
	if _, cerr := s.Syscall(unix.SYS_CLOSE, uint64(rfd)); cerr != nil && err == nil {
		err = cerr
	}
	if err != nil {
		if our >= 0 {
			unix.Close(our)
		}
		return fmt.Errorf("take pipe of %d (fd %d): %w", v.pid, rfd, err)
	}
	v.r[i] = os.NewFile(uintptr(our), "pages-pipe")
	if _, err := unix.FcntlInt(uintptr(our), unix.F_SETPIPE_SZ, batchBytes); err != nil {
		return fmt.Errorf("grow pipe to %d bytes: %w", batchBytes, err)
	}
	return nil
}

// burst runs fn in an injection session of the thread, ended before it
// returns, all on the tracer thread (one cross-thread trip).
func (v *vmspliceSource) burst(fn func(s *ptrace.Session) error) error {
	return v.tr.Do(func() error {
		s, err := v.tr.BeginInjection(v.tid)
		if err != nil {
			return err
		}
		err = fn(s)
		if eerr := s.End(); eerr != nil && err == nil {
			err = eerr
		}
		return err
	})
}

func (v *vmspliceSource) load(slot int, runs []run) error {
	v.iov = v.iov[:0]
	total := uint64(0)
	for _, r := range runs {
		v.iov = appendU64(v.iov, r.addr)
		v.iov = appendU64(v.iov, r.nr*pageSize)
		total += r.nr * pageSize
	}
	if err := ptrace.WriteMem(v.pid, v.scratch+scratchIov, v.iov); err != nil {
		return err
	}
	var k uint64
	err := v.burst(func(s *ptrace.Session) (err error) {
		k, err = s.Syscall(unix.SYS_VMSPLICE, uint64(v.w[slot]), v.scratch+scratchIov, uint64(len(runs)), unix.SPLICE_F_NONBLOCK) // never block the target on a full pipe
		return err
	})
	if err != nil {
		return fmt.Errorf("vmsplice in target at %#x: %w", runs[0].addr, err)
	}
	if k != total {
		// The pipe is empty and holds a whole batch, so this does not
		// happen; if it did, the rest would need rewritten iovecs.
		return fmt.Errorf("vmsplice in target: short transfer %d of %d bytes", k, total)
	}
	return nil
}

func (v *vmspliceSource) reader(slot int) interface{ Read([]byte) (int, error) } { return v.r[slot] }

// close removes the pipes' write ends from the target in a burst of its
// own and closes our read ends.
func (v *vmspliceSource) close() error {
	if v.w[0] < 0 && v.w[1] < 0 {
		return v.closeIn(nil)
	}
	return v.burst(v.closeIn)
}

// closeIn closes the target's write ends with the open session s (nil:
// there are none) and our read ends.
func (v *vmspliceSource) closeIn(s *ptrace.Session) error {
	var err error
	for i := range v.w {
		if v.w[i] >= 0 && s != nil {
			if _, cerr := s.Syscall(unix.SYS_CLOSE, uint64(v.w[i])); cerr != nil && err == nil {
				err = cerr
			}
			v.w[i] = -1
		}
		if v.r[i] != nil {
			v.r[i].Close()
			v.r[i] = nil
		}
	}
	return err
}

func appendU64(b []byte, v uint64) []byte {
	return append(b, byte(v), byte(v>>8), byte(v>>16), byte(v>>24), byte(v>>32), byte(v>>40), byte(v>>48), byte(v>>56))
}

func leUint32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}
