package criuimg

import (
	"os"
	"path/filepath"
	"testing"

	"godwit/internal/images"
)

// FuzzRead replaces one image of a good dump with arbitrary bytes: Read
// must return a tree or an error, never panic.
func FuzzRead(f *testing.F) {
	src := "testdata/python"
	ents, err := os.ReadDir(src)
	if err != nil {
		f.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	for i, n := range names {
		b, err := os.ReadFile(filepath.Join(src, n))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), b)
	}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		dir := t.TempDir()
		for i, n := range names {
			b, err := os.ReadFile(filepath.Join(src, n))
			if err != nil {
				t.Fatal(err)
			}
			if i == int(which)%len(names) {
				b = data
			}
			if err := os.WriteFile(filepath.Join(dir, n), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		d, err := images.Open(dir, false)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		if tr, err := Read(d); err == nil && len(tr.Tasks) == 0 {
			t.Fatal("no error and no task")
		}
	})
}
