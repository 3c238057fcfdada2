package dumper

import (
	"context"
	"encoding/json"
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
	"godwit/internal/procfs"
	"godwit/internal/vmaflags"
	"godwit/pageserver"
	"godwit/uffd"
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
	// Pending counts the tracked pages written since this round's scan,
	// counted (not protected again) as the round ended: about what the
	// next round takes. It is the only measure of the program's writes
	// after a first round, whose own size is all of its memory.
	Pending uint64
	Frozen  time.Duration
	Notes   []string
	Stats   *stats.DumpStatsEntry
	// tracked are each task's ranges under tracking as the round ended
	// (DirtyPages).
	tracked map[int][]uffd.VMA
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

// PreDump runs one pre-dump round of the tree of process o.Pid: the first
// takes every page and starts dirty tracking of every task; later ones
// (o.PrevImagesDir names the previous round) take only the pages written
// since, leaving the rest to the parent images. A task that is new since
// the parent round is taken whole; one that is gone is dropped. The tasks
// keep running; each is frozen only for the few injected calls that
// create its tracking userfaultfd (its first round).
func PreDump(ctx context.Context, o PreDumpOptions) (*PreDumpResult, error) {
	log := logging.FromContext(ctx)
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
	// The final dump on top of this round names VMA flags with the
	// table vmaflags learns once per process: learnt meanwhile, it costs
	// that dump nothing.
	go func() { _, _ = vmaflags.Calibrate() }()
	final, err := images.Open(o.ImagesDir, true)
	if err != nil {
		return nil, fmt.Errorf("pre-dump: %w", err)
	}
	defer final.Close()
	var parent *images.Dir
	var pt *parentTrack
	if o.PrevImagesDir != "" {
		if parent, err = resolveParent(o.ImagesDir, o.PrevImagesDir); err != nil {
			return nil, fmt.Errorf("pre-dump: %w", err)
		}
		defer parent.Close()
		if pt, err = readParentTrack(parent); err != nil {
			return nil, fmt.Errorf("pre-dump: %w", err)
		}
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
	r := &treeRound{o: o, root: pid, log: log}
	defer r.close()
	if err := r.open(proc, pt); err != nil {
		r.fail() // the trackings taken so far are not busy any more
		return nil, fmt.Errorf("pre-dump: %w", err)
	}
	res, err := r.run(ctx, proc, stage, parent, pt, target)
	if err != nil {
		r.fail()
		return nil, fmt.Errorf("pre-dump %d: %w", pid, err)
	}
	r.endDropped(pt)
	if err := images.WriteDumpStats(final, o.WorkDir, res.Stats); err != nil {
		log.Warnf("pre-dump %d: %v", pid, err)
	}
	return res, nil
}

// treeRound is one pre-dump round of a tree.
type treeRound struct {
	o     PreDumpOptions
	root  int
	log   *logging.Logger
	tasks []*roundTask // the root first
	notes []string
	shm   []shmRecord // the shared objects tracked
}

// roundTask is one task of a round.
type roundTask struct {
	pid  int
	proc *pidfd.Proc
	tk   *tracking
	gone bool // exited during the round: dropped

	tracked, untrackable []uffd.VMA
	covered              []span
	vmas                 []VMA
	scan                 *uffd.ScanResult
}

// open lists the tree and takes (or starts) the tracking of every task.
func (r *treeRound) open(rootProc *pidfd.Proc, pt *parentTrack) error {
	pids, err := liveTree(r.root)
	if err != nil {
		return err
	}
	for _, p := range pids {
		var proc *pidfd.Proc
		if p == r.root {
			proc = rootProc
		} else if proc, err = pidfd.Open(p); err != nil {
			r.log.Debugf("pre-dump %d: task %d exited before its round", r.root, p)
			continue
		}
		tk, err := openTracking(p, pt, p == r.root, r.o.HolderTimeout, r.log, true)
		if err != nil {
			if p != r.root && proc.Verify() != nil {
				r.log.Debugf("pre-dump %d: task %d exited before its round", r.root, p)
				proc.Close()
				continue
			}
			if p != r.root {
				proc.Close()
				err = fmt.Errorf("task %d: %w", p, err)
			}
			return err
		}
		r.tasks = append(r.tasks, &roundTask{pid: p, proc: proc, tk: tk})
	}
	return nil
}

// liveTree lists pid and its descendants, parents before children
// (zombies left out: they have no memory).
func liveTree(pid int) ([]int, error) {
	out := []int{pid}
	seen := map[int]bool{pid: true}
	for i := 0; i < len(out); i++ {
		kids, err := Children(out[i])
		if err != nil {
			if i == 0 {
				return nil, err
			}
			continue // exited meanwhile
		}
		for _, k := range kids {
			if seen[k] {
				continue
			}
			seen[k] = true
			if st, err := procfs.ReadStat(k); err != nil || st.State == 'Z' || st.State == 'X' {
				continue
			}
			out = append(out, k)
		}
	}
	return out, nil
}

func (r *treeRound) close() {
	for _, t := range r.tasks {
		if t.tk != nil {
			t.tk.close()
		}
		if t.pid != r.root {
			t.proc.Close()
		}
	}
}

// fail ends a failed round for every task.
func (r *treeRound) fail() {
	for _, t := range r.tasks {
		if t.tk != nil {
			t.tk.fail()
		}
	}
}

// endDropped ends the tracking of the tasks the parent round tracked that
// are no longer in the tree (exited: their holders go with them; moved out
// of the tree: nothing will ever use it).
func (r *treeRound) endDropped(pt *parentTrack) {
	if pt == nil || pt.rec == nil {
		return
	}
	in := map[int]bool{}
	for _, t := range r.tasks {
		if !t.gone {
			in[t.pid] = true
		}
	}
	for _, rec := range append([]trackRecord{pt.rec.trackRecord}, pt.rec.Tasks...) {
		if !in[rec.TargetPid] {
			killRecordedHolder(rec)
		}
	}
}

// killRecordedHolder kills the holder rec names, if it still is that
// holder.
func killRecordedHolder(rec trackRecord) {
	hfd, err := unix.PidfdOpen(rec.HolderPid, 0)
	if err != nil {
		return
	}
	defer unix.Close(hfd)
	if hs, comm, err := startTime(rec.HolderPid); err == nil && hs == rec.HolderStart && comm == holderComm {
		_ = unix.PidfdSendSignal(hfd, unix.SIGKILL, nil, 0)
	}
}

func (r *treeRound) run(ctx context.Context, rootProc *pidfd.Proc, stage *images.Staging, parent *images.Dir, pt *parentTrack, target PageTarget) (*PreDumpResult, error) {
	dir := stage.Dir()
	t0 := time.Now()
	if r.o.PrevImagesDir != "" {
		// CRIU's layout: "parent" → --prev-images-dir, resolved from
		// the images directory (the link moves there on commit).
		if err := dir.Symlink(r.o.PrevImagesDir, "parent"); err != nil {
			return nil, err
		}
	}
	res := &PreDumpResult{Pid: r.root, Full: true}
	var memTime time.Duration
	id := uint32(0)
	for _, t := range r.tasks {
		if err := interrupted(ctx); err != nil {
			return nil, err
		}
		id++
		chained := parent != nil && parent.Exists(images.PagemapImg(t.pid))
		tm := time.Now()
		w, err := r.task(t, dir, id, target, chained)
		memTime += time.Since(tm)
		if err != nil {
			if t.pid != r.root && t.proc.Verify() != nil {
				r.log.Infof("pre-dump %d: task %d exited during its round: dropped", r.root, t.pid)
				t.gone = true
				t.tk.fail()
				continue
			}
			if t.pid != r.root {
				err = fmt.Errorf("task %d: %w", t.pid, err)
			}
			return nil, err
		}
		res.Mem.add(w.stats)
		res.Parent += w.Parent
		res.Lost += w.Lost
		if n, err := pendingPages(t.pid, t.tracked); err == nil {
			res.Pending += n
		} else if t.pid != r.root && t.proc.Verify() != nil {
			r.log.Debugf("pre-dump %d: task %d exited after its pages", r.root, t.pid)
		} else {
			return nil, fmt.Errorf("task %d: count written pages: %w", t.pid, err)
		}
		res.Full = res.Full && (t.tk.fresh || t.covered == nil)
		res.Frozen = max(res.Frozen, t.tk.frozen)
	}
	if err := r.shared(dir, &id, target, parent, pt, res); err != nil {
		return nil, err
	}
	if err := target.Commit(); err != nil {
		return nil, err
	}
	res.Mem.ZeroSent, res.Mem.SameSent = dedupedBy(target)
	if err := interrupted(ctx); err != nil {
		return nil, err
	}
	uptime, err := bootMicros()
	if err != nil {
		return nil, err
	}
	rec, err := r.record()
	if err != nil {
		return nil, err
	}
	if err := writeFile(dir, trackRecordName, rec); err != nil {
		return nil, err
	}
	mode := uint32(preDumpModeRead)
	if err := images.WriteInventory(dir, images.InventoryOptions{DumpUptime: uptime, PreDumpMode: &mode}); err != nil {
		return nil, err
	}
	if err := rootProc.Verify(); err != nil {
		return nil, err
	}
	if err := stage.Commit(); err != nil {
		return nil, err
	}
	for _, t := range r.tasks {
		if t.gone {
			continue
		}
		if err := t.tk.commit(t.tracked, t.untrackable, t.covered); err != nil {
			// The images stand, but no later round can trust the
			// tracking: make the next one take everything.
			_ = stage.Rollback()
			return nil, err
		}
	}
	stage.Keep()
	res.tracked = map[int][]uffd.VMA{}
	for _, t := range r.tasks {
		if !t.gone {
			res.tracked[t.pid] = t.tracked
		}
	}
	res.Round = r.tasks[0].tk.st.Gen
	for _, t := range r.tasks {
		res.Notes = append(res.Notes, t.tk.notes...)
	}
	res.Notes = append(res.Notes, r.notes...)
	res.Mem.DumpTime = memTime
	res.Stats = &stats.DumpStatsEntry{
		FreezingTime:       proto.Uint32(0),
		FrozenTime:         proto.Uint32(uint32(res.Frozen.Microseconds())),
		MemdumpTime:        proto.Uint32(uint32(memTime.Microseconds())),
		MemwriteTime:       proto.Uint32(uint32(memTime.Microseconds())),
		PagesScanned:       proto.Uint64(res.Mem.Scanned),
		PagesSkippedParent: proto.Uint64(res.Parent),
		PagesWritten:       proto.Uint64(res.Mem.Written),
		PagesLazy:          proto.Uint64(0),
	}
	r.log.Infof("pre-dump %d: round %d of %d task(s): %d pages written, %d left to the parent, %d scanned, frozen at most %v, %v in all",
		r.root, res.Round, len(r.tasks), res.Mem.Written, res.Parent, res.Mem.Scanned, res.Frozen, time.Since(t0))
	return res, nil
}

// pendingPages counts the pages of tracked (pid's ranges under uffd-wp)
// written since their last scan. It only reads the write-protect bits: the
// next round still finds and takes every one of them.
func pendingPages(pid int, tracked []uffd.VMA) (uint64, error) {
	if len(tracked) == 0 {
		return 0, nil
	}
	pm, err := uffd.OpenPagemap(pid)
	if err != nil {
		return 0, err
	}
	defer pm.Close()
	var n uint64
	var regs []uffd.Region
	for _, v := range tracked {
		regs, err = pm.Scan(uffd.ScanArgs{Start: v.Start, End: v.End, CategoryMask: uffd.PageIsWritten, ReturnMask: uffd.PageIsWritten}, regs[:0])
		if err != nil {
			return 0, fmt.Errorf("range %v: %w", v, err)
		}
		for _, r := range regs {
			n += (r.End - r.Start) / pageSize
		}
	}
	return n, nil
}

// DirtyPages counts about the pages a pre-dump round of the tree of pid
// would take if it scanned now, after round prev: in each task the pages
// written since prev's scan in the ranges prev tracked, and every resident
// page of the rest (tasks and mappings new since, ranges that cannot be
// tracked, shared memory taken whole), which a round takes whole. It only
// reads the write-protect bits: the round still finds every one of them.
// Pages the tree writes between this count and the round's scan are not
// in it. A count taken just before a round sizes it where the rounds
// before say nothing of it (a program that was starved while they ran,
// or that starts writing after them).
func DirtyPages(pid int, prev *PreDumpResult) (uint64, error) {
	pids, err := liveTree(pid)
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, p := range pids {
		c, err := taskDirtyPages(p, prev)
		if err != nil {
			if p == pid {
				return 0, err
			}
			continue // exited meanwhile: nothing of it in the round
		}
		n += c
	}
	return n, nil
}

// taskDirtyPages is DirtyPages for one task.
func taskDirtyPages(pid int, prev *PreDumpResult) (uint64, error) {
	vmas, err := roundVMAs(pid)
	if err != nil {
		return 0, err
	}
	cur := spansOf(trackVMAs(vmas))
	var whole, special []uffd.VMA
	var n uint64
	for i := range vmas {
		switch v := &vmas[i]; {
		case v.Status&images.VmaAreaVdso != 0:
			// Its pages are in every round, and no scan shows them.
			n += (v.End - v.Start) / pageSize
			special = append(special, uffd.VMA{Start: v.Start, End: v.End})
		case v.Status&images.VmaAreaVvar != 0:
			special = append(special, uffd.VMA{Start: v.Start, End: v.End})
		case v.SharedAnon() && !trackedShm(v):
			whole = append(whole, uffd.VMA{Start: v.Start, End: v.End})
		}
	}
	var steady []span
	if prev != nil {
		steady = uffd.Intersect(cur, spansOf(prev.tracked[pid]))
	}
	whole = append(whole, uffd.Subtract(uffd.Subtract(cur, steady), spansOf(special))...)
	pm, err := uffd.OpenPagemap(pid)
	if err != nil {
		return 0, err
	}
	defer pm.Close()
	var regs []uffd.Region
	count := func(spans []uffd.VMA, anyOf uint64) error {
		for _, v := range spans {
			regs, err = pm.Scan(uffd.ScanArgs{Start: v.Start, End: v.End, CategoryAnyof: anyOf, ReturnMask: anyOf}, regs[:0])
			if err != nil {
				return fmt.Errorf("range %v: %w", v, err)
			}
			for _, r := range regs {
				n += (r.End - r.Start) / pageSize
			}
		}
		return nil
	}
	if err := count(steady, uffd.PageIsWritten); err != nil {
		return 0, err
	}
	if err := count(whole, uffd.PageIsPresent|uffd.PageIsSwapped); err != nil {
		return 0, err
	}
	return n, nil
}

func (r *treeRound) note(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	r.notes = append(r.notes, s)
	r.log.Warnf("pre-dump %d: %s", r.root, s)
}

// task writes one task's private pages (pagemap-PID.img, pages id id).
func (r *treeRound) task(t *roundTask, dir *images.Dir, id uint32, target PageTarget, chained bool) (*incrWriter, error) {
	tk := t.tk
	vmas, err := roundVMAs(t.pid)
	if err != nil {
		return nil, err
	}
	if err := t.proc.Verify(); err != nil {
		return nil, err
	}
	tScan := time.Now()
	dirty, tr, scan, err := tk.scanDirty(vmas)
	if err != nil {
		return nil, err
	}
	r.log.Debugf("pre-dump %d: task %d: %d VMAs, tracker scan %v (%d written ranges, %d new)",
		r.root, t.pid, len(vmas), time.Since(tScan), len(scan.Written), len(scan.New))
	sink, err := target.Open(dir, images.PagemapImg(t.pid), id)
	if err != nil {
		return nil, err
	}
	covered := []span(nil)
	if !tk.fresh {
		covered = tk.st.Covered
		if !sinkHasParent(sink, chained) {
			tk.note("the page server has no parent images of task %d (start it with --prev-images-dir): taking every page", t.pid)
			covered = nil
		}
	}
	w, err := newIncrWriter(t.pid, sink, dirty, covered, true)
	if err != nil {
		sink.Close()
		return nil, err
	}
	err = w.writePrivate(vmas)
	w.close()
	if cerr := sink.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	t.vmas, t.scan = vmas, scan
	t.tracked, t.untrackable, t.covered = tr.Tracked(), scan.Untrackable, w.out
	if covered == nil && !tk.fresh {
		t.covered = w.out
	}
	return w, nil
}

// record is this round's godwit-track.json.
func (r *treeRound) record() ([]byte, error) {
	var rec treeRecord
	for _, t := range r.tasks {
		if t.gone {
			continue
		}
		k := t.tk.recordOf(t.tk.st.Gen + 1)
		if t.pid == r.root {
			rec.trackRecord = k
		} else {
			rec.Tasks = append(rec.Tasks, k)
		}
	}
	rec.Shm = r.shm
	return json.Marshal(&rec)
}

// sinkHasParent tells whether the receiver of the pages can resolve
// PARENT entries: locally the parent link (chained), on a page server its
// answer to OPEN2.
func sinkHasParent(s any, chained bool) bool {
	if ls, ok := s.(*lazySink); ok {
		return sinkHasParent(ls.inner, chained)
	}
	if ws, ok := s.(watchedSink); ok {
		if ts, ok := ws.s.(*pageserver.TaskSink); ok {
			return ts.HasParent()
		}
		return false
	}
	return chained
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

// trackedDump is the memory tracking a dump with a parent continues, for
// every task of the tree (nil: a plain dump).
type trackedDump struct {
	root   int
	parent *images.Dir
	pt     *parentTrack // nil: a full dump that only links its parent
	tasks  map[int]*tracking
	shm    []shmTask // the shared mappings of the tasks dumped
	log    *logging.Logger
}

// openTrackedDump prepares a final dump on top of pre-dump rounds. The
// root's tracking is taken at once (another round still running fails the
// dump before anything is frozen); the other tasks' as they are dumped.
func openTrackedDump(o Options, log *logging.Logger) (*trackedDump, error) {
	if o.PrevImagesDir == "" {
		if o.TrackMem {
			return nil, errors.New("dump: --track-mem without --prev-images-dir: start tracking with pre-dump")
		}
		return nil, nil
	}
	parent, err := resolveParent(o.ImagesDir, o.PrevImagesDir)
	if err != nil {
		return nil, fmt.Errorf("dump: %w", err)
	}
	td := &trackedDump{root: o.Pid, parent: parent, tasks: map[int]*tracking{}, log: log}
	if !o.TrackMem {
		// A full dump that only links its parent, as CRIU's.
		return td, nil
	}
	if td.pt, err = readParentTrack(parent); err != nil {
		parent.Close()
		return nil, fmt.Errorf("dump: %w", err)
	}
	// No fresh tracking here: without the parent's, the dump is full.
	tk, err := openTracking(o.Pid, td.pt, true, 0, log, false)
	if err != nil {
		parent.Close()
		return nil, fmt.Errorf("dump: %w", err)
	}
	td.tasks[o.Pid] = tk
	return td, nil
}

// writePrivate sends the private pages of the frozen task pid: only what
// changed since the parent round, the rest as PARENT entries.
func (t *trackedDump) writePrivate(pid int, vmas []VMA, sink pagexfer.Sink) (MemStats, uint64, error) {
	dirty := spansOf(trackVMAs(vmas)) // without tracking: everything
	var covered, unchanged []span
	if t.pt != nil {
		tk, ok := t.tasks[pid]
		if !ok {
			var err error
			if tk, err = openTracking(pid, t.pt, false, 0, t.log, false); err != nil {
				return MemStats{}, 0, err
			}
			t.tasks[pid] = tk
		}
		if tk != nil {
			var err error
			ts := time.Now()
			if dirty, _, _, err = tk.scanDirty(vmas); err != nil {
				return MemStats{}, 0, err
			}
			t.log.Debugf("dump %d: dirty scan: %v", pid, time.Since(ts))
			if sinkHasParent(sink, t.parent.Exists(images.PagemapImg(pid))) {
				covered = tk.st.Covered
			}
			if covered != nil {
				if removed, err := tk.discards(); err != nil {
					t.log.Debugf("dump %d: every page walked: %v", pid, err)
				} else {
					unchanged = unchangedSpans(vmas, covered, dirty, removed)
				}
			}
		}
	}
	w, err := newIncrWriter(pid, sink, dirty, covered, false)
	if err != nil {
		return MemStats{}, 0, err
	}
	defer w.close()
	w.unchanged = unchanged
	if ls, ok := sink.(*lazySink); ok {
		w.lazy = ls
	}
	t0 := time.Now()
	err = w.writePrivate(vmas)
	w.stats.DumpTime = time.Since(t0)
	w.stats.Unwalked = w.Unwalked
	t.log.Debugf("dump %d: private pages: %v (%v of it in PAGEMAP_SCAN, %d pages read, %d unchanged since the parent not walked)",
		pid, w.stats.DumpTime, w.ScanTime, w.stats.Written, w.Unwalked)
	return w.stats, w.Parent, err
}

// finish ends the tracking after the dump stood (ok) or failed; only
// the first call counts.
func (t *trackedDump) finish(ok bool) {
	if t == nil || t.parent == nil {
		return
	}
	for _, tk := range t.tasks {
		if tk == nil {
			continue
		}
		if ok {
			tk.end()
		} else {
			tk.fail()
		}
		tk.close()
	}
	if ok && t.pt != nil && t.pt.rec != nil {
		// The tasks of the rounds that the dump did not reach
		// (gone from the tree): nothing will use their tracking.
		for _, rec := range append([]trackRecord{t.pt.rec.trackRecord}, t.pt.rec.Tasks...) {
			if _, ok := t.tasks[rec.TargetPid]; !ok {
				killRecordedHolder(rec)
			}
		}
	}
	t.tasks = nil
	t.parent.Close()
	t.parent = nil
}

// prepareChain links the parent images into the staged dump and takes
// over the memory tracking of the pre-dump rounds (see openTrackedDump).
func prepareChain(ctx context.Context, o Options, dir *images.Dir) (*trackedDump, error) {
	td, err := openTrackedDump(o, logging.FromContext(ctx))
	if err != nil || td == nil {
		return nil, err
	}
	if err := dir.Symlink(o.PrevImagesDir, "parent"); err != nil {
		td.finish(false)
		return nil, fmt.Errorf("dump: %w", err)
	}
	return td, nil
}

// dedupChain punches the parent images' pages that the dump in d
// replaces (--auto-dedup).
func dedupChain(ctx context.Context, d *images.Dir, pid int) error {
	st, err := pagexfer.Dedup(d)
	if err != nil {
		return err
	}
	logging.FromContext(ctx).Infof("dump %d: auto-dedup freed %d pages of the parent images", pid, st.Pages)
	return nil
}
