package dumper

import (
	"path/filepath"
	"testing"

	"godwit/internal/images"
	"godwit/internal/procfs"
)

// TestPreDumpChainHasVdso: every round of a pre-dump chain and the final
// dump on top of it hold the [vdso] pages with their data, as a plain dump
// does: CRIU's restore of the chain reads the dumped vDSO, and fails
// ("vdso: Invalid ELF magic") where the pagemap has no entry for it.
func TestPreDumpChainHasVdso(t *testing.T) {
	needRoot(t)
	w := startRewriter(t, 16, 0)
	pid := w.p.Pid
	ms, err := procfs.ReadMaps(pid)
	if err != nil {
		t.Fatal(err)
	}
	var vdso *procfs.Mapping
	for i := range ms {
		if ms[i].Path == "[vdso]" {
			vdso = &ms[i]
		}
	}
	if vdso == nil {
		t.Fatal("the target has no [vdso]")
	}
	root := t.TempDir()
	pre := filepath.Join(root, "pre")
	t.Cleanup(func() { killHolder(t, pre) })
	preDump(t, PreDumpOptions{Pid: pid, ImagesDir: pre})
	holder := holderOf(t, pre)
	o := dumpOpts(pid, filepath.Join(root, "final"))
	o.PrevImagesDir, o.TrackMem = "../pre", true
	if _, err := Dump(o, nil); err != nil {
		t.Fatal(err)
	}
	w.p.Reaped(t)
	waitGone(t, holder)
	for _, d := range []string{pre, filepath.Join(root, "final")} {
		flags := pageFlags(t, d, pid)
		for a := vdso.Start; a < vdso.End; a += pageSize {
			if f, ok := flags[a]; !ok || f&images.PagePresent == 0 {
				t.Errorf("%s: vdso page %#x: flags %#x (in pagemap: %v), want PE_PRESENT", filepath.Base(d), a, f, ok)
			}
		}
	}
}
