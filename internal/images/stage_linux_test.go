package images

import (
	"os"
	"path/filepath"
	"testing"
)

func stageFile(t *testing.T, d *Dir, name, data string) {
	t.Helper()
	f, err := d.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(data); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func TestStagingKeepsEarlierDump(t *testing.T) {
	path := t.TempDir()
	d, err := Open(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	stageFile(t, d, "core-1.img", "old core")
	stageFile(t, d, InventoryImg, "old inventory")

	// A failed dump: written, then aborted.
	s, err := NewStaging(d)
	if err != nil {
		t.Fatal(err)
	}
	stageFile(t, s.Dir(), "core-1.img", "new core")
	s.Abort()
	ents, _ := os.ReadDir(path)
	if len(ents) != 2 {
		t.Fatalf("after abort the directory holds %d entries, want the 2 old files", len(ents))
	}
	if b, _ := os.ReadFile(filepath.Join(path, "core-1.img")); string(b) != "old core" {
		t.Fatalf("core-1.img = %q after a failed dump", b)
	}

	// A dump without an inventory cannot commit, and leaves the old one.
	s, err = NewStaging(d)
	if err != nil {
		t.Fatal(err)
	}
	stageFile(t, s.Dir(), "core-2.img", "x")
	if err := s.Commit(); err == nil {
		t.Fatal("commit without inventory succeeded")
	}
	s.Abort()

	// A good dump replaces it, inventory included.
	s, err = NewStaging(d)
	if err != nil {
		t.Fatal(err)
	}
	stageFile(t, s.Dir(), "core-1.img", "new core")
	stageFile(t, s.Dir(), InventoryImg, "new inventory")
	stageFile(t, s.Dir(), "core-3.img", "only new")
	if err := s.Commit(); err != nil {
		t.Fatal(err)
	}
	// A failure after the commit (post-dump script, interruption)
	// puts the earlier dump back.
	s.Undo()
	for name, want := range map[string]string{"core-1.img": "old core", InventoryImg: "old inventory"} {
		if b, _ := os.ReadFile(filepath.Join(path, name)); string(b) != want {
			t.Fatalf("after Undo %s = %q, want %q", name, b, want)
		}
	}
	if _, err := os.Stat(filepath.Join(path, "core-3.img")); err == nil {
		t.Fatal("Undo left a new file in place")
	}

	s, err = NewStaging(d)
	if err != nil {
		t.Fatal(err)
	}
	stageFile(t, s.Dir(), "core-1.img", "new core")
	stageFile(t, s.Dir(), InventoryImg, "new inventory")
	if err := s.Commit(); err != nil {
		t.Fatal(err)
	}
	s.Keep()
	for name, want := range map[string]string{"core-1.img": "new core", InventoryImg: "new inventory"} {
		if b, _ := os.ReadFile(filepath.Join(path, name)); string(b) != want {
			t.Fatalf("%s = %q, want %q", name, b, want)
		}
	}
	ents, _ = os.ReadDir(path)
	for _, e := range ents {
		if e.IsDir() {
			t.Fatalf("staging dir %s left behind", e.Name())
		}
	}
}
