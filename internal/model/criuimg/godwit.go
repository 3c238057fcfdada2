package criuimg

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"godwit/internal/images"
	"godwit/internal/model"
)

// GodwitTaskImg names the godwit image of task pid: the task state CRIU's
// images have no field for (membarrier registrations, a deleted cwd,
// MAP_DROPPABLE mappings, guard regions), written beside CRIU's images
// only when the task has some. A dump without it is a plain CRIU dump.
func GodwitTaskImg(pid int) string { return fmt.Sprintf("godwit-task-%d.json", pid) }

// godwitVersion is the version this godwit writes and reads; a newer
// image is refused (it may hold state this godwit would drop).
const godwitVersion = 1

// maxGodwitImg bounds the image read (guard regions are the only list of
// any length).
const maxGodwitImg = 16 << 20

type godwitTask struct {
	Version    int    `json:"version"`
	Membarrier uint32 `json:"membarrier,omitempty"`
	// THPDisableFlags: model.MM.THPDisableFlags.
	THPDisableFlags uint32      `json:"thp_disable_flags,omitempty"`
	CwdDeleted      bool        `json:"cwd_deleted,omitempty"`
	VMAs            []godwitVMA `json:"vmas,omitempty"`
	// XcompPerm and Threads: AMX permission and tile state.
	XcompPerm uint64         `json:"xcomp_perm,omitempty"`
	Threads   []godwitThread `json:"threads,omitempty"`
	// MDWE, CoredumpFilter and ThreadAttrs: model.TaskAttrs and
	// model.ThreadAttrs, where not the defaults.
	MDWE           uint32              `json:"mdwe,omitempty"`
	CoredumpFilter *uint32             `json:"coredump_filter,omitempty"`
	ThreadAttrs    []godwitThreadAttrs `json:"thread_attrs,omitempty"`
	// TimerFDs are the absolute expiries of the task's CLOCK_REALTIME
	// TFD_TIMER_ABSTIME timerfds (model.TimerFDState.Deadline), by the
	// id of their timerfd entry: CRIU's entry has only the time left.
	TimerFDs []godwitTimerFD `json:"timerfd_deadlines,omitempty"`
}

type godwitTimerFD struct {
	File uint32 `json:"file"`
	Sec  int64  `json:"sec"`
	Nsec int64  `json:"nsec"`
}

type godwitThreadAttrs struct {
	Tid        int      `json:"tid"`
	Affinity   []uint64 `json:"affinity,omitempty"`
	TimerSlack uint64   `json:"timer_slack_ns,omitempty"`
	TSCSigsegv bool     `json:"tsc_sigsegv,omitempty"`
	MCEKill    uint32   `json:"mce_kill,omitempty"`
	Ioprio     uint32   `json:"ioprio,omitempty"`
}

// Bounds of model.ThreadAttrs: the affinity words a CPU set holds
// (CPU_SETSIZE 1024), PR_MCE_KILL_EARLY+1, the PR_MDWE_* flags.
const (
	maxAffinityWords = 16
	maxMCEKill       = 2
	mdweMask         = 1 | 2
)

type godwitThread struct {
	Tid      int    `json:"tid"`
	TileCfg  []byte `json:"tilecfg"`
	TileData []byte `json:"tiledata"`
}

// AMX tile state sizes (xstate.TileCfgSize, TileDataSize) and the
// XTILEDATA feature bit.
const (
	tileCfgSize   = 64
	tileDataSize  = 8192
	xfeatTileData = 18
)

type godwitVMA struct {
	Start     uint64      `json:"start"`
	End       uint64      `json:"end"`
	Droppable bool        `json:"droppable,omitempty"`
	HugePage  uint64      `json:"hugetlb,omitempty"`
	Guards    [][2]uint64 `json:"guards,omitempty"`
}

// Known MEMBARRIER_CMD_REGISTER_* bits (include/uapi/linux/membarrier.h):
// GLOBAL_EXPEDITED, PRIVATE_EXPEDITED, _SYNC_CORE, _RSEQ.
const membarrierRegisterMask = 1<<2 | 1<<4 | 1<<6 | 1<<8

