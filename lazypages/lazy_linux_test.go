package lazypages

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/dumper"
	"godwit/internal/procfs"
	"godwit/internal/testutil"
	"godwit/pageserver"
	"godwit/restorer"
)

func TestMain(m *testing.M) {
	MaybeGuard()
	if os.Getenv(daemonEnv) != "" {
		os.Exit(daemonMain())
	}
	if os.Getenv(nsRestoreEnv) != "" {
		os.Exit(nsRestoreMain())
	}
	testutil.CloseInheritedFDs()
	code := m.Run()
	testutil.RemoveBuilds()
	if workloadDir != "" {
		os.RemoveAll(workloadDir)
	}
	os.Exit(code)
}

// daemonEnv runs the test binary as a lazy-pages daemon (for tests that
// kill it): GODWIT_LAZY_TEST_DAEMON=imagesdir[,pageserver-addr,certdir,transport].
const daemonEnv = "GODWIT_LAZY_TEST_DAEMON"

func daemonMain() int {
	f := strings.Split(os.Getenv(daemonEnv), ",")
	o := Options{ImagesDir: f[0], PushPages: 16, pushPause: time.Millisecond}
	if len(f) == 4 {
		o.PageServer = f[1]
		o.Transport = clientTLS(f[2], pageserver.Transport(f[3]))
	}
	_, err := Run(context.Background(), o)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// nsRestoreEnv runs the test binary as the restore side of a lazy
// migration, in a pid (and mount) namespace of its own so that the task can
// get its pid back while the dumped original still holds it:
// GODWIT_LAZY_TEST_NSRESTORE=imagesdir,pageserver-addr,certdir,transport[,push-pause].
// It runs a lazy-pages daemon and restore --lazy-pages, waits for the
// task, and exits with its status (100 + why on other failures).
const nsRestoreEnv = "GODWIT_LAZY_TEST_NSRESTORE"

func nsRestoreMain() int {
	f := strings.Split(os.Getenv(nsRestoreEnv), ",")
	if len(f) != 4 && len(f) != 5 {
		return 100
	}
	pause := 100 * time.Microsecond
	if len(f) == 5 { // an optional push pause, to stretch the transfer
		p, err := time.ParseDuration(f[4])
		if err != nil {
			return 100
		}
		pause = p
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		fmt.Fprintln(os.Stderr, "mount --make-rprivate /:", err)
		return 101
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		fmt.Fprintln(os.Stderr, "mount /proc:", err)
		return 101
	}
	ready := make(chan struct{})
	o := Options{ImagesDir: f[0], PageServer: f[1], PushPages: 16, pushPause: pause, Ready: func() { close(ready) }}
	if f[3] != "plain" {
		o.Transport = clientTLS(f[2], pageserver.Transport(f[3]))
	}
	res := make(chan error, 1)
	go func() {
		_, err := Run(context.Background(), o)
		res <- err
	}()
	select {
	case <-ready:
	case err := <-res:
		fmt.Fprintln(os.Stderr, "daemon:", err)
		return 102
	}
	r, err := restorer.Restore(restorer.Options{ImagesDir: f[0], LazyPages: true}, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "restore:", err)
		return 103
	}
	code, err := r.Wait()
	r.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, "wait:", err)
		return 104
	}
	if err := <-res; err != nil {
		fmt.Fprintln(os.Stderr, "daemon:", err)
		return 105
	}
	return code
}

var (
	workloadOnce sync.Once
	workloadDir  string
	workloadBin  string
	workloadErr  error
)

func lazyBin(t testing.TB) string {
	t.Helper()
	workloadOnce.Do(func() {
		if workloadDir, workloadErr = os.MkdirTemp("", "godwit-lazy"); workloadErr != nil {
			return
		}
		workloadBin = filepath.Join(workloadDir, "lazy")
		if out, err := exec.Command("gcc", "-O2", "-o", workloadBin, "testdata/lazy.c").CombinedOutput(); err != nil {
			workloadErr = fmt.Errorf("gcc: %v: %s", err, out)
		}
	})
	if workloadErr != nil {
		t.Fatal(workloadErr)
	}
	return workloadBin
}

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("restoring needs root")
	}
}

