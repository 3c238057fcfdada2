package dumper

import (
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"godwit/internal/actions"
	"godwit/internal/drivers"
	"godwit/internal/images"
	"godwit/internal/model"
	"godwit/internal/model/criuimg"
	"godwit/internal/vmaflags"
)

// TestTrackedDumpVMAFlags: a dump on top of a pre-dump round names its
// VMAs' flags from the kernel's VMAs (vmaflags) instead of smaps; the mm
// image must say exactly what smaps says, for a program whose VMAs carry
// every flag a dump reads.
func TestTrackedDumpVMAFlags(t *testing.T) {
	needRoot(t)
	if _, err := vmaflags.Calibrate(); err != nil {
		t.Fatalf("calibrate: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "flags")
	if out, err := exec.Command("gcc", "-O2", "-Wall", "-o", bin, "../internal/vmaflags/testdata/flags.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	log := filepath.Join(t.TempDir(), "flags.log")
	p := start(t, log, "ready", bin, log)
	root := t.TempDir()
	pre, final := filepath.Join(root, "pre"), filepath.Join(root, "final")
	t.Cleanup(func() { killHolder(t, pre) })
	preDump(t, PreDumpOptions{Pid: p.Pid, ImagesDir: pre})
	o := dumpOpts(p.Pid, final)
	o.PrevImagesDir, o.TrackMem, o.LeaveRunning = "../pre", true, true
	// smaps read while the tree is still frozen (post-dump).
	var want []model.VMA
	var werr error
	scripts := &actions.Scripts{Notify: func(action string, _ int) error {
		if action == actions.PostDump {
			want, werr = drivers.CollectVMAs(p.Pid, nil)
		}
		return nil
	}}
	res, err := Dump(o, scripts)
	if err != nil {
		t.Fatalf("dump: %v", err)
	}
	if res.VMAFlags != "kernel" {
		t.Errorf("VMA flags read from %q, want the kernel's VMAs", res.VMAFlags)
	}
	assertRunningUntraced(t, p.Pid)
	if werr != nil || want == nil {
		t.Fatalf("smaps at post-dump: %v", werr)
	}
	d, err := images.Open(final, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	tree, err := criuimg.Read(d)
	if err != nil {
		t.Fatal(err)
	}
	// The images keep [vvar] and [vvar_vclock] as one area (as CRIU).
	noVvar := func(vs []model.VMA) []model.VMA {
		return slices.DeleteFunc(slices.Clone(vs), func(v model.VMA) bool { return v.Status&images.VmaAreaVvar != 0 })
	}
	got, want := noVvar(tree.Root().MM.VMAs), noVvar(want)
	if len(got) != len(want) {
		t.Fatalf("%d VMAs dumped, smaps has %d", len(got), len(want))
	}
	var madv, flags, guards int
	for i := range want {
		g, w := got[i], want[i]
		if g.Start != w.Start || g.End != w.End || g.Prot != w.Prot || g.Flags != w.Flags || g.Madv != w.Madv || g.Droppable != w.Droppable {
			t.Errorf("vma %#x-%#x: dumped flags %#x madv %#x (droppable %v), smaps says flags %#x madv %#x (droppable %v)",
				w.Start, w.End, g.Flags, g.Madv, g.Droppable, w.Flags, w.Madv, w.Droppable)
		}
		// "gu" (6.18) sends the dump looking for guard regions there.
		if w.MayGuard != (len(g.Guards) > 0) {
			t.Errorf("vma %#x-%#x: smaps says guard %v, dumped guards %v", w.Start, w.End, w.MayGuard, g.Guards)
		}
		if w.MayGuard {
			guards++
		}
		if w.Madv != 0 {
			madv++
		}
		if w.Flags&^3 != 0 {
			flags++
		}
	}
	if madv < 8 || flags < 3 || guards != 1 {
		t.Errorf("%d VMAs with advice, %d with map flags, %d with guards: the workload did not make them", madv, flags, guards)
	}
}
