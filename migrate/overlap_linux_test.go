package migrate

import (
	"testing"

	"google.golang.org/protobuf/proto"

	pb "godwit/migrate/internal/proto"
	"godwit/restorer"
)

// FuzzLayout feeds layoutOf Layout messages as a peer could send them:
// it never panics, and what it takes is a layout an address space can
// have (sorted, disjoint, page-aligned VMAs; threads other than the root).
func FuzzLayout(f *testing.F) {
	good, _ := proto.Marshal(&pb.Layout{Pid: 100, Tids: []int32{101}, Vmas: []*pb.Vma{
		{Start: 0x400000, End: 0x401000, Status: 1 << 5}, {Start: 0x7f0000000000, End: 0x7f0000100000, Status: 1 << 5, Prot: 3}}})
	f.Add(good)
	bad, _ := proto.Marshal(&pb.Layout{Pid: 100, Vmas: []*pb.Vma{{Start: 0x2000, End: 0x1000}, {Start: 0x1000, End: 0x3000}}})
	f.Add(bad)
	tree, _ := proto.Marshal(&pb.Layout{Pid: 100, Sid: 100, Pgid: 100, Tasks: []*pb.Layout{
		{Pid: 102, Ppid: 100, Sid: 100, Pgid: 100, Tids: []int32{103}, Vmas: []*pb.Vma{{Start: 0x400000, End: 0x401000, Status: 1 << 5}}},
		{Pid: 104, Ppid: 102, Sid: 100, Pgid: 104, Tasks: []*pb.Layout{{Pid: 105}}}}})
	f.Add(tree)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var l pb.Layout
		if proto.Unmarshal(b, &l) != nil {
			return
		}
		got, err := layoutOf(&l, int(l.Pid))
		if err != nil {
			return
		}
		for _, k := range append([]restorer.Layout{*got}, got.Tasks...) {
			if k.Pid <= 1 {
				t.Fatalf("took pid %d", k.Pid)
			}
			var prev uint64
			for _, v := range k.VMAs {
				if v.Start < prev || v.Start >= v.End || v.Start%4096 != 0 || v.End%4096 != 0 {
					t.Fatalf("task %d: took VMA %#x-%#x after %#x", k.Pid, v.Start, v.End, prev)
				}
				prev = v.End
			}
			for _, tid := range k.Tids {
				if tid <= 1 || tid == k.Pid {
					t.Fatalf("took tid %d of pid %d", tid, k.Pid)
				}
			}
		}
		for _, k := range got.Tasks {
			if len(k.Tasks) > 0 {
				t.Fatalf("took task %d with tasks of its own", k.Pid)
			}
		}
	})
}
