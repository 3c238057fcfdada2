package images

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fs"
	"golang.org/x/sys/unix"
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

// Images hold process memory: whatever the umask, nothing godwit creates in
// an images directory is group- or world-accessible.
func TestDirModes(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	root := t.TempDir()
	path := filepath.Join(root, "a", "b")
	d, err := Open(path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := Write(d, FsImg(1), &fs.FsEntry{CwdId: u32(1), RootId: u32(2)}); err != nil {
		t.Fatal(err)
	}
	// An image left 0644 by an older dump is narrowed when rewritten.
	if err := os.WriteFile(filepath.Join(path, FsImg(2)), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Write(d, FsImg(2), &fs.FsEntry{CwdId: u32(1), RootId: u32(2)}); err != nil {
		t.Fatal(err)
	}
	f, err := d.OpenFile("wide", os.O_WRONLY|os.O_CREATE, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, p := range []string{filepath.Join(root, "a"), path, filepath.Join(path, FsImg(1)), filepath.Join(path, FsImg(2)), filepath.Join(path, "wide")} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v, want no group or world access", p, st.Mode().Perm())
		}
	}
}

// WriteNew makes the file with its bytes, owner-only whatever the umask,
// and refuses a name that exists, leaving that file as it was.
func TestWriteNew(t *testing.T) {
	d, err := Open(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	old := unix.Umask(0)
	defer unix.Umask(old)
	if err := d.WriteNew("tcp-stream-1.img", []byte("abc")); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(d.join("tcp-stream-1.img"), &st); err != nil || st.Mode&0o777 != FilePerm || st.Size != 3 {
		t.Fatalf("made %o, %d bytes: %v", st.Mode&0o777, st.Size, err)
	}
	if err := d.WriteNew("tcp-stream-1.img", []byte("x")); !errors.Is(err, unix.EEXIST) {
		t.Fatalf("second WriteNew: %v, want EEXIST", err)
	}
	if b, err := os.ReadFile(d.join("tcp-stream-1.img")); err != nil || string(b) != "abc" {
		t.Fatalf("after the refusal: %q %v", b, err)
	}
	if err := d.WriteNew("../x.img", nil); err == nil {
		t.Fatal("a name with a slash was written")
	}
}
