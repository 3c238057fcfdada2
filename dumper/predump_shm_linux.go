package dumper

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"godwit/internal/images"
	"godwit/internal/pagexfer"
	"godwit/internal/procfs"
	"godwit/uffd"
)

// Shared anonymous memory in pre-dump rounds and the final --track-mem dump.
//
// A shared object changes through every mapping of it, and the tracking
// sees the writes of one mapping in one task. A page of an object may be
// left to the parent images only if every write to the object since the
// parent round went through a mapping that was tracked all along:
//   - the object is anonymous shared memory (MAP_SHARED|MAP_ANONYMOUS),
//     which only mappings can write; a memfd can be written through its fd
//     and is taken whole;
//   - no process outside the tree maps it now;
//   - every mapping the parent round recorded is still there, the same,
//     and tracked since; no mapping is new;
//   - no task mapping it forked since: a child that wrote and exited
//     between two rounds is seen by no scan (the holders count forks).
// Then its pages written since are the union of what each mapping saw;
// any other object is taken whole.

// trackedShm tells whether v is shared memory only mappings can write.
func trackedShm(v *VMA) bool {
	return v.SharedAnon() && (v.Path == "/dev/zero" || strings.HasPrefix(v.Path, "[anon_shmem:"))
}

// shmTask is one task's part in the shared memory of a round.
type shmTask struct {
	pid   int
	start uint64
	vmas  []VMA
	tk    *tracking // nil: not tracked (taken whole)
}

// shmObject is one shared object of a round and how to take it.
type shmObject struct {
	id      uint64
	maps    []shmMapping
	tracked bool   // a later round may rely on this round's tracking of it
	whole   string // why every page is taken ("": only what changed)
	dirty   []span // offsets written since the parent round
	covered []span // offsets the parent images hold
}

// planShared sorts the shared objects of the tasks: what changed in each
// since the parent round (prev, nil: none). Whether the parent images
// hold the object is the sink's to say (writeShared).
func planShared(tasks []shmTask, prev *treeRecord) ([]*shmObject, error) {
	byID := map[uint64]*shmObject{}
	var order []*shmObject
	inTree := map[int]bool{}
	kindOK := map[uint64]bool{}
	for _, t := range tasks {
		inTree[t.pid] = true
		for i := range t.vmas {
			v := &t.vmas[i]
			if !v.SharedAnon() {
				continue
			}
			o := byID[v.Shmid]
			if o == nil {
				o = &shmObject{id: v.Shmid}
				byID[v.Shmid] = o
				order = append(order, o)
				kindOK[v.Shmid] = true
			}
			kindOK[v.Shmid] = kindOK[v.Shmid] && trackedShm(v)
			o.maps = append(o.maps, shmMapping{Pid: t.pid, TaskStart: t.start, Start: v.Start, End: v.End, Pgoff: v.Pgoff})
		}
	}
	if len(order) == 0 {
		return nil, nil
	}
	ext, err := outsideMappers(byID, inTree)
	if err != nil {
		return nil, err
	}
	prevShm := map[uint64]*shmRecord{}
	if prev != nil {
		for i := range prev.Shm {
			prevShm[prev.Shm[i].Shmid] = &prev.Shm[i]
		}
	}
	tk := map[int]*tracking{}
	for _, t := range tasks {
		tk[t.pid] = t.tk
	}
	for _, o := range order {
		o.tracked = kindOK[o.id] && ext[o.id] == 0
		pr := prevShm[o.id]
		switch {
		case !kindOK[o.id]:
			o.whole = "a memfd or other shared memory that can be written without a mapping"
		case ext[o.id] != 0:
			o.whole = fmt.Sprintf("process %d, outside the tree, maps it", ext[o.id])
		case pr == nil:
			o.whole = "not in the parent round"
		}
		if o.whole == "" {
			o.whole = o.changedSince(pr, tk)
		}
		if o.whole != "" {
			continue
		}
		o.covered = pr.Covered
		var d []span
		for _, m := range o.maps {
			for _, s := range uffd.Intersect(tk[m.Pid].dirty, []span{{Start: m.Start, End: m.End}}) {
				d = append(d, span{Start: s.Start - m.Start + m.Pgoff, End: s.End - m.Start + m.Pgoff})
			}
		}
		o.dirty = mergeSpans(d)
	}
	return order, nil
}

