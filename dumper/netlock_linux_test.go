package dumper

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// socketInodes finds a task's sockets, read on copies or from the
// links, and nothing else: the same set both ways.
func TestSocketInodes(t *testing.T) {
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(s)
	f, err := os.CreateTemp(t.TempDir(), "notasocket")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st, fst unix.Stat_t
	if err := unix.Fstat(s, &st); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fstat(int(f.Fd()), &fst); err != nil {
		t.Fatal(err)
	}
	inos := map[uint32]bool{}
	if err := socketInodes(os.Getpid(), inos, make([]byte, 64)); err != nil {
		t.Fatal(err)
	}
	if !inos[uint32(st.Ino)] || inos[uint32(fst.Ino)] {
		t.Fatalf("socket %d found %v, file %d found %v", st.Ino, inos[uint32(st.Ino)], fst.Ino, inos[uint32(fst.Ino)])
	}
	// The links say the same.
	dir, err := os.Open("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	names, err := dir.Readdirnames(-1)
	if err != nil {
		t.Fatal(err)
	}
	pfd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pfd)
	copied, linked := map[uint32]bool{}, map[uint32]bool{}
	if !socketInodesCopied(pfd, names, copied) {
		t.Fatal("copies refused")
	}
	socketInodesLinked(int(dir.Fd()), names, linked, make([]byte, 64))
	if !linked[uint32(st.Ino)] {
		t.Errorf("socket %d not found from the links", st.Ino)
	}
	for ino := range linked {
		if !copied[ino] {
			t.Errorf("socket %d found from the links, not on copies", ino)
		}
	}
	for ino := range copied {
		if !linked[ino] {
			t.Errorf("socket %d found on copies, not from the links", ino)
		}
	}
}
