package images

import (
	"maps"
	"os"
	"path/filepath"
	"strings"
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
	if err := s.Rollback(); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"core-1.img": "old core", InventoryImg: "old inventory"} {
		if b, _ := os.ReadFile(filepath.Join(path, name)); string(b) != want {
			t.Fatalf("after Rollback %s = %q, want %q", name, b, want)
		}
	}
	if _, err := os.Stat(filepath.Join(path, "core-3.img")); err == nil {
		t.Fatal("Rollback left a new file in place")
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

// TestStagingFailedPutBack: when the earlier dump cannot be put back, the
// files set aside are kept in the staging directory, which the error
// names, and no inventory claims a whole dump.
func TestStagingFailedPutBack(t *testing.T) {
	path := t.TempDir()
	d, err := Open(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	stageFile(t, d, "core-1.img", "old core")
	stageFile(t, d, InventoryImg, "old inventory")
	s, err := NewStaging(d)
	if err != nil {
		t.Fatal(err)
	}
	stageFile(t, s.Dir(), "core-1.img", "new core")
	stageFile(t, s.Dir(), InventoryImg, "new inventory")
	if err := s.Commit(); err != nil {
		t.Fatal(err)
	}
	// Something took core-1.img's name: a non-empty directory no file
	// can be renamed over.
	blocker := filepath.Join(path, "core-1.img")
	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(blocker, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	err = s.Rollback()
	if err == nil {
		t.Fatal("Rollback reported success with core-1.img not put back")
	}
	kept := filepath.Join(path, s.name, oldDir)
	if !strings.Contains(err.Error(), kept) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("error does not name %s on one line: %v", kept, err)
	}
	for name, want := range map[string]string{"core-1.img": "old core", InventoryImg: "old inventory"} {
		if b, err := os.ReadFile(filepath.Join(kept, name)); string(b) != want {
			t.Errorf("kept %s = %q (%v), want %q", name, b, err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(path, InventoryImg)); err == nil {
		t.Error("an inventory is in place over a partial dump")
	}
	// The lock went with the Staging.
	s2, err := NewStaging(d)
	if err != nil {
		t.Fatal(err)
	}
	s2.Abort()
}

// TestStagingLocksDir: a second dump into the same directory, from this
// process or another open of it, is refused while the first runs.
func TestStagingLocksDir(t *testing.T) {
	path := t.TempDir()
	d, err := Open(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	d2, err := Open(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	s, err := NewStaging(d)
	if err != nil {
		t.Fatal(err)
	}
	for _, dd := range []*Dir{d, d2} {
		s2, err := NewStaging(dd)
		if err == nil {
			s2.Abort()
			t.Fatal("a second concurrent staging in one directory")
		}
		if !strings.Contains(err.Error(), "in use by another dump") || strings.Contains(err.Error(), "\n") {
			t.Fatalf("second staging: %v", err)
		}
	}
	if ents, _ := os.ReadDir(path); len(ents) != 1 {
		t.Fatalf("refused stagings left %d entries", len(ents)-1)
	}
	s.Abort()
	s2, err := NewStaging(d2)
	if err != nil {
		t.Fatalf("staging after the first ended: %v", err)
	}
	s2.Abort()
}

// readDir maps the files of path to their contents (directories: "/").
func readDir(t *testing.T, path string) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(path)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, e := range ents {
		if e.IsDir() {
			m[e.Name()] = "/"
			continue
		}
		b, err := os.ReadFile(filepath.Join(path, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		m[e.Name()] = string(b)
	}
	return m
}

// TestStagingWriteBulk: a bulk image new to the images directory is
// written there at once, one an earlier dump holds is staged and
// replaced at Commit, and whatever a dump wrote so is gone again after
// Abort or after Rollback, the earlier dump left as it was.
func TestStagingWriteBulk(t *testing.T) {
	path := t.TempDir()
	d, err := Open(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	stageFile(t, d, "tcp-stream-1.img", "old 1")
	stageFile(t, d, InventoryImg, "old inventory")
	old := readDir(t, path)

	for _, end := range []string{"abort", "rollback", "keep"} {
		s, err := NewStaging(d)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"tcp-stream-1.img", "tcp-stream-2.img"} {
			if err := s.Dir().WriteBulk(n, []byte("new "+n)); err != nil {
				t.Fatal(err)
			}
		}
		// Never inventory.img, even through WriteBulk.
		if err := s.Dir().WriteBulk(InventoryImg, []byte("new inventory")); err != nil {
			t.Fatal(err)
		}
		mid := readDir(t, path)
		if mid["tcp-stream-2.img"] != "new tcp-stream-2.img" || mid["tcp-stream-1.img"] != "old 1" || mid[InventoryImg] != "old inventory" {
			t.Fatalf("%s: before Commit the directory holds %v", end, mid)
		}
		if err := s.Dir().WriteBulk("tcp-stream-2.img", []byte("again")); err == nil {
			t.Fatalf("%s: a second write of a bulk name succeeded", end)
		}
		if end == "abort" {
			s.Abort()
			if got := readDir(t, path); !maps.Equal(got, old) {
				t.Fatalf("after Abort the directory holds %v, want %v", got, old)
			}
			continue
		}
		if err := s.Commit(); err != nil {
			t.Fatal(err)
		}
		want := map[string]string{"tcp-stream-1.img": "new tcp-stream-1.img", "tcp-stream-2.img": "new tcp-stream-2.img", InventoryImg: "new inventory"}
		if got := readDir(t, path); !maps.Equal(got, mergeStage(got, want)) {
			t.Fatalf("%s: after Commit the directory holds %v, want %v", end, got, want)
		}
		if end == "rollback" {
			if err := s.Rollback(); err != nil {
				t.Fatal(err)
			}
			if got := readDir(t, path); !maps.Equal(got, old) {
				t.Fatalf("after Rollback the directory holds %v, want %v", got, old)
			}
			continue
		}
		s.Keep()
		if got := readDir(t, path); !maps.Equal(got, want) {
			t.Fatalf("after Keep the directory holds %v, want %v", got, want)
		}
	}
}

// mergeStage is want plus got's staging directory (present until Keep).
func mergeStage(got, want map[string]string) map[string]string {
	m := maps.Clone(want)
	for n, v := range got {
		if strings.HasPrefix(n, StagePrefix) {
			m[n] = v
		}
	}
	return m
}
