package criuimg

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"godwit/internal/images"
	"godwit/internal/model"
)

func godwitTestTask() *model.Task {
	return &model.Task{Pid: 7,
		MM: &model.MM{VMAs: []model.VMA{
			{Start: 0x10000, End: 0x20000, Status: images.VmaAreaRegular | images.VmaAnonPrivate},
			{Start: 0x30000, End: 0x40000, Status: images.VmaAreaRegular | images.VmaFileShared},
		}},
		FS:      &model.FS{},
		Threads: []*model.Thread{{Tid: 7}, {Tid: 8}},
	}
}

// TestGodwitImage round-trips the godwit image and checks that bad ones
// are refused with a reason.
func TestGodwitImage(t *testing.T) {
	dir, err := images.Open(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	k := godwitTestTask()
	if err := writeGodwit(dir, k, nil, nil); err != nil {
		t.Fatal(err)
	}
	if dir.Exists(GodwitTaskImg(7)) {
		t.Fatal("godwit image written for a task without godwit state")
	}
	k.MM.Membarrier = 1<<4 | 1<<8
	k.MM.THPDisabled, k.MM.THPDisableFlags = true, unix.PR_THP_DISABLE_EXCEPT_ADVISED
	k.FS.CwdDeleted = true
	k.MM.VMAs[0].Droppable = true
	k.MM.VMAs[0].Guards = []model.Range{{Start: 0x11000, End: 0x12000}, {Start: 0x1f000, End: 0x20000}}
	k.XcompPerm = 1<<18 | 1<<17 | 3
	k.Threads[1].Tiles = &model.Tiles{Cfg: make([]byte, 64), Data: make([]byte, 8192)}
	k.Threads[1].Tiles.Data[100] = 9
	cf := uint32(0x7d)
	k.Attrs = model.TaskAttrs{MDWE: 1, CoredumpFilter: &cf}
	k.Threads[1].Attrs = model.ThreadAttrs{Affinity: []uint64{2}, TimerSlack: 7, TSCSigsegv: true, MCEKill: 2, Ioprio: 0x4005}
	if err := writeGodwit(dir, k, nil, nil); err != nil {
		t.Fatal(err)
	}
	got := godwitTestTask()
	got.MM.THPDisabled = true // from the mm image
	if err := readGodwit(dir, got, nil); err != nil {
		t.Fatal(err)
	}
	v := got.MM.VMAs[0]
	if got.MM.Membarrier != k.MM.Membarrier || got.MM.THPDisableFlags != unix.PR_THP_DISABLE_EXCEPT_ADVISED || !got.FS.CwdDeleted || !v.Droppable || len(v.Guards) != 2 ||
		v.Guards[1] != (model.Range{Start: 0x1f000, End: 0x20000}) || got.MM.VMAs[1].Droppable ||
		got.XcompPerm != k.XcompPerm || got.Threads[0].Tiles != nil || got.Threads[1].Tiles == nil || got.Threads[1].Tiles.Data[100] != 9 {
		t.Fatalf("read back %+v %+v %+v", got.MM, got.FS, got.MM.VMAs)
	}
	if a := got.Threads[1].Attrs; got.Attrs.MDWE != 1 || got.Attrs.CoredumpFilter == nil || *got.Attrs.CoredumpFilter != cf ||
		len(a.Affinity) != 1 || a.Affinity[0] != 2 || a.TimerSlack != 7 || !a.TSCSigsegv || a.MCEKill != 2 || a.Ioprio != 0x4005 ||
		got.Threads[0].Attrs.Affinity != nil || got.Threads[0].Attrs.TimerSlack != 0 {
		t.Fatalf("attributes read back %+v %+v %+v", got.Attrs, got.Threads[0].Attrs, a)
	}
	for _, c := range []struct{ in, want string }{
		{`{"version":2}`, "newer godwit"},
		{`{"version":0}`, "bad version"},
		{`{"version":1,"extra":1}`, "unknown field"},
		{`{"version":1,"membarrier":1}`, "unknown membarrier"},
		{`{"version":1,"vmas":[{"start":4096,"end":8192}]}`, "not in the mm image"},
		{`{"version":1,"vmas":[{"start":196608,"end":262144,"droppable":true}]}`, "not private"},
		{`{"version":1,"vmas":[{"start":65536,"end":131072,"guards":[[65536,200000]]}]}`, "bad guard"},
		{`{"version":1,"vmas":[{"start":65536,"end":131072,"guards":[[69632,73728],[65536,69632]]}]}`, "bad guard"},
		{`{"version":1} {}`, "trailing"},
		{`{"version":1,"xcomp_perm":3}`, "without tile data"},
		{`{"version":1,"threads":[{"tid":7,"tilecfg":"","tiledata":""}]}`, "without the permission"},
		{`{"version":1,"xcomp_perm":262144,"threads":[{"tid":7,"tilecfg":"AA==","tiledata":""}]}`, "bytes"},
		{`{"version":1,"mdwe":2}`, "memory-deny-write-execute"},
		{`{"version":1,"thp_disable_flags":2}`, "THP-disable flags"}, // the mm image has THP enabled
		{`{"version":1,"thp_disable_flags":4}`, "THP-disable flags"},
		{`{"version":1,"mdwe":4}`, "memory-deny-write-execute"},
		{`{"version":1,"thread_attrs":[{"tid":9,"ioprio":1}]}`, "not a thread"},
		{`{"version":1,"thread_attrs":[{"tid":7,"ioprio":1},{"tid":7}]}`, "twice"},
		{`{"version":1,"thread_attrs":[{"tid":7,"mce_kill":3}]}`, "machine-check"},
		{`{"version":1,"thread_attrs":[{"tid":7,"affinity":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]}]}`, "affinity"},
		{`{"version":1,"timerfd_deadlines":[{"file":9,"sec":1,"nsec":0}]}`, "not a timerfd"},
		{`{"version":1,"timerfd_deadlines":[{"file":5,"sec":1,"nsec":0}]}`, "not an absolute CLOCK_REALTIME"},
		{`{"version":1,"timerfd_deadlines":[{"file":6,"sec":1,"nsec":1000000000}]}`, "bad timerfd deadline"},
	} {
		err := mergeGodwit([]byte(c.in), godwitTestTask(), godwitTestFiles())
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.in, err, c.want)
		}
	}
}

