package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	criu "github.com/checkpoint-restore/go-criu/v8"
	"github.com/checkpoint-restore/go-criu/v8/phaul"
	"github.com/checkpoint-restore/go-criu/v8/rpc"
)

// phaulLocal is the final step P.Haul leaves to its caller (go-criu's own
// phaul test does the same): dump the frozen program with its pages over
// the page-server socket into the server's last round, move the other
// images there, and restore from that "destination" directory.
type phaulLocal struct {
	t        *testing.T
	w        *workload
	srv      *phaul.Server
	dumpDir  string
	restored bool
}

func (l *phaulLocal) DumpCopyRestore(cr *criu.Criu, cfg phaul.Config, lastClientImages string) error {
	t := l.t
	d := openDir(t, l.dumpDir)
	err := cr.Dump(&rpc.CriuOpts{
		Pid: ptr(cfg.Pid), ImagesDirFd: ptr(int32(d.Fd())), LogLevel: ptr(int32(4)), LogFile: ptr("dump.log"),
		TrackMem: ptr(true), ParentImg: ptr(lastClientImages), Ps: &rpc.CriuPageServerInfo{Fd: ptr(int32(cfg.Memfd))},
	}, nil)
	if err != nil {
		t.Errorf("final dump: %v\n%s", err, readFile(filepath.Join(l.dumpDir, "dump.log")))
		return err
	}
	l.w.reapKilled(t)
	dst := l.srv.LastImagesDir()
	ents, err := os.ReadDir(l.dumpDir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		name := e.Name()
		if !strings.HasSuffix(name, ".img") {
			continue
		}
		if strings.HasPrefix(name, "pagemap-") || strings.HasPrefix(name, "pages-") {
			t.Errorf("the final dump wrote %s locally: its pages belong to the page server", name)
		}
		if err := os.Link(filepath.Join(l.dumpDir, name), filepath.Join(dst, name)); err != nil {
			return err
		}
	}
	rd := openDir(t, dst)
	rc := criu.MakeCriu()
	rc.SetCriuPath(godwitBin)
	if err := rc.Restore(&rpc.CriuOpts{ImagesDirFd: ptr(int32(rd.Fd())), LogLevel: ptr(int32(4)), LogFile: ptr("restore.log")}, nil); err != nil {
		t.Errorf("restore: %v\n%s", err, readFile(filepath.Join(dst, "restore.log")))
		return err
	}
	l.restored = true
	return nil
}

