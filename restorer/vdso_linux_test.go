package restorer

import (
	"testing"

	"godwit/internal/images"
	"godwit/internal/model"
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
		var vmas []model.VMA
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
			vmas = append(vmas, model.VMA{Start: uint64(int64(m.Start) + shift), End: uint64(int64(m.End) + shift), Status: st})
		}
		r := &taskRun{Restorer: &Restorer{tr: tr}, tr: tr, img: &taskImages{pid: p.Pid, mm: &model.MM{VMAs: vmas}},
			win: window{base: puppet.DefaultBase, bounce: puppet.DefaultBase + bounceOff}}
		s, err := r.begin(p.Pid)
		if err != nil {
			t.Fatal(err)
		}
		orig := append([]procfs.Mapping(nil), special...)
		if err := s.End(r.moveVdso(s, special)); err != nil {
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
