package dumper

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"godwit/internal/bpfiter"
	"godwit/internal/testutil"
)

// startCounterWith starts the counter holding f as fd 3.
func startCounterWith(t *testing.T, f *os.File) *testutil.Proc {
	t.Helper()
	log := filepath.Join(t.TempDir(), "counter.Log")
	cmd := exec.Command(testutil.CounterBin(t, false), log)
	if f != nil {
		cmd.ExtraFiles = []*os.File{f}
	}
	return testutil.Start(t, cmd, log, "ready pid=")
}

// reuseportListener is a TCP listener on loopback with SO_REUSEPORT on.
func reuseportListener(t *testing.T) *os.File {
	t.Helper()
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(s), "listener")
	t.Cleanup(func() { f.Close() })
	if err := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(s, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(s, 8); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestTreeMayHoldInet: the look before the freeze finds an inet socket,
// and none in a task with no socket or only a unix one.
func TestTreeMayHoldInet(t *testing.T) {
	needRoot(t)
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, b := os.NewFile(uintptr(sp[0]), "a"), os.NewFile(uintptr(sp[1]), "b")
	defer a.Close()
	defer b.Close()
	for _, c := range []struct {
		name string
		f    *os.File
		want bool
	}{{"no socket", nil, false}, {"unix socket", a, false}, {"tcp listener", reuseportListener(t), true}} {
		p := startCounterWith(t, c.f)
		if got := treeMayHoldInet(p.Pid); got != c.want {
			t.Errorf("%s: treeMayHoldInet = %v, want %v", c.name, got, c.want)
		}
	}
}

// TestSteeringLoadedBeforeFreeze dumps a process holding a SO_REUSEPORT
// listener: the reuseport steering check's program is loaded (Prepare
// called) before the freeze begins, not by the files driver inside it.
func TestSteeringLoadedBeforeFreeze(t *testing.T) {
	needRoot(t)
	p := startCounterWith(t, reuseportListener(t))
	called := false
	prepareSteering = func() error { called = true; return bpfiter.Prepare() }
	var atStart struct{ called, loaded, hooked bool }
	atFreeze = func() { atStart.called, atStart.loaded, atStart.hooked = called, bpfiter.Prepared(), true }
	defer func() { prepareSteering, atFreeze = bpfiter.Prepare, nil }()
	// Loaded by an earlier test of this process, Prepare is skipped:
	// then only the load's state at the freeze says something.
	before := bpfiter.Prepared()
	if _, err := Dump(dumpOpts(p.Pid, t.TempDir()), nil); err != nil {
		t.Fatal(err)
	}
	switch {
	case !atStart.hooked:
		t.Fatal("the freeze hook did not run")
	case !atStart.loaded:
		t.Fatal("the steering program was not loaded when the freeze began")
	case !before && !atStart.called:
		t.Fatal("Prepare was not called before the freeze")
	}
}
