package criuimg

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"godwit/internal/images"
	"godwit/internal/model"
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
		CheckCRIU(d) // reads the same untrusted images: errors, never a panic
		tr, err := Read(d)
		if err != nil {
			return
		}
		if len(tr.Tasks) == 0 {
			t.Fatal("no error and no task")
		}
		// What Read promises the restorer: every file id it hands on
		// resolves.
		for _, k := range tr.Tasks {
			ids := map[string]model.ID{}
			if k.MM != nil {
				ids["exe"] = k.MM.Exe
				for _, v := range k.MM.VMAs {
					if v.FileBacked() {
						ids[fmt.Sprintf("vma %#x", v.Start)] = model.ID(v.Shmid)
					}
				}
			}
			if k.FS != nil {
				ids["cwd"], ids["root"] = k.FS.Cwd, k.FS.Root
			}
			for _, fd := range k.FDs {
				ids[fmt.Sprintf("fd %d", fd.Num)] = fd.File
			}
			for what, id := range ids {
				if tr.Files[id] == nil {
					t.Fatalf("task %d: %s refers to file %d, which Read did not return", k.Pid, what, id)
				}
			}
		}
	})
}
