package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	criu "github.com/checkpoint-restore/go-criu/v8"
	"github.com/checkpoint-restore/go-criu/v8/phaul"
)

// phaulLocal is the final step P.Haul leaves to its caller; the
// migration below never reaches it while ps.fd is refused.
type phaulLocal struct{ t *testing.T }

func (l phaulLocal) DumpCopyRestore(*criu.Criu, phaul.Config, string) error {
	l.t.Error("phaul reached the final dump although its pre-dump rounds need ps.fd")
	return nil
}

// go-criu's phaul package migrates through the page-server socket it
// passes as criu_opts.ps.fd (CRIU's --ps-socket), on both sides. godwit
// does not take an inherited page-server connection yet, so the
// migration is refused by that name on its first round, and the program
// runs on untouched. (phaul's client runs "criu" from $PATH: it has no
// SetCriuPath, so godwit is put there under that name.)
func TestPhaulMigrationRefusesPsFd(t *testing.T) {
	needRoot(t)
	bin := t.TempDir()
	if err := os.Symlink(godwitBin, filepath.Join(bin, "criu")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	w := startC(t, false, "-m", "8")
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fds[0])
	defer syscall.Close(fds[1])
	wdir := t.TempDir()
	for _, d := range []string{"remote", "local"} {
		if err := os.Mkdir(filepath.Join(wdir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	srv, err := phaul.MakePhaulServer(phaul.Config{Pid: int32(w.pid), Memfd: fds[1], Wdir: filepath.Join(wdir, "remote")})
	if err != nil {
		t.Fatal(err)
	}
	srv.GetCriu().SetCriuPath(godwitBin)
	cln, err := phaul.MakePhaulClient(phaulLocal{t}, srv, phaul.Config{Pid: int32(w.pid), Memfd: fds[0], Wdir: filepath.Join(wdir, "local")})
	if err != nil {
		t.Fatal(err)
	}
	err = cln.Migrate()
	if err == nil || !strings.Contains(err.Error(), "criu_opts.ps.fd (--ps-socket)") {
		t.Fatalf("Migrate = %v, want the ps.fd refusal", err)
	}
	if st, tracer := procState(t, w.pid); tracer != 0 || st == "T" || st == "t" {
		t.Fatalf("after the refused migration pid %d is %s, traced by %d", w.pid, st, tracer)
	}
	w.waitTicks(2)
	w.finishOriginal(t, "after the refused migration")
	w.checkLog(0)
}
