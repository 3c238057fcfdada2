package restorer

import (
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/mm"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/vma"
	"google.golang.org/protobuf/proto"

	"godwit/internal/images"
	"godwit/internal/procfs"
	"godwit/internal/ptrace"
	"godwit/internal/puppet"
)

// TestMoveVdso moves a puppet's [vvar], [vvar_vclock] and [vdso] to a
// place overlapping their own (through the bounce area) and to a far one.
func TestMoveVdso(t *testing.T) {
	needRoot(t)
	for _, shift := range []int64{2 * pageSize, -3 * pageSize, -(1 << 30)} {
		tr := ptrace.New()
		p, err := puppet.Start(puppet.Options{Tracer: tr})
		if err != nil {
			t.Fatal(err)
		}
		maps, err := procfs.ReadMaps(p.Pid)
		if err != nil {
			t.Fatal(err)
		}
		var special []procfs.Mapping
		var vmas []*vma.VmaEntry
		for _, m := range maps {
			st := uint32(0)
			switch m.Path {
			case "[vdso]":
				st = images.VmaAreaVdso
			case "[vvar]", "[vvar_vclock]":
				st = images.VmaAreaVvar
			default:
				continue
			}
			special = append(special, m)
			vmas = append(vmas, &vma.VmaEntry{Start: proto.Uint64(uint64(int64(m.Start) + shift)),
				End: proto.Uint64(uint64(int64(m.End) + shift)), Status: proto.Uint32(st)})
		}
		r := &Restorer{tr: tr, img: &taskImages{pid: p.Pid, mm: &mm.MmEntry{Vmas: vmas}},
			win: window{base: puppet.DefaultBase, bounce: puppet.DefaultBase + bounceOff}}
		s, err := r.begin(p.Pid)
		if err != nil {
			t.Fatal(err)
		}
		orig := append([]procfs.Mapping(nil), special...)
		if err := s.end(r.moveVdso(s, special)); err != nil {
			t.Fatalf("shift %d: %v", shift, err)
		}
		after, _ := procfs.ReadMaps(p.Pid)
		for _, m := range orig {
			found := false
			for _, a := range after {
				if a.Path == m.Path {
					found = true
					if want := uint64(int64(m.Start) + shift); a.Start != want {
						t.Errorf("shift %d: %s at %#x, want %#x", shift, m.Path, a.Start, want)
					}
				}
			}
			if !found {
				t.Errorf("shift %d: %s gone", shift, m.Path)
			}
		}
		p.Kill()
		tr.Close()
	}
}
