package lazypages

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/dumper"
	"godwit/internal/testutil"
	"godwit/pageserver"
)

// dumpOrphan dumps testdata/orphan.c (it forks once GOFILE exists; the
// parent exits at once, the child checks its memory once GOFILE.2 exists).
func dumpOrphan(t *testing.T) (dir, log, goFile string) {
	needRoot(t)
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "orphan")
	if out, err := exec.Command("gcc", "-O2", "-o", bin, "testdata/orphan.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v %s", err, out)
	}
	dir = filepath.Join(tmp, "img")
	os.Mkdir(dir, 0o700)
	log, goFile = filepath.Join(tmp, "log"), filepath.Join(tmp, "go")
	p := testutil.Start(t, exec.Command(bin, log, goFile, "64"), log, "ready")
	if _, err := dumper.Dump(dumper.Options{Pid: p.Pid, ImagesDir: dir}, nil); err != nil {
		t.Fatalf("dump: %v", err)
	}
	p.Reaped(t)
	return dir, log, goFile
}

// orphanChild lets the restored parent fork and exit and returns the
// child's pid (killed at cleanup).
func orphanChild(t *testing.T, dir, log, goFile string) int {
	r, err := lazyRestore(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(goFile, nil, 0o600)
	if code, ok := exitOf(t, r, 20*time.Second); !ok || code != 0 {
		t.Fatalf("parent exited %d (%v)", code, ok)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		b, _ := os.ReadFile(log)
		for _, l := range strings.Split(string(b), "\n") {
			if c, err := strconv.Atoi(strings.TrimPrefix(l, "child ")); err == nil && strings.HasPrefix(l, "child ") {
				t.Cleanup(func() { unix.Kill(c, unix.SIGKILL) })
				return c
			}
		}
	}
	t.Fatal("no child pid")
	return 0
}

// checkOrphanKilled lets the child check its memory and asserts that it
// died first.
func checkOrphanKilled(t *testing.T, child int, log, goFile, why string) {
	t.Helper()
	os.WriteFile(goFile+".2", nil, 0o600)
	gone := false
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if unix.Kill(child, 0) != nil || zombie(child) {
			gone = true
			break
		}
	}
	b, _ := os.ReadFile(log)
	if !gone || strings.Contains(string(b), "bad") || strings.Contains(string(b), "child done") {
		t.Fatalf("the orphan child %d ran on (gone %v); log:\n%s\n%s", child, gone, b, why)
	}
}

// namesKilled tells whether msg's "killed [...]" lists pid.
func namesKilled(msg string, pid int) bool {
	_, rest, ok := strings.Cut(msg, "killed [")
	if !ok {
		return false
	}
	list, _, _ := strings.Cut(rest, "]")
	for _, f := range strings.Fields(list) {
		if f == strconv.Itoa(pid) {
			return true
		}
	}
	return false
}

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && s[i+2] == 'Z'
}

// TestLazyOrphanChildDaemonKilled: a forked child whose parent exited
// does not outlive its daemon (the guard kills it).
func TestLazyOrphanChildDaemonKilled(t *testing.T) {
	dir, log, goFile := dumpOrphan(t)
	dcmd := exec.Command("/proc/self/exe", "-test.run=^$")
	dcmd.Env = append(os.Environ(), daemonEnv+"="+dir)
	var stderr strings.Builder
	dcmd.Stderr = &stderr
	if err := dcmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { dcmd.Wait(); close(exited) }()
	t.Cleanup(func() { dcmd.Process.Kill(); <-exited })
	sock := filepath.Join(dir, SocketName)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("daemon not listening")
		}
	}
	child := orphanChild(t, dir, log, goFile)
	dcmd.Process.Kill()
	<-exited
	checkOrphanKilled(t, child, log, goFile, "daemon stderr:\n"+stderr.String())
	if !namesKilled(stderr.String(), child) {
		t.Fatalf("the guard did not name the child %d it killed: %s", child, stderr.String())
	}
}

// TestLazyOrphanChildSourceLost: when the page server goes away the
// daemon fails and kills a forked child whose parent exited.
func TestLazyOrphanChildSourceLost(t *testing.T) {
	dir, log, goFile := dumpOrphan(t)
	so, co, _ := certs(t, pageserver.TransportTCP)
	addr, _, stopPS := startPageServer(t, dir, so)
	// A slow push: the pages must not all be in before the source stops.
	res := startDaemon(t, Options{ImagesDir: dir, PageServer: addr, Transport: co, PushPages: 16, pushPause: 100 * time.Millisecond})
	child := orphanChild(t, dir, log, goFile)
	stopPS()
	var d daemonResult
	select {
	case d = <-res:
	case <-time.After(30 * time.Second):
		t.Fatal("daemon still running after its page server went away")
	}
	if d.err == nil || !strings.Contains(d.err.Error(), "page source lost") || !namesKilled(d.err.Error(), child) {
		t.Fatalf("daemon: %v (child %d)", d.err, child)
	}
	checkOrphanKilled(t, child, log, goFile, fmt.Sprintf("daemon: %v", d.err))
}