// dumpWorkload starts the lazy workload with mib MiB, dumps it into a
// fresh directory and returns the directory, the log and the go file.
func dumpWorkload(t *testing.T, mib int, fork bool) (dir, log, goFile string) {
	t.Helper()
	needRoot(t)
	tmp := t.TempDir()
	dir = filepath.Join(tmp, "img")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	log, goFile = filepath.Join(tmp, "log"), filepath.Join(tmp, "go")
	argv := []string{lazyBin(t), log, goFile, fmt.Sprint(mib)}
	if fork {
		argv = append(argv, "fork")
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = null, null, null
	p := testutil.Start(t, cmd, log, "ready")
	if _, err := dumper.Dump(dumper.Options{Pid: p.Pid, ImagesDir: dir}, nil); err != nil {
		t.Fatalf("dump: %v", err)
	}
	p.Reaped(t)
	return dir, log, goFile
}

// lazyRestore restores dir with --lazy-pages; the task is killed at test
// end unless waited for.
func lazyRestore(t *testing.T, dir string) (*restorer.Restorer, error) {
	t.Helper()
	r, err := restorer.Restore(restorer.Options{ImagesDir: dir, LazyPages: true}, nil)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() {
		unix.Kill(r.PID(), unix.SIGKILL)
		r.Close()
	})
	return r, nil
}

func waitExit(t *testing.T, r *restorer.Restorer) int {
	t.Helper()
	c := make(chan int, 1)
	go func() {
		code, err := r.Wait()
		if err != nil {
			t.Error(err)
		}
		c <- code
	}()
	select {
	case code := <-c:
		return code
	case <-time.After(60 * time.Second):
		unix.Kill(r.PID(), unix.SIGKILL)
		<-c
		t.Fatal("restored task did not exit")
	}
	return -1
}

type daemonResult struct {
	st  Stats
	err error
}

// startDaemon runs the daemon in this process and waits for its socket.
func startDaemon(t *testing.T, o Options) chan daemonResult {
	t.Helper()
	ready := make(chan struct{})
	o.Ready = func() { close(ready) }
	res := make(chan daemonResult, 1)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		st, err := Run(ctx, o)
		res <- daemonResult{st, err}
	}()
	t.Cleanup(cancel)
	select {
	case <-ready:
	case r := <-res:
		t.Fatalf("daemon: %v", r.err)
	case <-time.After(20 * time.Second):
		t.Fatal("daemon not listening")
	}
	return res
}

func checkLog(t *testing.T, log string, code int) {
	t.Helper()
	b, _ := os.ReadFile(log)
	if code != 0 || !strings.Contains(string(b), "done ok") {
		t.Fatalf("restored workload exit %d; log:\n%s", code, b)
	}
}

