package images

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fs"
)

func TestDirOps(t *testing.T) {
	root := t.TempDir()
	parent, err := Open(filepath.Join(root, "pre1"), true)
	if err != nil {
		t.Fatal(err)
	}
	defer parent.Close()
	if err := Write(parent, FsImg(7), &fs.FsEntry{CwdId: u32(1), RootId: u32(2)}); err != nil {
		t.Fatal(err)
	}
	d, err := Open(filepath.Join(root, "dump"), true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	// CRIU's layout for pre-dump chains: a relative "parent" symlink.
	if err := d.Symlink("../pre1", "parent"); err != nil {
		t.Fatal(err)
	}
	p, err := d.OpenSubdir("parent")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	e, err := ReadOne[*fs.FsEntry](p, FsImg(7))
	if err != nil || e.GetRootId() != 2 {
		t.Fatalf("through parent link: %v %v", e, err)
	}
	if _, err := d.OpenSubdir(".."); err == nil {
		t.Fatal("OpenSubdir(..) accepted")
	}
	writeFile(t, d, "a.img", []byte("x"))
	names, err := d.List()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"a.img", "parent"}) {
		t.Fatalf("List = %v", names)
	}
	if !d.Exists("a.img") || d.Exists("b.img") || d.Exists("../dump") {
		t.Fatal("Exists")
	}
	if err := d.Remove("a.img"); err != nil {
		t.Fatal(err)
	}
	if err := d.Remove("a.img"); err != nil {
		t.Fatalf("removing a missing file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(d.Path(), "a.img")); !os.IsNotExist(err) {
		t.Fatalf("a.img still there: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}