// FuzzGodwitImage: any bytes give a merge or an error, never a panic, and
// what is merged is consistent with the task.
func FuzzGodwitImage(f *testing.F) {
	f.Add([]byte(`{"version":1,"membarrier":16,"cwd_deleted":true,"vmas":[{"start":65536,"end":131072,"droppable":true,"guards":[[69632,73728]]}]}`))
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`{"version":1,"mdwe":3,"coredump_filter":125,"thread_attrs":[{"tid":8,"affinity":[2],"timer_slack_ns":9,"tsc_sigsegv":true,"mce_kill":1,"ioprio":16389}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		k := godwitTestTask()
		if err := mergeGodwit(b, k, nil); err != nil {
			return
		}
		for _, th := range k.Threads {
			if a := th.Attrs; len(a.Affinity) > 16 || a.MCEKill > 2 {
				t.Fatalf("thread %d: attributes %+v merged", th.Tid, a)
			}
		}
		if f := k.MM.THPDisableFlags; f != 0 && (f != unix.PR_THP_DISABLE_EXCEPT_ADVISED || !k.MM.THPDisabled) {
			t.Fatalf("THP-disable flags %#x merged (disabled %v)", f, k.MM.THPDisabled)
		}
		for _, v := range k.MM.VMAs {
			for _, g := range v.Guards {
				if g.Start < v.Start || g.End > v.End || g.End <= g.Start {
					t.Fatalf("guard %+v outside vma %#x-%#x", g, v.Start, v.End)
				}
			}
		}
	})
}

// godwitTestFiles has a relative timerfd (5) and an absolute
// CLOCK_REALTIME one (6).
func godwitTestFiles() map[model.ID]*model.File {
	return map[model.ID]*model.File{
		5: {ID: 5, Kind: model.TimerFD, TimerFD: &model.TimerFDState{Clock: unix.CLOCK_MONOTONIC}},
		6: {ID: 6, Kind: model.TimerFD, TimerFD: &model.TimerFDState{Clock: unix.CLOCK_REALTIME, SettimeFlags: unix.TFD_TIMER_ABSTIME}},
	}
}

// A wall-clock deadline goes through the godwit image (CRIU's timerfd
// entry has only the time left).
func TestGodwitTimerFDDeadline(t *testing.T) {
	files := godwitTestFiles()
	files[6].TimerFD.Deadline = &unix.Timespec{Sec: 1800000000, Nsec: 5}
	k := godwitTestTask()
	k.FDs = []model.FD{{Num: 3, File: 6}, {Num: 4, File: 6}, {Num: 5, File: 5}}
	dir, err := images.Open(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	if err := writeGodwit(dir, k, files, nil); err != nil {
		t.Fatal(err)
	}
	back := godwitTestFiles()
	if err := readGodwit(dir, godwitTestTask(), back); err != nil {
		t.Fatal(err)
	}
	if d := back[6].TimerFD.Deadline; d == nil || *d != (unix.Timespec{Sec: 1800000000, Nsec: 5}) || back[5].TimerFD.Deadline != nil {
		t.Fatalf("deadline read back: %v", d)
	}
}
