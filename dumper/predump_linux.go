package dumper

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/stats"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"godwit/internal/images"
	"godwit/internal/logging"
	"godwit/internal/pagexfer"
	"godwit/internal/pidfd"
	"godwit/pageserver"
)

// PreDumpOptions are what one pre-dump round needs.
type PreDumpOptions struct {
	Pid       int
	ImagesDir string
	WorkDir   string // where stats-dump also goes ("": ImagesDir only)
	// PrevImagesDir is the previous round's images directory
	// (--prev-images-dir, relative to ImagesDir or absolute): this round
	// then saves only what changed since. "": a first round.
	PrevImagesDir string
	// PageServer sends the pages there instead of ImagesDir (which
	// still gets the inventory, stats and tracking record).
	PageServer *PageServer
	// HolderTimeout bounds how long the tracking lives without a final
	// dump (0: DefaultHolderTimeout).
	HolderTimeout time.Duration
}

// PreDumpResult is what a round did.
type PreDumpResult struct {
	Pid int
	// Round is the round's number on its tracking (1: tracking started
	// here, every page taken).
	Round uint64
	// Full is set when every page was taken (first round, or the
	// tracking of the parent was lost).
	Full   bool
	Mem    MemStats
	Parent uint64 // pages left to the parent images
	Lost   uint64 // pages unmapped while being read (not in this round)
	Frozen time.Duration
	Notes  []string
	Stats  *stats.DumpStatsEntry
}

// FormatStats renders the round's stats as --display-stats prints them.
func (r *PreDumpResult) FormatStats() string {
	s := images.FormatStats(&stats.StatsEntry{Dump: r.Stats}) +
		fmt.Sprintf("Memory pages skipped (zero page): %d (%#x)\nMemory pages skipped (untouched): %d (%#x)\n",
			r.Mem.Zero, r.Mem.Zero, r.Mem.Untouched, r.Mem.Untouched)
	for _, n := range r.Notes {
		s += "Note: " + n + "\n"
	}
	return s
}

// CRIU's pre_dump_mode values (images/inventory.proto).
const preDumpModeRead = 2 // PRE_DUMP_READ: pages read with process_vm_readv

// PreDump runs one pre-dump round of process o.Pid: the first takes every
// page and starts dirty tracking; later ones (o.PrevImagesDir names the
// previous round) take only the pages written since, leaving the rest to
// the parent images. The target keeps running; it is frozen only for the
// few injected calls that create the tracking userfaultfd (first round).
func PreDump(ctx context.Context, o PreDumpOptions) (*PreDumpResult, error) {
	log := logging.Default()
	pid := o.Pid
	if pid <= 0 {
		return nil, fmt.Errorf("bad pid %d", pid)
	}
	proc, err := pidfd.Open(pid)
	if err != nil {
		return nil, err
	}
	defer proc.Close()
	if err := Check(pid); err != nil {
		return nil, err
	}
	final, err := images.Open(o.ImagesDir, true)
	if err != nil {
		return nil, fmt.Errorf("pre-dump: %w", err)
	}
	defer final.Close()
	var parent *images.Dir
	if o.PrevImagesDir != "" {
		if parent, err = resolveParent(o.ImagesDir, o.PrevImagesDir); err != nil {
			return nil, fmt.Errorf("pre-dump: %w", err)
		}
		defer parent.Close()
	}
	var target PageTarget = localPages{}
	if o.PageServer != nil {
		t, err := dialPageServer(ctx, o.PageServer)
		if err != nil {
			return nil, fmt.Errorf("pre-dump: %w", err)
		}
		defer t.abort()
		defer context.AfterFunc(ctx, t.c.Abort)()
		target = t
	}
	stage, err := images.NewStaging(final)
	if err != nil {
		return nil, fmt.Errorf("pre-dump: %w", err)
	}
	defer stage.Abort() // no-op once committed and kept
	if err := interrupted(ctx); err != nil {
		return nil, fmt.Errorf("pre-dump %d: %w", pid, err)
	}
	tk, err := openTracking(pid, parent, o.HolderTimeout, log, true)
	if err != nil {
		return nil, fmt.Errorf("pre-dump: %w", err)
	}
	defer tk.close()
	// PARENT entries need the parent's pagemap: locally, in the parent
	// directory (a page server answers for its own, see sinkHasParent).
	res, err := preDumpRound(ctx, o, proc, stage, tk, target, parent != nil && parent.Exists(images.PagemapImg(pid)))
	if err != nil {
		tk.fail()
		return nil, fmt.Errorf("pre-dump %d: %w", pid, err)
	}
	if err := images.WriteDumpStats(final, o.WorkDir, res.Stats); err != nil {
		log.Warnf("pre-dump %d: %v", pid, err)
	}
	return res, nil
}

