package lazypages

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/dumper"
	"godwit/internal/images"
	"godwit/internal/pagexfer"
	"godwit/internal/procfs"
	"godwit/internal/testutil"
	"godwit/pageserver"
	"godwit/restorer"
)

// startChainWorkload starts the lazy workload with mib MiB and runs rounds
// pre-dump rounds of it into tmp/pre1.. (each chained to the one before);
// it returns the process, the last round's name relative to a sibling, its
// log and go file.
func startChainWorkload(t *testing.T, tmp string, mib, rounds int) (p *testutil.Proc, prev, log, goFile string) {
	t.Helper()
	needRoot(t)
	log, goFile = filepath.Join(tmp, "log"), filepath.Join(tmp, "go")
	cmd := exec.Command(lazyBin(t), log, goFile, strconv.Itoa(mib))
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = null, null, null
	p = testutil.Start(t, cmd, log, "ready")
	t.Cleanup(func() { dumper.EndTracking(p.Pid) })
	for i := 1; i <= rounds; i++ {
		dir := filepath.Join(tmp, "pre"+strconv.Itoa(i))
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if _, err := dumper.PreDump(context.Background(), dumper.PreDumpOptions{Pid: p.Pid, ImagesDir: dir, PrevImagesDir: prev}); err != nil {
			t.Fatalf("pre-dump %d: %v", i, err)
		}
		prev = "../pre" + strconv.Itoa(i)
	}
	return p, prev, log, goFile
}

