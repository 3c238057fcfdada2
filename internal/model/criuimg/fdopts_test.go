package criuimg

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
)

// A --link-remap file (two descriptions of one inode) and an --external
// file survive Write then Read: LINKED remaps to one REG entry of the
// link, which is no file of the tree read back; the external file keeps
// its key and mark.
func TestLinkedAndExternalRoundTrip(t *testing.T) {
	tr := kindsTree(t)
	linked := &model.GhostState{Dev: 7, Ino: 8, Mode: unix.S_IFREG | 0o600, Linked: "/tmp/link_remap.24"}
	add := []*model.File{
		{ID: 24, Kind: model.Ghost, Path: "/tmp/a", Flags: unix.O_RDWR, Pos: 5, Mode: unix.S_IFREG | 0o600, MntID: -1, Ghost: linked},
		{ID: 25, Kind: model.Ghost, Path: "/tmp/a", Flags: unix.O_RDONLY, Mode: unix.S_IFREG | 0o600, MntID: -1, Ghost: linked},
		{ID: 26, Kind: model.Path, Path: "file[1b:acc2b0]", Flags: unix.O_WRONLY | unix.O_APPEND, MntID: -1, External: true},
	}
	k := tr.Root()
	for i, f := range add {
		tr.Files[f.ID] = f
		k.FDs = append(k.FDs, model.FD{Num: 40 + i, File: f.ID})
	}
	dir, names := writeTree(t, tr)
	if all := strings.Join(names, " "); strings.Count(all, "ghost-file-") != 1 || !strings.Contains(all, RemapFpathImg) {
		t.Fatalf("images %v: want one ghost file (the linked file has none) and %s", names, RemapFpathImg)
	}
	got := readTree(t, dir)
	a, b := got.Files[24], got.Files[25]
	if a == nil || b == nil || a.Kind != model.Ghost || a.Ghost == nil || a.Ghost != b.Ghost || a.Ghost.Linked != linked.Linked || len(a.Ghost.Data) != 0 {
		t.Fatalf("linked files read as %+v, %+v", a, b)
	}
	if a.Path != "/tmp/a" || a.Pos != 5 || b.Flags != unix.O_RDONLY {
		t.Errorf("linked file read as %+v", a)
	}
	for id, f := range got.Files {
		if f.Path == linked.Linked {
			t.Errorf("the link's REG entry read as file %d of the tree", id)
		}
	}
	if e := got.Files[26]; e == nil || !e.External || e.Path != "file[1b:acc2b0]" || e.Flags != unix.O_WRONLY|unix.O_APPEND {
		t.Errorf("external file read as %+v", e)
	}
	// The link adds no file: as many as without the three added.
	base, _ := writeTree(t, kindsTree(t))
	if n := len(readTree(t, base).Files) + len(add); len(got.Files) != n {
		t.Errorf("%d files read, want %d", len(got.Files), n)
	}
}