func godwitOf(k *model.Task, files map[model.ID]*model.File) *godwitTask {
	g := &godwitTask{Version: godwitVersion}
	seen := map[model.ID]bool{}
	for _, e := range k.FDs {
		if f := files[e.File]; !seen[e.File] && f != nil && f.Kind == model.TimerFD && f.TimerFD != nil && f.TimerFD.Deadline != nil {
			seen[e.File] = true
			g.TimerFDs = append(g.TimerFDs, godwitTimerFD{File: uint32(e.File), Sec: f.TimerFD.Deadline.Sec, Nsec: f.TimerFD.Deadline.Nsec})
		}
	}
	if k.MM != nil {
		g.Membarrier = k.MM.Membarrier
		g.THPDisableFlags = k.MM.THPDisableFlags
		for i := range k.MM.VMAs {
			v := &k.MM.VMAs[i]
			if !v.Droppable && len(v.Guards) == 0 && v.HugePage == 0 {
				continue
			}
			gv := godwitVMA{Start: v.Start, End: v.End, Droppable: v.Droppable, HugePage: v.HugePage}
			for _, r := range v.Guards {
				gv.Guards = append(gv.Guards, [2]uint64{r.Start, r.End})
			}
			g.VMAs = append(g.VMAs, gv)
		}
	}
	if k.FS != nil {
		g.CwdDeleted = k.FS.CwdDeleted
	}
	g.XcompPerm = k.XcompPerm
	for _, th := range k.Threads {
		if th.Tiles != nil {
			g.Threads = append(g.Threads, godwitThread{Tid: th.Tid, TileCfg: th.Tiles.Cfg, TileData: th.Tiles.Data})
		}
		if a := th.Attrs; a.Affinity != nil || a.TimerSlack != 0 || a.TSCSigsegv || a.MCEKill != 0 || a.Ioprio != 0 {
			g.ThreadAttrs = append(g.ThreadAttrs, godwitThreadAttrs{Tid: th.Tid, Affinity: a.Affinity, TimerSlack: a.TimerSlack,
				TSCSigsegv: a.TSCSigsegv, MCEKill: a.MCEKill, Ioprio: a.Ioprio})
		}
	}
	g.MDWE, g.CoredumpFilter = k.Attrs.MDWE, k.Attrs.CoredumpFilter
	if g.Membarrier == 0 && g.THPDisableFlags == 0 && !g.CwdDeleted && len(g.VMAs) == 0 && g.XcompPerm == 0 && len(g.Threads) == 0 &&
		g.MDWE == 0 && g.CoredumpFilter == nil && len(g.ThreadAttrs) == 0 && len(g.TimerFDs) == 0 {
		return nil
	}
	return g
}

// writeGodwit writes k's godwit image when it has state for one.
func writeGodwit(d *images.Dir, k *model.Task, files map[model.ID]*model.File, written func(string)) error {
	g := godwitOf(k, files)
	if g == nil {
		return nil
	}
	return writeJSONImage(d, GodwitTaskImg(k.Pid), g, written)
}