func TestLazyRestoreLocal(t *testing.T) {
	dir, log, goFile := dumpWorkload(t, 64, false)
	res := startDaemon(t, Options{ImagesDir: dir, PushPages: 16, pushPause: 200 * time.Microsecond})
	if err := os.WriteFile(goFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := lazyRestore(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	checkLog(t, log, waitExit(t, r))
	select {
	case d := <-res:
		if d.err != nil {
			t.Fatalf("daemon: %v", d.err)
		}
		// How the pages split between faults and the push depends on
		// timing; that faults were served and events followed does not.
		if d.st.Tasks != 1 || d.st.Faults == 0 || d.st.FaultPages == 0 || d.st.ZeroPages == 0 ||
			d.st.Remaps == 0 || d.st.Removes == 0 || d.st.Unmaps == 0 {
			t.Fatalf("daemon stats %+v", d.st)
		}
		t.Logf("daemon: %+v", d.st)
	case <-time.After(30 * time.Second):
		t.Fatal("daemon did not finish")
	}
}

func TestLazyRestoreFork(t *testing.T) {
	dir, log, goFile := dumpWorkload(t, 64, true)
	res := startDaemon(t, Options{ImagesDir: dir, PushPages: 16, pushPause: 200 * time.Microsecond})
	if err := os.WriteFile(goFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := lazyRestore(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	checkLog(t, log, waitExit(t, r))
	select {
	case d := <-res:
		if d.err != nil {
			t.Fatalf("daemon: %v", d.err)
		}
		if d.st.Forks == 0 || d.st.Remaps == 0 {
			t.Fatalf("the fork or the mremap came after every page was in: %+v", d.st)
		}
		t.Logf("daemon: %+v", d.st)
	case <-time.After(30 * time.Second):
		t.Fatal("daemon did not finish")
	}
}

func TestLazyRestoreRemote(t *testing.T) {
	for _, tr := range []pageserver.Transport{pageserver.TransportTCP, pageserver.TransportQUIC} {
		t.Run(string(tr), func(t *testing.T) {
			dir, log, goFile := dumpWorkload(t, 32, true)
			so, co, _ := certs(t, tr)
			addr, psDone, _ := startPageServer(t, dir, so)
			res := startDaemon(t, Options{ImagesDir: dir, PageServer: addr, Transport: co, PushPages: 16, pushPause: 200 * time.Microsecond})
			if err := os.WriteFile(goFile, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			r, err := lazyRestore(t, dir)
			if err != nil {
				t.Fatal(err)
			}
			checkLog(t, log, waitExit(t, r))
			select {
			case d := <-res:
				if d.err != nil {
					t.Fatalf("daemon: %v", d.err)
				}
				if d.st.FaultPages == 0 || d.st.Faults == 0 {
					t.Fatalf("daemon stats %+v", d.st)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("daemon did not finish")
			}
			// The daemon's CLOSE told the source it may go.
			select {
			case err := <-psDone:
				if err != nil {
					t.Fatalf("page server: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("page server still serving after every page was in")
			}
		})
	}
}

// noExitYet fails if the restored task exits within d.
func exitOf(t *testing.T, r *restorer.Restorer, limit time.Duration) (int, bool) {
	t.Helper()
	c := make(chan int, 1)
	go func() {
		code, _ := r.Wait()
		c <- code
	}()
	select {
	case code := <-c:
		return code, true
	case <-time.After(limit):
		return 0, false
	}
}

// TestLazyDaemonKilled: a lazy-pages daemon killed mid-transfer leaves no
// task running on zero pages: its guard kills the task.
func TestLazyDaemonKilled(t *testing.T) {
	dir, log, goFile := dumpWorkload(t, 64, false)
	cmd := exec.Command("/proc/self/exe", "-test.run=^$")
	cmd.Env = append(os.Environ(), daemonEnv+"="+dir)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	sock := filepath.Join(dir, SocketName)
	for deadline := time.Now().Add(20 * time.Second); ; {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon not listening; stderr:\n%s", stderr.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	r, err := lazyRestore(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-exited
	// Were the task not killed, it would now run on zero pages and say so.
	if err := os.WriteFile(goFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	code, ok := exitOf(t, r, 20*time.Second)
	b, _ := os.ReadFile(log)
	if !ok || code != 128+int(unix.SIGKILL) || strings.Contains(string(b), "bad") || strings.Contains(string(b), "done") {
		t.Fatalf("after the daemon died the task exited %d (%v); log:\n%s\ndaemon stderr:\n%s", code, ok, b, stderr.String())
	}
}

// TestLazySourceLost: a page server that goes away mid-transfer ends the
// daemon with an error naming what never arrived, and kills the task.
func TestLazySourceLost(t *testing.T) {
	dir, log, goFile := dumpWorkload(t, 64, false)
	so, co, _ := certs(t, pageserver.TransportTCP)
	addr, _, stopPS := startPageServer(t, dir, so)
	res := startDaemon(t, Options{ImagesDir: dir, PageServer: addr, Transport: co, PushPages: 16, pushPause: time.Millisecond})
	r, err := lazyRestore(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	stopPS()
	var d daemonResult
	select {
	case d = <-res:
	case <-time.After(30 * time.Second):
		t.Fatal("daemon still running after its page server went away")
	}
	if d.err == nil || !strings.Contains(d.err.Error(), "page source lost") || !strings.Contains(d.err.Error(), "never arrived") ||
		!strings.Contains(d.err.Error(), fmt.Sprintf("killed [%d]", r.PID())) {
		t.Fatalf("daemon: %v", d.err)
	}
	t.Logf("daemon: %v", d.err)
	if err := os.WriteFile(goFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	code, ok := exitOf(t, r, 20*time.Second)
	b, _ := os.ReadFile(log)
	if !ok || code != 128+int(unix.SIGKILL) || strings.Contains(string(b), "bad") || strings.Contains(string(b), "done") {
		t.Fatalf("after the source went away the task exited %d (%v); log:\n%s", code, ok, b)
	}
}

// TestLazyFromDump: dump --lazy-pages keeps the lazy pages out of the
// images, leaves the task frozen and serves them from its memory (plain
// TCP as CRIU's default, TLS, QUIC) until the daemon of a lazy restore has
// them all, then kills it. The restore side
// runs in a pid namespace of its own (the original keeps its pid until
// then, as it would on another host).
func TestLazyFromDump(t *testing.T) {
	for _, tr := range []pageserver.Transport{"plain", pageserver.TransportTCP, pageserver.TransportQUIC} {
		t.Run(string(tr), func(t *testing.T) {
			needRoot(t)
			tmp := t.TempDir()
			dir := filepath.Join(tmp, "img")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			log, goFile := filepath.Join(tmp, "log"), filepath.Join(tmp, "go")
			cmd := exec.Command(lazyBin(t), log, goFile, "32", "fork")
			p := testutil.Start(t, cmd, log, "ready")
			var so pageserver.TransportOptions
			var certDir string
			if tr != "plain" {
				so, _, certDir = certs(t, tr)
			}
			addrc := make(chan string, 1)
			dumped := make(chan error, 1)
			go func() {
				_, err := dumper.DumpLazyContext(context.Background(), dumper.Options{Pid: p.Pid, ImagesDir: dir}, nil,
					dumper.LazyServe{Addr: "127.0.0.1:0", Transport: so, Listening: func(a string) { addrc <- a }})
				dumped <- err
			}()
			var addr string
			select {
			case addr = <-addrc:
			case err := <-dumped:
				t.Fatalf("dump --lazy-pages: %v", err)
			}
			if st, err := procfs.ReadStat(p.Pid); err != nil || (st.State != 't' && st.State != 'T') {
				t.Fatalf("while serving, the dumped task is not frozen: %+v, %v", st, err)
			}
			if err := os.WriteFile(goFile, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			rs := exec.Command(os.Args[0])
			rs.Env = append(os.Environ(), nsRestoreEnv+"="+strings.Join([]string{dir, addr, certDir, string(tr)}, ","))
			rs.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWPID | unix.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
			var out bytes.Buffer
			rs.Stdout, rs.Stderr = &out, &out
			if err := rs.Start(); err != nil {
				t.Fatal(err)
			}
			rsDone := make(chan error, 1)
			go func() { rsDone <- rs.Wait() }()
			t.Cleanup(func() {
				rs.Process.Kill() // pid 1 of its namespace: everything in it goes too
				select {
				case <-rsDone:
				case <-time.After(10 * time.Second):
				}
			})
			select {
			case err := <-dumped:
				if err != nil {
					t.Fatalf("dump --lazy-pages: %v\n%s", err, out.String())
				}
			case <-time.After(60 * time.Second):
				t.Fatalf("dump --lazy-pages still serving\n%s", out.String())
			}
			p.Reaped(t)
			// The pid is free here now: a restore without --lazy-pages
			// is refused, never filled with zeros.
			r, err := restorer.Restore(restorer.Options{ImagesDir: dir}, nil)
			if err == nil || !strings.Contains(err.Error(), "left on the dumping host") {
				if err == nil {
					r.Close()
				}
				t.Fatalf("restore without --lazy-pages of a lazy dump: %v", err)
			}
			select {
			case err := <-rsDone:
				rsDone <- err
				if err != nil {
					t.Fatalf("restore side: %v\n%s", err, out.String())
				}
			case <-time.After(60 * time.Second):
				t.Fatalf("restored task did not exit\n%s", out.String())
			}
			checkLog(t, log, 0)
		})
	}
}

// TestLazyRestoreNoDaemon: restore --lazy-pages without a daemon fails
// with a clear error and leaves nothing behind; a second daemon on the
// same directory is refused.
func TestLazyRestoreNoDaemon(t *testing.T) {
	dir, _, _ := dumpWorkload(t, 4, false)
	_, err := lazyRestore(t, dir)
	if err == nil || !strings.Contains(err.Error(), "no lazy-pages daemon") {
		t.Fatalf("restore without a daemon: %v", err)
	}
	startDaemon(t, Options{ImagesDir: dir})
	if _, err := Run(context.Background(), Options{ImagesDir: dir}); err == nil || !strings.Contains(err.Error(), "another lazy-pages daemon") {
		t.Fatalf("second daemon: %v", err)
	}
}