// TestLazyChainFromPageServer: a final dump on top of pre-dump rounds,
// served by a lazy page server whose images directory is that chain. The
// daemon's own directory holds the final dump's images without the parent
// images: every page, PARENT ones included, comes from the page server,
// which resolves them in its chain; the restored workload's checks pass.
func TestLazyChainFromPageServer(t *testing.T) {
	tmp := t.TempDir()
	p, prev, log, goFile := startChainWorkload(t, tmp, 32, 2)
	final := filepath.Join(tmp, "final")
	if err := os.Mkdir(final, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := dumper.Dump(dumper.Options{Pid: p.Pid, ImagesDir: final, PrevImagesDir: prev, TrackMem: true}, nil); err != nil {
		t.Fatalf("dump: %v", err)
	}
	p.Reaped(t)
	d, err := images.Open(final, false)
	if err != nil {
		t.Fatal(err)
	}
	pr, err := images.OpenPages(d, images.PagemapImg(p.Pid))
	d.Close()
	if err != nil {
		t.Fatal(err)
	}
	parent := pagexfer.NeedsParent(pr)
	pr.Close()
	if !parent {
		t.Fatal("the final dump has no PARENT entries")
	}
	// The daemon's directory: the final images alone, no parent link.
	top := filepath.Join(tmp, "top")
	if err := os.Mkdir(top, 0o700); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(final)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(final, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(top, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	so, co, _ := certs(t, pageserver.TransportTCP)
	addr, psDone, _ := startPageServer(t, final, so)
	work := t.TempDir()
	res := startDaemon(t, Options{ImagesDir: top, WorkDir: work, PageServer: addr, Transport: co, PushPages: 16, pushPause: 200 * time.Microsecond})
	if err := os.WriteFile(goFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := restorer.Restore(restorer.Options{ImagesDir: final, WorkDir: work, LazyPages: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.Kill(r.PID(), unix.SIGKILL)
		r.Close()
	})
	checkLog(t, log, waitExit(t, r))
	select {
	case d := <-res:
		if d.err != nil {
			t.Fatalf("daemon: %v", d.err)
		}
		if d.st.RemotePages == 0 || d.st.LocalPages != 0 {
			t.Fatalf("daemon read %d pages locally, %d from the page server: want all from the page server", d.st.LocalPages, d.st.RemotePages)
		}
		t.Logf("daemon: %d faults, %d pages on faults, %d pushed, %d from the page server", d.st.Faults, d.st.FaultPages, d.st.PushPages, d.st.RemotePages)
	case <-time.After(60 * time.Second):
		t.Fatal("daemon did not finish")
	}
	select {
	case err := <-psDone:
		if err != nil {
			t.Fatalf("page server: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("page server still serving after every page was in")
	}
}

// dirtyRegion rewrites, unchanged, every page of pid's largest private
// anonymous mapping (the workload's data, idle while it waits for its go
// file): the pages count as written for the memory tracking, and their
// content stays what the workload checks.
func dirtyRegion(t *testing.T, pid int) uint64 {
	t.Helper()
	ms, err := procfs.ReadMaps(pid)
	if err != nil {
		t.Fatal(err)
	}
	var lo, hi uint64
	for i := range ms {
		if m := &ms[i]; m.IsAnon() && !m.Shared && m.Write && m.End-m.Start > hi-lo {
			lo, hi = m.Start, m.End
		}
	}
	f, err := os.OpenFile(fmt.Sprintf("/proc/%d/mem", pid), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for a := lo; a < hi; a += uint64(len(buf)) {
		b := buf[:min(uint64(len(buf)), hi-a)]
		if _, err := f.ReadAt(b, int64(a)); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(b, int64(a)); err != nil {
			t.Fatal(err)
		}
	}
	return (hi - lo) / pageSize
}

// nsTask finds the process that has pid inner in the pid namespace whose
// init is nsInit (0: none yet).
func nsTask(inner, nsInit int) int {
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", nsInit))
	if err != nil {
		return 0
	}
	re := regexp.MustCompile(`(?m)^NSpid:\s+(\d+)\s+(\d+)$`)
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		if m := re.FindSubmatch(b); m == nil || string(m[2]) != strconv.Itoa(inner) {
			continue
		}
		if own, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", p)); own == ns {
			return p
		}
	}
	return 0
}

// TestLazyChainSourceLost: dump --lazy-pages on top of a pre-dump round
// leaves the pages written since the round in the frozen task; a lazy
// restore (in a pid namespace of its own, as on another host) reads the
// round's pages from the parent images and the rest from the dump. The
// dump is stopped while pages are still missing: the daemon kills the
// restored task and fails naming the range that never arrived.
func TestLazyChainSourceLost(t *testing.T) {
	tmp := t.TempDir()
	p, prev, log, _ := startChainWorkload(t, tmp, 64, 1)
	dirtied := dirtyRegion(t, p.Pid)
	final := filepath.Join(tmp, "final")
	if err := os.Mkdir(final, 0o700); err != nil {
		t.Fatal(err)
	}
	so, _, certDir := certs(t, pageserver.TransportTCP)
	addrc := make(chan string, 1)
	dumped := make(chan error, 1)
	type dumpRes struct {
		r   *dumper.Result
		err error
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan dumpRes, 1)
	go func() {
		r, err := dumper.DumpLazyContext(ctx, dumper.Options{Pid: p.Pid, ImagesDir: final, PrevImagesDir: prev, TrackMem: true}, nil,
			dumper.LazyServe{Addr: "127.0.0.1:0", Transport: so, Listening: func(a string) { addrc <- a }})
		done <- dumpRes{r, err}
		dumped <- err
	}()
	var addr string
	select {
	case addr = <-addrc:
	case err := <-dumped:
		t.Fatalf("dump --lazy-pages: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("dump --lazy-pages did not start serving")
	}
	rs := exec.Command(os.Args[0])
	rs.Env = append(os.Environ(), nsRestoreEnv+"="+strings.Join([]string{final, addr, certDir, string(pageserver.TransportTCP), "5ms"}, ","))
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
	// Restored: the task exists and the restorer let it go (untraced).
	deadline := time.Now().Add(60 * time.Second)
	for {
		if k := nsTask(p.Pid, rs.Process.Pid); k > 0 {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", k)); err == nil && regexp.MustCompile(`(?m)^TracerPid:\s+0$`).Match(b) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no restored task\n%s", out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel() // the source goes away mid-transfer
	lost := time.Now()
	var dr dumpRes
	select {
	case dr = <-done:
		t.Logf("dump ended %v after it was stopped", time.Since(lost))
	case <-time.After(30 * time.Second):
		t.Fatal("dump --lazy-pages did not stop")
	}
	if dr.err == nil {
		t.Fatal("dump --lazy-pages ended without error although stopped before every page was served")
	}
	// The rewritten region is lazy (with the few other pages written
	// since the round), what the round has is PARENT.
	if dr.r == nil || dr.r.Stats.GetPagesLazy() < dirtied || dr.r.Stats.GetPagesLazy() > dirtied+dirtied/8 || dr.r.Stats.GetPagesSkippedParent() == 0 {
		t.Errorf("dump: %v: want about the %d rewritten pages lazy and some in the parent: %v", dr.err, dirtied, dr.r.Stats)
	}
	p.Reaped(t) // the dump finished (killed) the original all the same
	var rerr error
	select {
	case rerr = <-rsDone:
		t.Logf("restore side ended %v after the source was stopped", time.Since(lost))
	case <-time.After(60 * time.Second):
		t.Fatalf("restore side still running after its source went away\n%s", out.String())
	}
	ee, ok := rerr.(*exec.ExitError)
	msg := out.String()
	if !ok || ee.ExitCode() != 105 || !strings.Contains(msg, "page source lost") || !strings.Contains(msg, "never arrived") ||
		!regexp.MustCompile(`first 0x[0-9a-f]+-0x[0-9a-f]+`).MatchString(msg) || !strings.Contains(msg, "killed [") {
		t.Fatalf("restore side: %v\n%s", rerr, msg)
	}
	if b, _ := os.ReadFile(log); bytes.Contains(b, []byte("done")) || bytes.Contains(b, []byte("bad")) {
		t.Fatalf("the restored task ran on:\n%s", b)
	}
	t.Logf("restore side: %s", strings.TrimSpace(msg))
}

// TestLazySourceStalls: a page source that stops answering (a host or a
// link gone without a reset, where TCP would wait for minutes) ends the
// daemon once a GET goes unanswered for getTimeout: the task is killed and
// the error names what never arrived, nothing waits on a fault for ever.
func TestLazySourceStalls(t *testing.T) {
	dir, log, goFile := dumpWorkload(t, 8, false)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go func() { _, _ = io.Copy(io.Discard, c) }() // reads, never answers
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	old := getTimeout
	getTimeout = 500 * time.Millisecond
	t.Cleanup(func() { getTimeout = old })
	res := startDaemon(t, Options{ImagesDir: dir, PageServer: ln.Addr().String()})
	// The background push asks from the handoff on: the task may be
	// killed before the restore lets it go (the restore then fails), or
	// after, on its first fault.
	r, rerr := lazyRestore(t, dir)
	if rerr == nil {
		if err := os.WriteFile(goFile, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var d daemonResult
	select {
	case d = <-res:
	case <-time.After(30 * time.Second):
		t.Fatal("daemon still waiting on a source that does not answer")
	}
	if d.err == nil || !strings.Contains(d.err.Error(), "did not answer") || !strings.Contains(d.err.Error(), "never arrived") ||
		!strings.Contains(d.err.Error(), "killed [") {
		t.Fatalf("daemon: %v (restore: %v)", d.err, rerr)
	}
	if rerr == nil {
		code, ok := exitOf(t, r, 20*time.Second)
		if b, _ := os.ReadFile(log); !ok || code != 128+int(unix.SIGKILL) || bytes.Contains(b, []byte("done")) {
			t.Fatalf("the task exited %d (%v); log:\n%s", code, ok, b)
		}
	}
	t.Logf("daemon: %v (restore: %v)", d.err, rerr)
}