// changedSince tells why the tracking of the object's mappings does not
// account for every write since the parent round ("": it does).
func (o *shmObject) changedSince(pr *shmRecord, tk map[int]*tracking) string {
	same := func(a, b shmMapping) bool { return a == b }
	for _, p := range pr.Mappings {
		found := false
		for _, m := range o.maps {
			found = found || same(p, m)
		}
		if !found {
			return fmt.Sprintf("its mapping %#x-%#x in task %d changed or went away", p.Start, p.End, p.Pid)
		}
	}
	for _, m := range o.maps {
		found := false
		for _, p := range pr.Mappings {
			found = found || same(p, m)
		}
		if !found {
			return fmt.Sprintf("task %d maps it at %#x-%#x since the parent round", m.Pid, m.Start, m.End)
		}
		t := tk[m.Pid]
		switch {
		case t == nil || t.fresh:
			return fmt.Sprintf("task %d is not tracked since the parent round", m.Pid)
		case t.forked:
			return fmt.Sprintf("task %d forked since the parent round", m.Pid)
		}
	}
	return ""
}

// outsideMappers finds, for each object, a process outside the tree that
// maps it (0: none). Every process's maps are read: anonymous shared
// memory is inherited by fork, so an ancestor or a process that left the
// tree may share it.
func outsideMappers(objs map[uint64]*shmObject, inTree map[int]bool) (map[uint64]int, error) {
	out := map[uint64]int{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	self := os.Getpid()
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil || p == self || inTree[p] {
			continue
		}
		ms, err := procfs.ReadMaps(p)
		if err != nil {
			continue // exited, or a kernel thread
		}
		for i := range ms {
			m := &ms[i]
			if !m.Shared || !(m.Path == "/dev/zero" || strings.HasPrefix(m.Path, "[anon_shmem:")) {
				continue
			}
			if _, ok := objs[m.Inode]; ok && out[m.Inode] == 0 {
				out[m.Inode] = p
			}
		}
	}
	return out, nil
}

// writeShmObject sends the pages the object holds (read through a mapping
// of it: the object itself, not a task's page tables) to sink: with their data where written since the parent round
// or not in the parent images, as PARENT entries elsewhere. It returns the
// pages the sink now covers.
func writeShmObject(o *shmObject, sink pagexfer.Sink, st *MemStats, parent *uint64) ([]span, error) {
	var f *os.File
	err := fmt.Errorf("no mapping")
	for _, m := range o.maps {
		// The first mapping that still exists (a task may have exited
		// during a round).
		if f, err = os.Open(procfs.Path(m.Pid, procfs.MapFilesName(m.Start, m.End))); err == nil {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("open object: %w", err)
	}
	defer f.Close()
	var fst unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &fst); err != nil {
		return nil, fmt.Errorf("stat object: %w", err)
	}
	size := uint64(fst.Size) &^ (pageSize - 1)
	st.Scanned += size / pageSize
	fd := int(f.Fd())
	dc, cc := spanCursor{s: o.dirty}, spanCursor{s: o.covered}
	var out []span
	cover := func(a, b uint64) {
		if k := len(out) - 1; k >= 0 && out[k].End == a {
			out[k].End = b
			return
		}
		out = append(out, span{Start: a, End: b})
	}
	for off := uint64(0); off < size; {
		data, err := unix.Seek(fd, int64(off), unix.SEEK_DATA)
		if err == unix.ENXIO {
			break // no data after off
		}
		if err != nil {
			return nil, fmt.Errorf("SEEK_DATA at %#x: %w", off, err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("SEEK_HOLE at %#x: %w", data, err)
		}
		from := uint64(data) &^ (pageSize - 1)
		to := min((uint64(hole)+pageSize-1)&^(pageSize-1), size)
		if from >= to {
			break
		}
		st.Untouched += (from - off) / pageSize
		for a := from; a < to; {
			keep := false
			end := to
			if o.whole == "" {
				dirty, dEnd := dc.at(a)
				end = min(end, dEnd)
				if !dirty {
					in, cEnd := cc.at(a)
					keep, end = in, min(end, cEnd)
				}
			}
			nr := (end - a) / pageSize
			if keep {
				if err := sink.Hole(a, nr); err != nil {
					return nil, err
				}
				*parent += nr
			} else {
				if err := sink.AddPages(a, nr, images.PagePresent, io.NewSectionReader(f, int64(a), int64(end-a))); err != nil {
					return nil, err
				}
				st.Written += nr
			}
			cover(a, end)
			a = end
		}
		off = to
	}
	return out, nil
}

// sortedMappings orders a record's mappings (stable records compare
// equal).
func sortedMappings(ms []shmMapping) []shmMapping {
	out := append([]shmMapping(nil), ms...)
	sort.Slice(out, func(i, j int) bool {
		if out[i].Pid != out[j].Pid {
			return out[i].Pid < out[j].Pid
		}
		return out[i].Start < out[j].Start
	})
	return out
}

// sharedSink opens where an object's pages go.
type sharedSink func(id uint64) (pagexfer.Sink, error)

// writeShared writes every object of plan; with note, it says why an
// object was taken whole. localHas tells whether the local parent images
// hold an object's pagemap (a page server answers for its own). It returns
// the records of the objects a later round may track on.
func writeShared(plan []*shmObject, open sharedSink, localHas func(id uint64) bool, st *MemStats, parent *uint64, note func(string, ...any)) ([]shmRecord, error) {
	var recs []shmRecord
	for _, o := range plan {
		sink, err := open(o.id)
		if err != nil {
			return nil, err
		}
		if o.whole == "" && !sinkHasParent(sink, localHas(o.id)) {
			o.whole = "the parent images have no pages of it (a page server needs --prev-images-dir)"
		}
		if o.whole != "" && note != nil {
			note("shared memory %d taken whole: %s", o.id, o.whole)
		}
		out, err := writeShmObject(o, sink, st, parent)
		if cerr := sink.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("shared memory %d: %w", o.id, err)
		}
		if o.tracked {
			recs = append(recs, shmRecord{Shmid: o.id, Mappings: sortedMappings(o.maps), Covered: out})
		}
	}
	return recs, nil
}