// go-criu's phaul migrates a running program through godwit: each
// pre-dump round and the final dump send their pages over one connected
// socket pair (criu_opts.ps.fd, CRIU's --ps-socket) to a page server that
// PAGE_SERVER_CHLD starts on the other end for that round, the final dump
// naming the last round as its parent; the program is restored from the
// server's images and runs on with every tick and its memory intact,
// while the source is gone. (phaul's client runs "criu" from $PATH: it has
// no SetCriuPath, so godwit is put there under that name.)
func TestPhaulMigration(t *testing.T) {
	needRoot(t)
	bin := t.TempDir()
	if err := os.Symlink(godwitBin, filepath.Join(bin, "criu")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	w := startC(t, false, "-m", "8")
	// As go-criu's phaul test: the pair is inheritable (godwit takes the
	// caller's descriptor either way).
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fds[0])
	defer syscall.Close(fds[1])
	wdir := t.TempDir()
	t.Cleanup(func() { killTrackHolders(filepath.Join(wdir, "local")) })
	for _, d := range []string{"remote", "local", "dump"} {
		if err := os.Mkdir(filepath.Join(wdir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	srv, err := phaul.MakePhaulServer(phaul.Config{Pid: int32(w.pid), Memfd: fds[1], Wdir: filepath.Join(wdir, "remote")})
	if err != nil {
		t.Fatal(err)
	}
	srv.GetCriu().SetCriuPath(godwitBin)
	local := &phaulLocal{t: t, w: w, srv: srv, dumpDir: filepath.Join(wdir, "dump")}
	cln, err := phaul.MakePhaulClient(local, srv, phaul.Config{Pid: int32(w.pid), Memfd: fds[0], Wdir: filepath.Join(wdir, "local")})
	if err != nil {
		t.Fatal(err)
	}
	if err := cln.Migrate(); err != nil {
		t.Fatalf("Migrate: %v\nremote/0/ps.log:\n%s\nlocal/0/pre-dump.log:\n%s", err,
			readFile(filepath.Join(wdir, "remote", "0", "ps.log")), readFile(filepath.Join(wdir, "local", "0", "pre-dump.log")))
	}
	if !local.restored {
		t.Fatal("Migrate returned without the final dump and restore")
	}
	// Rounds: remote/0 .. remote/N, the last one the final dump's; the
	// first carries the whole 8 MiB, the final one only what changed, the
	// rest coming from its parent chain.
	last := srv.LastImagesDir()
	first := filepath.Join(wdir, "remote", "0")
	if last == first {
		t.Fatalf("no pre-dump round before the final dump")
	}
	if n0, nl := pagesBytes(t, first), pagesBytes(t, last); n0 < 8<<20 || nl*4 > n0 {
		t.Errorf("pages: first round %d bytes, final %d: want the whole 8 MiB first and much less last", n0, nl)
	}
	if target, err := os.Readlink(filepath.Join(last, "parent")); err != nil || target == "" {
		t.Errorf("the final round has no parent link: %q, %v", target, err)
	}
	w.waitTicks(3)
	w.finishDetached(t)
	w.checkLog(0)
}

// killTrackHolders kills the memory trackers (godwit-track, see
// TestGoCriuPreDumpRounds) that pre-dump rounds under dir recorded, if a
// failed run left them.
func killTrackHolders(dir string) {
	states, _ := filepath.Glob(filepath.Join(dir, "*", "godwit-track.json"))
	for _, st := range states {
		b, err := os.ReadFile(st)
		if err != nil {
			continue
		}
		i := strings.Index(string(b), `"holder_pid":`)
		if i < 0 {
			continue
		}
		v := strings.TrimLeft(string(b[i+len(`"holder_pid":`):]), " ")
		end := strings.IndexAny(v, ",}\n ")
		if end <= 0 {
			continue
		}
		pid, _ := strconv.Atoi(v[:end])
		if c, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm"); pid > 0 && err == nil && strings.TrimSpace(string(c)) == "godwit-track" {
			killAndForget(pid)
		}
	}
}

// The command line's --ps-socket: `godwit page-server --ps-socket FD`
// serves one session on a socket its caller connected, and `godwit dump
// --page-server --ps-socket FD` sends its pages over the other end; the
// program restores from the server's directory. Refused combinations say
// why.
func TestCLIPsSocket(t *testing.T) {
	needRoot(t)
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	srvEnd, dumpEnd := os.NewFile(uintptr(fds[1]), "srv"), os.NewFile(uintptr(fds[0]), "dump")
	defer srvEnd.Close()
	defer dumpEnd.Close()
	srv, local := t.TempDir(), t.TempDir()
	ps := exec.Command(godwitBin, "page-server", "--ps-socket", "3", "-D", srv, "-v4", "-o", "ps.log")
	ps.ExtraFiles = []*os.File{srvEnd}
	if err := ps.Start(); err != nil {
		t.Fatal(err)
	}
	psDone := make(chan error, 1)
	go func() { psDone <- ps.Wait() }()
	t.Cleanup(func() {
		killAndForget(ps.Process.Pid)
		select {
		case <-psDone:
		case <-time.After(10 * time.Second):
		}
	})
	w := startC(t, false, "-m", "16")
	dump := exec.Command(godwitBin, "dump", "-t", strconv.Itoa(w.pid), "-D", local, "-v4", "-o", "dump.log", "--page-server", "--ps-socket", "3")
	dump.ExtraFiles = []*os.File{dumpEnd}
	if out, err := dump.CombinedOutput(); err != nil {
		t.Fatalf("dump --ps-socket: %v: %s\n%s", err, out, readFile(filepath.Join(local, "dump.log")))
	}
	w.reapKilled(t)
	select {
	case err := <-psDone:
		psDone <- err
		if err != nil {
			t.Fatalf("page-server --ps-socket: %v\n%s", err, readFile(filepath.Join(srv, "ps.log")))
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("page-server --ps-socket did not exit after its session\n%s", readFile(filepath.Join(srv, "ps.log")))
	}
	pagemap := "pagemap-" + strconv.Itoa(w.pid) + ".img"
	if _, err := os.Stat(filepath.Join(local, pagemap)); err == nil {
		t.Error("pages were written locally, not to the page server")
	}
	if n := pagesBytes(t, srv); n < 16<<20 {
		t.Fatalf("the page server holds %d bytes of pages, want the whole 16 MiB", n)
	}
	copyMissing(t, local, srv)
	r := restore(t, w, srv)
	w.waitTicks(3)
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("program restored from the page server's images: exit %d\n%s", code, w.tail())
	}
	w.checkLog(0)

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"dump", "-t", "1", "--ps-socket", "0"}, "--ps-socket needs --page-server"},
		{[]string{"dump", "-t", "1", "--page-server", "--ps-socket", "0", "--tls"}, "--tls and --transport quic do not apply"},
		{[]string{"page-server", "--ps-socket", "0", "--daemon"}, "not --daemon"},
		{[]string{"page-server", "--ps-socket", "0", "--lazy-pages"}, "--ps-socket with --lazy-pages is not supported"},
		{[]string{"lazy-pages", "--page-server", "--ps-socket", "0"}, "lazy-pages does not use a page server socket"},
		{[]string{"page-server", "--ps-socket", "0", "-D", t.TempDir()}, "ps-socket 0: not a socket"},
	} {
		code, out := godwit(t, c.args...)
		if first, _, _ := strings.Cut(out, "\n"); code == 0 || !strings.Contains(first, c.want) {
			t.Errorf("godwit %v: exit %d %q, want an error line with %q", c.args, code, out, c.want)
		}
	}
}