func preDumpRound(ctx context.Context, o PreDumpOptions, proc *pidfd.Proc, stage *images.Staging, tk *tracking, target PageTarget, chained bool) (*PreDumpResult, error) {
	pid := o.Pid
	dir := stage.Dir()
	t0 := time.Now()
	if o.PrevImagesDir != "" {
		// CRIU's layout: "parent" → --prev-images-dir, resolved from
		// the images directory (the link moves there on commit).
		if err := dir.Symlink(o.PrevImagesDir, "parent"); err != nil {
			return nil, err
		}
	}
	vmas, err := roundVMAs(pid)
	if err != nil {
		return nil, err
	}
	if err := proc.Verify(); err != nil {
		return nil, err
	}
	tScan := time.Now()
	dirty, tr, scan, err := tk.scanDirty(vmas)
	if err != nil {
		return nil, err
	}
	logging.Default().Debugf("pre-dump %d: %d VMAs read in %v, tracker scan %v (%d written ranges, %d new)",
		pid, len(vmas), tScan.Sub(t0), time.Since(tScan), len(scan.Written), len(scan.New))
	sink, err := target.Open(dir, images.PagemapImg(pid), 1)
	if err != nil {
		return nil, err
	}
	covered := []span(nil)
	if !tk.fresh {
		covered = tk.st.Covered
		if !sinkHasParent(sink, chained) {
			tk.note("the page server has no parent images of this task (start it with --prev-images-dir): taking every page")
			covered = nil
		}
	}
	w, err := newIncrWriter(pid, sink, dirty, covered, true)
	if err != nil {
		sink.Close()
		return nil, err
	}
	tm := time.Now()
	err = w.writePrivate(vmas)
	w.close()
	if cerr := sink.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	memTime := time.Since(tm)
	if hasShared(vmas) {
		tk.note("shared memory is not pre-dumped: the final dump takes it whole")
	}
	if kids, err := Children(pid); err == nil && len(kids) > 0 {
		tk.note("only process %d is pre-dumped: the final dump takes the memory of its %d child(ren) whole", pid, len(kids))
	}
	if err := target.Commit(); err != nil {
		return nil, err
	}
	if err := interrupted(ctx); err != nil {
		return nil, err
	}
	uptime, err := bootMicros()
	if err != nil {
		return nil, err
	}
	gen := tk.st.Gen + 1
	if err := writeFile(dir, trackRecordName, tk.record(gen)); err != nil {
		return nil, err
	}
	mode := uint32(preDumpModeRead)
	if err := images.WriteInventory(dir, images.InventoryOptions{DumpUptime: uptime, PreDumpMode: &mode}); err != nil {
		return nil, err
	}
	if err := proc.Verify(); err != nil {
		return nil, err
	}
	if err := stage.Commit(); err != nil {
		return nil, err
	}
	if err := tk.commit(tr.Tracked(), scan.Untrackable, w.out); err != nil {
		// The images stand, but no later round can trust the
		// tracking: make the next one take everything.
		_ = stage.Rollback()
		return nil, err
	}
	stage.Keep()
	w.stats.DumpTime = memTime
	res := &PreDumpResult{Pid: pid, Round: gen, Full: tk.fresh || covered == nil, Mem: w.stats,
		Parent: w.Parent, Lost: w.Lost, Frozen: tk.frozen, Notes: tk.notes}
	res.Stats = &stats.DumpStatsEntry{
		FreezingTime:       proto.Uint32(0),
		FrozenTime:         proto.Uint32(uint32(tk.frozen.Microseconds())),
		MemdumpTime:        proto.Uint32(uint32(memTime.Microseconds())),
		MemwriteTime:       proto.Uint32(uint32(memTime.Microseconds())),
		PagesScanned:       proto.Uint64(w.stats.Scanned),
		PagesSkippedParent: proto.Uint64(w.Parent),
		PagesWritten:       proto.Uint64(w.stats.Written),
		PagesLazy:          proto.Uint64(0),
	}
	logging.Default().Infof("pre-dump %d: round %d: %d pages written, %d left to the parent, %d scanned, frozen %v, %v in all",
		pid, gen, w.stats.Written, w.Parent, w.stats.Scanned, tk.frozen, time.Since(t0))
	return res, nil
}