// writeJSONImage writes v as godwit's JSON image name in d.
func writeJSONImage(d *images.Dir, name string, v any, written func(string)) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if written != nil {
		written(name)
	}
	f, err := d.Create(name)
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// readJSONImage reads godwit's JSON image name in d and hands it to
// merge; an image that is not there is no error (nothing to merge).
func readJSONImage(d *images.Dir, name string, merge func([]byte) error) error {
	f, err := d.OpenRead(name)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxGodwitImg+1))
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if err := merge(b); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// decodeStrict decodes one of godwit's JSON images into v: bounded in
// size, no field this godwit does not know, nothing after it.
func decodeStrict(b []byte, v any) error {
	if len(b) > maxGodwitImg {
		return fmt.Errorf("over %d bytes", maxGodwitImg)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}

// readGodwit merges k's godwit image, if any, into k (whose MM, FS and
// fds are read, their files in files), checking it against them.
func readGodwit(d *images.Dir, k *model.Task, files map[model.ID]*model.File) error {
	return readJSONImage(d, GodwitTaskImg(k.Pid), func(b []byte) error { return mergeGodwit(b, k, files) })
}

// mergeGodwit parses a godwit task image and applies it to k.
func mergeGodwit(b []byte, k *model.Task, files map[model.ID]*model.File) error {
	var g godwitTask
	if err := decodeStrict(b, &g); err != nil {
		return err
	}
	switch {
	case g.Version > godwitVersion:
		return fmt.Errorf("version %d is from a newer godwit (this one reads %d)", g.Version, godwitVersion)
	case g.Version != godwitVersion:
		return fmt.Errorf("bad version %d", g.Version)
	}
	if g.Membarrier&^membarrierRegisterMask != 0 {
		return fmt.Errorf("unknown membarrier registrations %#x", g.Membarrier&^membarrierRegisterMask)
	}
	if (g.Membarrier != 0 || g.THPDisableFlags != 0 || len(g.VMAs) > 0) && k.MM == nil {
		return errors.New("memory state for a task without an mm image")
	}
	if g.THPDisableFlags != 0 && (g.THPDisableFlags != unix.PR_THP_DISABLE_EXCEPT_ADVISED || !k.MM.THPDisabled) {
		return fmt.Errorf("THP-disable flags %#x (thp_disabled %v in the mm image)", g.THPDisableFlags, k.MM.THPDisabled)
	}
	if g.CwdDeleted && k.FS == nil {
		return errors.New("deleted cwd for a task without an fs image")
	}
	if g.XcompPerm != 0 && g.XcompPerm&(1<<xfeatTileData) == 0 {
		return fmt.Errorf("xcomp permission %#x without tile data", g.XcompPerm)
	}
	if g.MDWE&^mdweMask != 0 || g.MDWE == unix.PR_MDWE_NO_INHERIT {
		return fmt.Errorf("bad memory-deny-write-execute flags %#x", g.MDWE)
	}
	if g.MDWE != 0 && k.MM == nil {
		return errors.New("memory-deny-write-execute for a task without an mm image")
	}
	k.Attrs = model.TaskAttrs{MDWE: g.MDWE, CoredumpFilter: g.CoredumpFilter}
	attrsOf := map[int]bool{}
	for _, ga := range g.ThreadAttrs {
		var th *model.Thread
		for _, t := range k.Threads {
			if t.Tid == ga.Tid {
				th = t
			}
		}
		switch {
		case th == nil:
			return fmt.Errorf("attributes of thread %d, not a thread of the task", ga.Tid)
		case attrsOf[ga.Tid]:
			return fmt.Errorf("thread %d: attributes twice", ga.Tid)
		case len(ga.Affinity) > maxAffinityWords:
			return fmt.Errorf("thread %d: CPU affinity of %d words", ga.Tid, len(ga.Affinity))
		case ga.MCEKill > maxMCEKill:
			return fmt.Errorf("thread %d: bad machine-check kill policy %d", ga.Tid, ga.MCEKill)
		}
		attrsOf[ga.Tid] = true
		th.Attrs = model.ThreadAttrs{Affinity: ga.Affinity, TimerSlack: ga.TimerSlack, TSCSigsegv: ga.TSCSigsegv,
			MCEKill: ga.MCEKill, Ioprio: ga.Ioprio}
	}
	k.XcompPerm = g.XcompPerm
	for _, gt := range g.Threads {
		if g.XcompPerm == 0 {
			return fmt.Errorf("thread %d: tile state without the permission to use it", gt.Tid)
		}
		if len(gt.TileCfg) != tileCfgSize || len(gt.TileData) != tileDataSize {
			return fmt.Errorf("thread %d: tile state of %d+%d bytes", gt.Tid, len(gt.TileCfg), len(gt.TileData))
		}
		var th *model.Thread
		for _, t := range k.Threads {
			if t.Tid == gt.Tid {
				th = t
			}
		}
		if th == nil {
			return fmt.Errorf("tile state of thread %d, not a thread of the task", gt.Tid)
		}
		if th.Tiles != nil {
			return fmt.Errorf("thread %d: tile state twice", gt.Tid)
		}
		th.Tiles = &model.Tiles{Cfg: gt.TileCfg, Data: gt.TileData}
	}
	if k.MM != nil {
		k.MM.Membarrier = g.Membarrier
		k.MM.THPDisableFlags = g.THPDisableFlags
	}
	if k.FS != nil {
		k.FS.CwdDeleted = g.CwdDeleted
	}
	for _, gt := range g.TimerFDs {
		f := files[model.ID(gt.File)]
		switch {
		case f == nil || f.Kind != model.TimerFD || f.TimerFD == nil:
			return fmt.Errorf("timerfd deadline of file %d, not a timerfd", gt.File)
		case gt.Sec < 0 || gt.Nsec < 0 || gt.Nsec >= 1e9:
			return fmt.Errorf("file %d: bad timerfd deadline %d.%09d", gt.File, gt.Sec, gt.Nsec)
		case f.TimerFD.SettimeFlags&unix.TFD_TIMER_ABSTIME == 0 || (f.TimerFD.Clock != unix.CLOCK_REALTIME && f.TimerFD.Clock != unix.CLOCK_REALTIME_ALARM):
			return fmt.Errorf("file %d: a deadline for a timerfd that is not an absolute CLOCK_REALTIME one", gt.File)
		}
		f.TimerFD.Deadline = &unix.Timespec{Sec: gt.Sec, Nsec: gt.Nsec}
	}
	seen := map[uint64]bool{}
	for _, gv := range g.VMAs {
		v := findVMA(k.MM.VMAs, gv.Start, gv.End)
		if v == nil {
			return fmt.Errorf("vma %#x-%#x is not in the mm image", gv.Start, gv.End)
		}
		if seen[gv.Start] {
			return fmt.Errorf("vma %#x-%#x listed twice", gv.Start, gv.End)
		}
		seen[gv.Start] = true
		if gv.Droppable && !v.Private() {
			return fmt.Errorf("vma %#x-%#x: droppable but not private anonymous", gv.Start, gv.End)
		}
		v.Droppable = gv.Droppable
		if hp := gv.HugePage; hp != 0 {
			if hp < 2<<20 || hp > 1<<30 || hp&(hp-1) != 0 || v.Start%hp != 0 || v.End%hp != 0 || !v.Private() || gv.Droppable {
				return fmt.Errorf("vma %#x-%#x: bad hugetlb page size %d", gv.Start, gv.End, hp)
			}
			v.HugePage = hp
		}
		last := v.Start
		for _, r := range gv.Guards {
			if r[0] < last || r[1] <= r[0] || r[1] > v.End || r[0]%pageSize != 0 || r[1]%pageSize != 0 {
				return fmt.Errorf("vma %#x-%#x: bad guard region %#x-%#x", v.Start, v.End, r[0], r[1])
			}
			last = r[1]
			v.Guards = append(v.Guards, model.Range{Start: r[0], End: r[1]})
		}
	}
	return nil
}

func findVMA(vs []model.VMA, start, end uint64) *model.VMA {
	for i := range vs {
		if vs[i].Start == start && vs[i].End == end {
			return &vs[i]
		}
	}
	return nil
}
