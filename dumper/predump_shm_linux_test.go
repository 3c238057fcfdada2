package dumper

import (
	"strings"
	"testing"

	"godwit/internal/images"
)

// planShared leaves a shared object's unwritten pages to the parent only
// when every write since the parent round went through a mapping tracked
// all along; any change of the mappings, a fork, a memfd or an object the
// parent round did not track takes it whole.
func TestPlanShared(t *testing.T) {
	const id = 1 << 60 // no real object has this inode
	shm := func(start, end, pgoff uint64, path string) VMA {
		return VMA{Start: start, End: end, Pgoff: pgoff, Shmid: id, Path: path, Status: images.VmaAnonShared}
	}
	a := shm(0x10000, 0x20000, 0, "/dev/zero")      // 16 pages, offsets 0x0-0x10000
	b := shm(0x50000, 0x58000, 0x8000, "/dev/zero") // 8 pages, offsets 0x8000-0x10000
	tk := func(dirty ...span) *tracking { return &tracking{dirty: dirty} }
	prev := &treeRecord{Shm: []shmRecord{{Shmid: id, Covered: []span{{Start: 0, End: 0x10000}}, Mappings: []shmMapping{
		{Pid: 10, TaskStart: 1, Start: a.Start, End: a.End, Pgoff: a.Pgoff},
		{Pid: 11, TaskStart: 2, Start: b.Start, End: b.End, Pgoff: b.Pgoff},
	}}}}
	for _, c := range []struct {
		name  string
		tasks []shmTask
		prev  *treeRecord
		whole string // "": incremental
		dirty []span
	}{
		{"unchanged", []shmTask{
			{pid: 10, start: 1, vmas: []VMA{a}, tk: tk(span{Start: 0x11000, End: 0x12000})},
			{pid: 11, start: 2, vmas: []VMA{b}, tk: tk(span{Start: 0x50000, End: 0x51000}, span{Start: 0x90000, End: 0x91000})},
		}, prev, "", []span{{Start: 0x1000, End: 0x2000}, {Start: 0x8000, End: 0x9000}}},
		{"mapping gone", []shmTask{
			{pid: 10, start: 1, vmas: []VMA{a}, tk: tk()},
		}, prev, "went away", nil},
		{"new mapping", []shmTask{
			{pid: 10, start: 1, vmas: []VMA{a}, tk: tk()},
			{pid: 11, start: 2, vmas: []VMA{b}, tk: tk()},
			{pid: 12, start: 3, vmas: []VMA{b}, tk: tk()},
		}, prev, "since the parent round", nil},
		{"forked", []shmTask{
			{pid: 10, start: 1, vmas: []VMA{a}, tk: &tracking{forked: true}},
			{pid: 11, start: 2, vmas: []VMA{b}, tk: tk()},
		}, prev, "forked", nil},
		{"untracked task", []shmTask{
			{pid: 10, start: 1, vmas: []VMA{a}, tk: nil},
			{pid: 11, start: 2, vmas: []VMA{b}, tk: tk()},
		}, prev, "not tracked", nil},
		{"memfd", []shmTask{
			{pid: 10, start: 1, vmas: []VMA{shm(a.Start, a.End, 0, "/memfd:x")}, tk: tk()},
			{pid: 11, start: 2, vmas: []VMA{b}, tk: tk()},
		}, prev, "memfd", nil},
		{"no parent", []shmTask{
			{pid: 10, start: 1, vmas: []VMA{a}, tk: tk()},
			{pid: 11, start: 2, vmas: []VMA{b}, tk: tk()},
		}, nil, "not in the parent round", nil},
	} {
		plan, err := planShared(c.tasks, c.prev)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if len(plan) != 1 {
			t.Fatalf("%s: %d objects", c.name, len(plan))
		}
		o := plan[0]
		if c.whole == "" {
			if o.whole != "" || len(o.dirty) != len(c.dirty) {
				t.Errorf("%s: whole %q, dirty %v, want %v", c.name, o.whole, o.dirty, c.dirty)
				continue
			}
			for i := range c.dirty {
				if o.dirty[i] != c.dirty[i] {
					t.Errorf("%s: dirty %v, want %v", c.name, o.dirty, c.dirty)
				}
			}
			if len(o.covered) != 1 || o.covered[0] != (span{Start: 0, End: 0x10000}) {
				t.Errorf("%s: covered %v", c.name, o.covered)
			}
			continue
		}
		if !strings.Contains(o.whole, c.whole) {
			t.Errorf("%s: whole %q, want it to say %q", c.name, o.whole, c.whole)
		}
	}
}