// shared writes the round's shared objects, after every task's scan.
func (r *treeRound) shared(dir *images.Dir, id *uint32, target PageTarget, parent *images.Dir, pt *parentTrack, res *PreDumpResult) error {
	var ts []shmTask
	for _, t := range r.tasks {
		if !t.gone {
			ts = append(ts, shmTask{pid: t.pid, start: t.tk.start, vmas: t.vmas, tk: t.tk})
		}
	}
	var prev *treeRecord
	if pt != nil {
		prev = pt.rec
	}
	plan, err := planShared(ts, prev)
	if err != nil {
		return err
	}
	var note func(string, ...any)
	if prev != nil {
		note = r.note
	}
	r.shm, err = writeShared(plan, func(shmid uint64) (pagexfer.Sink, error) {
		*id++
		return target.Open(dir, images.PagemapShmemImg(shmid), *id)
	}, func(id uint64) bool { return parent != nil && parent.Exists(images.PagemapShmemImg(id)) }, &res.Mem, &res.Parent, note)
	return err
}

// addShared remembers the shared mappings of a task of the final dump:
// they are written once every task is scanned (writeTrackedShared).
func (t *trackedDump) addShared(pid int, vmas []VMA) error {
	var sh []VMA
	for _, v := range vmas {
		if v.SharedAnon() {
			sh = append(sh, v)
		}
	}
	tk := t.tasks[pid]
	var start uint64
	if tk != nil {
		start = tk.start
	} else {
		var err error
		if start, _, err = startTime(pid); err != nil {
			return err
		}
	}
	t.shm = append(t.shm, shmTask{pid: pid, start: start, vmas: sh, tk: tk})
	return nil
}

// writeTrackedShared writes the shared objects of a --track-mem dump,
// each once, against the parent images.
func (d *dumpRun) writeTrackedShared() error {
	t := d.track
	if t == nil || t.pt == nil {
		return nil
	}
	plan, err := planShared(t.shm, t.pt.rec)
	if err != nil {
		return err
	}
	var st MemStats
	_, err = writeShared(plan, func(shmid uint64) (pagexfer.Sink, error) {
		d.pagesID++
		name := images.PagemapShmemImg(shmid)
		d.note(name)
		d.note(images.PagesImg(d.pagesID))
		return d.sinks(d.dir, name, d.pagesID)
	}, func(id uint64) bool { return t.parent.Exists(images.PagemapShmemImg(id)) }, &st, &d.parentPages, func(f string, a ...any) { d.log.Infof("dump %d: "+f, append([]any{t.root}, a...)...) })
	d.mem.add(st)
	return err
}