// sinkHasParent tells whether the receiver of the pages can resolve
// PARENT entries: locally the parent link (chained), on a page server its
// answer to OPEN2.
func sinkHasParent(s any, chained bool) bool {
	if ws, ok := s.(watchedSink); ok {
		if ts, ok := ws.s.(*pageserver.TaskSink); ok {
			return ts.HasParent()
		}
		return false
	}
	return chained
}

func hasShared(vmas []VMA) bool {
	for i := range vmas {
		if vmas[i].SharedAnon() {
			return true
		}
	}
	return false
}

// bootMicros is CLOCK_BOOTTIME in microseconds, as CRIU's dump_uptime.
func bootMicros() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0, fmt.Errorf("clock_gettime: %w", err)
	}
	return uint64(ts.Sec)*1e6 + uint64(ts.Nsec)/1e3, nil
}

func writeFile(d *images.Dir, name string, b []byte) error {
	f, err := d.Create(name)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	return f.Close()
}

// trackedDump is the memory tracking a --track-mem dump with a parent
// continues (nil: a plain dump).
type trackedDump struct {
	pid     int // the root task: the one pre-dump rounds tracked
	tk      *tracking
	chained bool
}

// openTrackedDump prepares a final dump on top of pre-dump rounds.
func openTrackedDump(o Options, log *logging.Logger) (*trackedDump, *images.Dir, error) {
	if o.PrevImagesDir == "" {
		if o.TrackMem {
			return nil, nil, errors.New("dump: --track-mem without --prev-images-dir: start tracking with pre-dump")
		}
		return nil, nil, nil
	}
	parent, err := resolveParent(o.ImagesDir, o.PrevImagesDir)
	if err != nil {
		return nil, nil, fmt.Errorf("dump: %w", err)
	}
	hasPagemap := parent.Exists(images.PagemapImg(o.Pid))
	if !o.TrackMem {
		// A full dump that only links its parent, as CRIU's.
		return &trackedDump{pid: o.Pid, chained: hasPagemap}, parent, nil
	}
	// No fresh tracking here: without the parent's, the dump is full.
	tk, err := openTracking(o.Pid, parent, 0, log, false)
	if err != nil {
		parent.Close()
		return nil, nil, fmt.Errorf("dump: %w", err)
	}
	return &trackedDump{pid: o.Pid, tk: tk, chained: hasPagemap}, parent, nil
}

// writePrivate sends the private pages of the frozen task: only what
// changed since the parent round, the rest as PARENT entries.
func (t *trackedDump) writePrivate(pid int, vmas []VMA, sink pagexfer.Sink) (MemStats, uint64, error) {
	dirty := spansOf(trackVMAs(vmas)) // without tracking: everything
	var covered []span
	if t.tk != nil {
		var err error
		if dirty, _, _, err = t.tk.scanDirty(vmas); err != nil {
			return MemStats{}, 0, err
		}
		if sinkHasParent(sink, t.chained) {
			covered = t.tk.st.Covered
		}
	}
	w, err := newIncrWriter(pid, sink, dirty, covered, false)
	if err != nil {
		return MemStats{}, 0, err
	}
	defer w.close()
	t0 := time.Now()
	err = w.writePrivate(vmas)
	w.stats.DumpTime = time.Since(t0)
	return w.stats, w.Parent, err
}

// finish ends the tracking after the dump stood (ok) or failed; only
// the first call counts.
func (t *trackedDump) finish(ok bool) {
	if t == nil || t.tk == nil {
		return
	}
	defer func() { t.tk = nil }()
	if ok {
		t.tk.end()
	} else {
		t.tk.fail()
	}
	t.tk.close()
}

// prepareChain links the parent images into the staged dump and takes
// over the memory tracking of the pre-dump rounds (see openTrackedDump).
func prepareChain(o Options, dir *images.Dir) (*trackedDump, error) {
	td, parent, err := openTrackedDump(o, logging.Default())
	if err != nil || td == nil {
		return nil, err
	}
	parent.Close()
	if err := dir.Symlink(o.PrevImagesDir, "parent"); err != nil {
		td.finish(false)
		return nil, fmt.Errorf("dump: %w", err)
	}
	return td, nil
}

// dedupChain punches the parent images' pages that the dump in d
// replaces (--auto-dedup).
func dedupChain(d *images.Dir, pid int) error {
	st, err := pagexfer.Dedup(d)
	if err != nil {
		return err
	}
	logging.Default().Infof("dump %d: auto-dedup freed %d pages of the parent images", pid, st.Pages)
	return nil
}
