package criuimg

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"godwit/internal/images"
	"godwit/internal/model"
)

// memfdTree is sampleTree with a memfd open twice and mapped, and a
// second one only mapped (privately).
func memfdTree(t testing.TB) *model.Tree {
	tr := sampleTree(t)
	page := bytes.Repeat([]byte("m"), images.PageSize)
	a := &model.MemfdState{Dev: 5, Ino: 4242, Name: "godwit a", Size: 3*images.PageSize + 10, Seals: unix.F_SEAL_WRITE | unix.F_SEAL_SHRINK,
		Mode: 0o640, UID: 7, GID: 8, Extents: []model.MemfdExtent{{Off: 0, Data: page}, {Off: 3 * images.PageSize, Data: []byte("tail-bytes")}}}
	b := &model.MemfdState{Dev: 5, Ino: 4243, Name: "b", Size: 0, Seals: unix.F_SEAL_SEAL, Mode: 0o777}
	add := []*model.File{
		{ID: 30, Kind: model.Memfd, Path: "/memfd:godwit a", Flags: unix.O_RDWR | unix.O_LARGEFILE, Pos: 99, MntID: -1, Memfd: a},
		{ID: 31, Kind: model.Memfd, Path: "/memfd:godwit a", Flags: unix.O_RDONLY, MntID: -1, Memfd: a},
		{ID: 32, Kind: model.Memfd, Path: "/memfd:b", Flags: unix.O_RDONLY, MntID: -1, Memfd: b},
	}
	k := tr.Root()
	for i, f := range add[:2] {
		k.FDs = append(k.FDs, model.FD{Num: 40 + i, File: f.ID})
	}
	for _, f := range add {
		tr.Files[f.ID] = f
	}
	k.MM.VMAs = append(k.MM.VMAs,
		model.VMA{Start: 0x7f2000000000, End: 0x7f2000001000, Shmid: 31, Prot: unix.PROT_READ, Flags: unix.MAP_SHARED,
			Status: images.VmaAreaRegular | images.VmaFileShared | images.VmaAreaMemfd, Fdflags: unix.O_RDONLY},
		model.VMA{Start: 0x7f2000010000, End: 0x7f2000011000, Shmid: 32, Prot: unix.PROT_READ, Flags: unix.MAP_PRIVATE,
			Status: images.VmaAreaRegular | images.VmaFilePrivate | images.VmaAreaMemfd, Fdflags: unix.O_RDONLY})
	return tr
}

// A memfd's name, size, seals, owner, mode and contents (holes kept,
// the tail short of a page) survive Write then Read; descriptions and
// mappings of one memfd share one state; the images pass CRIU's checks.
func TestMemfdRoundTrip(t *testing.T) {
	tr := memfdTree(t)
	dir, names := writeTree(t, tr)
	if !slices.Contains(names, MemfdImg) || !slices.Contains(names, images.PagemapShmemImg(4242)) || slices.Contains(names, images.PagemapShmemImg(4243)) {
		t.Fatalf("images written: %v", names)
	}
	got := readTree(t, dir)
	a, a2, b := got.Files[30], got.Files[31], got.Files[32]
	if a.Kind != model.Memfd || a.Memfd == nil || a.Memfd != a2.Memfd || b.Memfd == nil || b.Memfd == a.Memfd {
		t.Fatalf("memfd files read as %+v, %+v, %+v", a, a2, b)
	}
	if a.Flags != unix.O_RDWR|unix.O_LARGEFILE || a.Pos != 99 || a2.Flags != unix.O_RDONLY {
		t.Errorf("descriptions: %+v, %+v", a, a2)
	}
	want, have := *tr.Files[30].Memfd, *a.Memfd
	want.Dev, want.Ino, have.Dev, have.Ino = 0, 0, 0, 0
	if want.Name != have.Name || want.Size != have.Size || want.Seals != have.Seals || want.Mode != have.Mode ||
		want.UID != have.UID || want.GID != have.GID || len(have.Extents) != 2 ||
		!bytes.Equal(have.Extents[0].Data, want.Extents[0].Data) || have.Extents[1].Off != 3*images.PageSize || string(have.Extents[1].Data) != "tail-bytes" {
		t.Errorf("memfd read as %+v, want %+v", have, want)
	}
	vmas := got.Root().MM.VMAs
	if v := vmas[len(vmas)-2]; got.Files[model.ID(v.Shmid)].Memfd != a.Memfd {
		t.Errorf("shared mapping names %+v", got.Files[model.ID(v.Shmid)])
	}
	if v := vmas[len(vmas)-1]; got.Files[model.ID(v.Shmid)].Memfd != b.Memfd || v.Status&images.VmaFilePrivate == 0 {
		t.Errorf("private mapping %+v names %+v", v, got.Files[model.ID(v.Shmid)])
	}
	d, err := images.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := CheckCRIU(d); err != nil {
		t.Error(err)
	}
}

// A memfd mapping that names a file of another kind, or a MEMFD entry
// naming an inode memfd.img lacks, is refused.
func TestMemfdReadRefuses(t *testing.T) {
	tr := memfdTree(t)
	vmas := tr.Root().MM.VMAs
	vmas[len(vmas)-1].Shmid = 1 // the exe, a REG entry
	dir, _ := writeTree(t, tr)
	d, err := images.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := Read(d); err == nil {
		t.Error("memfd mapping of a regular entry read")
	}
	tr = memfdTree(t)
	dir, _ = writeTree(t, tr)
	if err := os.Remove(filepath.Join(dir, MemfdImg)); err != nil {
		t.Fatal(err)
	}
	d2, err := images.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if _, err := Read(d2); err == nil {
		t.Error("MEMFD entries read without memfd.img")
	}
}

// FuzzReadMemfd replaces memfd.img, a memfd's pagemap or files.img of a
// dump with memfds by arbitrary bytes: Read returns a tree or an error,
// never panics, and never hands on a memfd whose data lies past its size.
func FuzzReadMemfd(f *testing.F) {
	tr := memfdTree(f)
	src := f.TempDir()
	d, err := images.Open(src, true)
	if err != nil {
		f.Fatal(err)
	}
	if err := Write(d, tr, nil); err != nil {
		f.Fatal(err)
	}
	d.Close()
	targets := []string{MemfdImg, images.PagemapShmemImg(4242), images.FilesImg}
	for i, n := range targets {
		b, err := os.ReadFile(filepath.Join(src, n))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), b)
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		dir := t.TempDir()
		for _, e := range ents {
			b, err := os.ReadFile(filepath.Join(src, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			if e.Name() == targets[int(which)%len(targets)] {
				b = data
			}
			if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		d, err := images.Open(dir, false)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		got, err := Read(d)
		if err != nil {
			return
		}
		for _, f := range got.Files {
			if m := f.Memfd; m != nil {
				for _, e := range m.Extents {
					if e.Off > m.Size || uint64(len(e.Data)) > m.Size-e.Off {
						t.Fatalf("memfd %q: data at %d+%d past its size %d", m.Name, e.Off, len(e.Data), m.Size)
					}
				}
			}
		}
	})
}
