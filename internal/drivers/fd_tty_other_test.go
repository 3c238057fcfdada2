package drivers

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestTtyReopenFlags(t *testing.T) {
	for _, dumped := range []int{unix.O_RDONLY, unix.O_WRONLY, unix.O_RDWR, unix.O_RDWR | unix.O_NONBLOCK, unix.O_WRONLY | unix.O_APPEND} {
		got := ttyReopenFlags(dumped)
		if got&unix.O_NONBLOCK == 0 || got&unix.O_NOCTTY == 0 || got&unix.O_ACCMODE != dumped&unix.O_ACCMODE || got&dumped != dumped {
			t.Errorf("ttyReopenFlags(%#x) = %#x: want the dumped flags with O_NONBLOCK and O_NOCTTY", dumped, got)
		}
	}
}

// reopenTty and setTtyFlags on a pty slave (a tty the test can make):
// the description is opened non-blocking, then gets exactly the dumped
// status flags; another device, or a link to the device, is refused.
func TestReopenTty(t *testing.T) {
	m, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(m)
	if err := unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(m, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	path := fmt.Sprintf("/dev/pts/%d", n)
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	for _, dumped := range []int{unix.O_RDWR, unix.O_RDWR | unix.O_NONBLOCK, unix.O_WRONLY | unix.O_APPEND} {
		fd, err := reopenTty(path, st.Rdev, dumped|unix.O_NOCTTY|unix.O_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		if err != nil || fl&unix.O_NONBLOCK == 0 || fl&unix.O_ACCMODE != dumped&unix.O_ACCMODE {
			unix.Close(fd)
			t.Fatalf("dumped %#x: opened with flags %#x (%v), want non-blocking with its access mode", dumped, fl, err)
		}
		if err := setTtyFlags(fd, dumped); err != nil {
			unix.Close(fd)
			t.Fatal(err)
		}
		fl, err = unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		unix.Close(fd)
		if err != nil || fl&(ttySetflMask|unix.O_ACCMODE) != dumped {
			t.Fatalf("dumped %#x: installed with %#x (%v)", dumped, fl&(ttySetflMask|unix.O_ACCMODE), err)
		}
	}
	if fd, err := reopenTty(path, st.Rdev+1, unix.O_RDWR); err == nil || !strings.Contains(err.Error(), "not") {
		unix.Close(fd)
		t.Fatalf("another device: %v, want a refusal", err)
	}
	link := filepath.Join(t.TempDir(), "tty")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	if fd, err := reopenTty(link, st.Rdev, unix.O_RDWR); err == nil {
		unix.Close(fd)
		t.Fatal("a link to the device was followed")
	}
}
