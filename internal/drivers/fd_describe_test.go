package drivers

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
)

// fdTable gives the fds of one open file description one file, and the
// fds of distinct descriptions of one file distinct files, over more
// fds than the sort splits between two cores, in a second table too
// (the earlier task's descriptions found by binary search).
func TestFDTableSharing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	var opened []int
	t.Cleanup(func() {
		for _, fd := range opened {
			unix.Close(fd)
		}
	})
	// want[fd] is the index of the open that fd's description came from.
	want := map[int]int{}
	for i := 0; i < 2*parallelSortMin; i++ {
		fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		opened = append(opened, fd)
		want[fd] = i
		if i%3 == 0 { // a dup, at a higher number
			d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			opened = append(opened, d)
			want[d] = i
		}
	}
	all, err := CollectFDs(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	var fds []FD
	for _, fd := range all {
		if _, ok := want[fd.Num]; ok {
			fds = append(fds, fd)
		}
	}
	fl := NewFiles()
	for round := 0; round < 2; round++ {
		table, err := fl.fdTable(os.Getpid(), fds)
		if err != nil {
			t.Fatal(err)
		}
		byOpen := map[int]model.ID{}
		files := map[model.ID]bool{}
		for _, e := range table {
			o := want[e.Num]
			if id, ok := byOpen[o]; ok && id != e.File {
				t.Fatalf("round %d: fd %d is file %d, its dup file %d", round, e.Num, e.File, id)
			}
			if _, ok := byOpen[o]; !ok {
				if files[e.File] {
					t.Fatalf("round %d: fd %d (open %d) shares file %d with another open", round, e.Num, o, e.File)
				}
				files[e.File] = true
			}
			byOpen[o] = e.File
		}
		if len(files) != 2*parallelSortMin {
			t.Fatalf("round %d: %d files for %d opens", round, len(files), 2*parallelSortMin)
		}
	}
	if n := len(fl.Table()); n != 2*parallelSortMin {
		t.Fatalf("%d files in the table after two rounds, want %d (the second finds the first's)", n, 2*parallelSortMin)
	}
}
