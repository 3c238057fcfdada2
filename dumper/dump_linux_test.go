package dumper

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fs"
	"golang.org/x/sys/unix"

	"godwit/internal/actions"
	"godwit/internal/images"
	"godwit/internal/procfs"
)

func TestDumpCounterLeaveRunning(t *testing.T) {
	needRoot(t)
	for _, c := range []struct {
		static  bool
		threads string
		block   string
	}{
		{false, "0", "sleep"},
		{true, "0", "futex"},
		{false, "16", "spin"},
		{true, "16", "sleep"},
		{false, "0", "futex"},
	} {
		name := fmt.Sprintf("static=%v/t=%s/b=%s", c.static, c.threads, c.block)
		t.Run(name, func(t *testing.T) {
			p := startCounter(t, c.static, "-m", "8", "-t", c.threads, "-b", c.block)
			dir := keepDir(t)
			o := dumpOpts(p.Pid, dir)
			o.LeaveRunning = true
			res, err := Dump(o, nil)
			if err != nil {
				t.Fatal(err)
			}
			assertRunningUntraced(t, p.Pid)
			nthreads := 1
			if c.threads == "16" {
				nthreads = 17
			}
			if len(res.Threads) != nthreads {
				t.Errorf("threads %v, want %d", res.Threads, nthreads)
			}
			// 8 MiB of pattern at least.
			if res.Mem.Written < 2048 {
				t.Errorf("pages written %d, want >= 2048", res.Mem.Written)
			}
			checkImages(t, dir, p.Pid, res)
			// The workload verifies itself on SIGUSR1.
			if err := syscall.Kill(p.Pid, syscall.SIGUSR1); err != nil {
				t.Fatal(err)
			}
			if st := p.Wait(t); st != 0 {
				b, _ := os.ReadFile(p.Log)
				t.Fatalf("workload exit %d after dump; log tail: %s", st, tail(b))
			}
		})
	}
}

func tail(b []byte) string {
	s := string(b)
	if len(s) > 400 {
		s = s[len(s)-400:]
	}
	return s
}

// checkImages runs Debian's crit over the images.
func checkImages(t *testing.T, dir string, pid int, res *Result) {
	t.Helper()
	for _, n := range []string{images.InventoryImg, images.PstreeImg, images.CoreImg(pid), images.MmImg(pid),
		images.PagemapImg(pid), images.FilesImg, images.FdinfoImg(1), images.FsImg(pid), images.StatsDump} {
		out := crit(t, "show", dir+"/"+n)
		if !strings.Contains(out, `"magic"`) {
			t.Errorf("crit show %s: %s", n, out)
		}
	}
	for _, tid := range res.Threads {
		crit(t, "show", fmt.Sprintf("%s/core-%d.img", dir, tid))
	}
	ps := crit(t, "x", dir, "ps")
	if !strings.Contains(ps, fmt.Sprint(pid)) || !strings.Contains(ps, "counter") {
		t.Errorf("crit x ps: %s", ps)
	}
	mems := crit(t, "x", dir, "mems")
	if !strings.Contains(mems, "[vdso]") && !strings.Contains(mems, "vdso") {
		t.Errorf("crit x mems lacks the vdso: %s", mems)
	}
	fds := crit(t, "x", dir, "fds")
	if !strings.Contains(fds, "counter.Log") {
		t.Errorf("crit x fds lacks the log file: %s", fds)
	}
}

// keepDir is a fresh images directory; with DUMPER_KEEP=DIR set, it is a
// subdirectory of DIR left behind for inspection.
func keepDir(t *testing.T) string {
	if k := os.Getenv("DUMPER_KEEP"); k != "" {
		d := filepath.Join(k, strings.NewReplacer("/", "_", "=", "").Replace(t.Name()))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	return t.TempDir()
}

func TestDumpLeaveStopped(t *testing.T) {
	needRoot(t)
	p := startCounter(t, false, "-m", "4", "-t", "2")
	o := dumpOpts(p.Pid, t.TempDir())
	o.LeaveStopped = true
	if _, err := Dump(o, nil); err != nil {
		t.Fatal(err)
	}
	var state byte
	var tracer int
	for i := 0; i < 100; i++ {
		if state, tracer = status(t, p.Pid); state == 'T' && tracer == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if state != 'T' || tracer != 0 {
		t.Fatalf("after dump -s: state %c tracer %d, want T and untraced", state, tracer)
	}
	// It continues unharmed once woken.
	if err := syscall.Kill(p.Pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	assertRunningUntraced(t, p.Pid)
	if err := syscall.Kill(p.Pid, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	if st := p.Wait(t); st != 0 {
		t.Fatalf("exit %d", st)
	}
}

func TestDumpKillsByDefault(t *testing.T) {
	needRoot(t)
	p := startCounter(t, true, "-m", "4")
	dir := t.TempDir()
	if _, err := Dump(dumpOpts(p.Pid, dir), nil); err != nil {
		t.Fatal(err)
	}
	// The dumper reaps the leader if it is our child; either way the
	// process must be gone.
	for i := 0; i < 300; i++ {
		st, err := procfs.ReadStatus(p.Pid)
		if err != nil || st.State == 'Z' || st.State == 'X' {
			if _, err := os.Stat(filepath.Join(dir, images.InventoryImg)); err != nil {
				t.Fatal("no inventory after a successful dump")
			}
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("pid %d still alive after dump", p.Pid)
}

func TestDumpRefuses(t *testing.T) {
	needRoot(t)
	// A PID that does not exist: pid_max is far below this.
	_, err := Dump(dumpOpts(1<<22+1, t.TempDir()), nil)
	if err == nil || err.Error() != fmt.Sprintf("no process with pid %d", 1<<22+1) {
		t.Errorf("missing pid: %v", err)
	}
	if _, err := Dump(dumpOpts(1, t.TempDir()), nil); err == nil || !strings.Contains(err.Error(), "pid 1") {
		t.Errorf("pid 1: %v", err)
	}
	if _, err := Dump(dumpOpts(os.Getpid(), t.TempDir()), nil); err == nil || !strings.Contains(err.Error(), "godwit itself") {
		t.Errorf("self: %v", err)
	}
	if _, err := Dump(dumpOpts(os.Getppid(), t.TempDir()), nil); err == nil || !strings.Contains(err.Error(), "ancestor") {
		t.Errorf("parent: %v", err)
	}
	if st, err := procfs.ReadStatus(2); err == nil && st.Kthread {
		if _, err := Dump(dumpOpts(2, t.TempDir()), nil); err == nil || !strings.Contains(err.Error(), "kernel thread") {
			t.Errorf("kthreadd: %v", err)
		}
	}
	// A zombie: our child that exited and is not reaped yet.
	z := start(t, "", "", "/bin/true")
	for i := 0; ; i++ {
		if st, _ := status(t, z.Pid); st == 'Z' {
			break
		}
		if i == 1000 {
			t.Fatal("no zombie")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := Dump(dumpOpts(z.Pid, t.TempDir()), nil); err == nil || !strings.Contains(err.Error(), "zombie") {
		t.Errorf("zombie: %v", err)
	}
}

// unsupportedFD: a task holding a userfaultfd (or a shut-down raw
// socket) fails the dump with an error naming the fd, and keeps running
// untraced with its state intact.
func TestDumpUnsupportedFD(t *testing.T) {
	needRoot(t)
	for _, c := range []struct{ kind, script string }{
		{"userfaultfd", `exec python3 -c 'import ctypes,os,time
u=ctypes.CDLL(None,use_errno=True).syscall(323,0); assert u>=0; os.dup2(u,9); print("ready",flush=True); time.sleep(60)'`},
		{"raw socket", `exec python3 -c 'import socket,os,time
s=socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
try: s.shutdown(socket.SHUT_RD)
except OSError: pass
os.dup2(s.fileno(),9); print("ready",flush=True); time.sleep(60)'`},
	} {
		t.Run(c.kind, func(t *testing.T) {
			log := filepath.Join(t.TempDir(), "log")
			p := start(t, "", "", "/bin/sh", "-c", c.script+" >"+log)
			waitFile(t, log, "ready")
			dir := t.TempDir()
			_, err := Dump(dumpOpts(p.Pid, dir), nil)
			if err == nil || !strings.Contains(err.Error(), "not supported yet") || !strings.Contains(err.Error(), c.kind) {
				t.Fatalf("want an unsupported %s fd error, got %v", c.kind, err)
			}
			if !regexp.MustCompile(`fd [0-9]+: `).MatchString(err.Error()) {
				t.Errorf("error does not name the fd: %v", err)
			}
			assertRunningUntraced(t, p.Pid)
			if _, err := os.Stat(filepath.Join(dir, images.InventoryImg)); err == nil {
				t.Error("inventory.img written by a failed dump")
			}
		})
	}
}

func waitFile(t *testing.T, path, s string) {
	t.Helper()
	for i := 0; i < 2000; i++ {
		if b, _ := os.ReadFile(path); strings.Contains(string(b), s) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s never contained %q", path, s)
}

// TestDumpTree dumps a shell with a child and a zombie, leaving them
// running: every task is in pstree.img, the zombie as dead with its
// status, and both live tasks run on untraced.
func TestDumpTree(t *testing.T) {
	needRoot(t)
	log := filepath.Join(t.TempDir(), "log")
	prog := "import os, sys, time\n" +
		"if os.fork() == 0: os._exit(5)\n" +
		"if os.fork() == 0: time.sleep(60); os._exit(0)\n" +
		"time.sleep(0.2); open(sys.argv[1], 'w').write('ready'); time.sleep(60)\n"
	p := start(t, "", "", "/usr/bin/python3", "-c", prog, log)
	waitFile(t, log, "ready")
	kids, err := Children(p.Pid)
	if err != nil || len(kids) != 2 {
		t.Fatalf("children of the shell: %v %v", kids, err)
	}
	for _, k := range kids {
		t.Cleanup(func() { _ = syscall.Kill(k, syscall.SIGKILL) })
	}
	dir := t.TempDir()
	o := dumpOpts(p.Pid, dir)
	o.LeaveRunning = true
	res, err := Dump(o, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Pids) != 3 || res.Pids[0] != p.Pid {
		t.Fatalf("dumped %v, want %d and its children %v", res.Pids, p.Pid, kids)
	}
	ps := crit(t, "x", dir, "ps")
	for _, pid := range append([]int{p.Pid}, kids...) {
		if !strings.Contains(ps, fmt.Sprint(pid)) {
			t.Errorf("crit x ps lacks %d:\n%s", pid, ps)
		}
	}
	dead := 0
	for _, k := range kids {
		st, _ := status(t, k)
		core := crit(t, "show", filepath.Join(dir, fmt.Sprintf("core-%d.img", k)))
		if st == 'Z' {
			dead++
			if !strings.Contains(core, `"task_state": 2`) || !strings.Contains(core, `"exit_code": 1280`) {
				t.Errorf("zombie %d: core is not dead with status 5<<8:\n%.400s", k, core)
			}
			continue
		}
		assertRunningUntraced(t, k)
	}
	if dead != 1 {
		t.Errorf("%d zombies among %v, want 1", dead, kids)
	}
	assertRunningUntraced(t, p.Pid)
}

// TestDumpTreeFailureResumesAll fails on a shut-down raw socket held by a
// child (which godwit refuses): the error names the child and its fd,
// and every task runs on untraced.
func TestDumpTreeFailureResumesAll(t *testing.T) {
	needRoot(t)
	log := filepath.Join(t.TempDir(), "log")
	p := start(t, "", "", "/bin/sh", "-c", `python3 -c 'import socket,os,time
s=socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
try: s.shutdown(socket.SHUT_RD)
except OSError: pass
os.dup2(s.fileno(),7); open("`+log+`","w").write("ready"); time.sleep(60)' & exec sleep 60`)
	waitFile(t, log, "ready")
	kids, err := Children(p.Pid)
	if err != nil || len(kids) != 1 {
		t.Fatalf("children of the shell: %v %v", kids, err)
	}
	for _, k := range kids {
		t.Cleanup(func() { _ = syscall.Kill(k, syscall.SIGKILL) })
	}
	_, err = Dump(dumpOpts(p.Pid, t.TempDir()), nil)
	if err == nil || !regexp.MustCompile(fmt.Sprintf(`task %d: fd [37]: socket socket:\[[0-9]+\]: raw socket \(protocol 255\): shut down: not supported yet`, kids[0])).MatchString(err.Error()) {
		t.Fatalf("got %v, want the socket of the child named", err)
	}
	for _, pid := range append([]int{p.Pid}, kids...) {
		assertRunningUntraced(t, pid)
	}
}

// TestDumpPython dumps a Python 3 interpreter running threads, leaves it
// running, and lets it check itself.
func TestDumpPython(t *testing.T) {
	needRoot(t)
	dir0 := t.TempDir()
	log := filepath.Join(dir0, "log")
	script := `
import threading, time, signal, os, sys
counts = [0]*4
lock = threading.Lock()
stop = threading.Event()
def work(i):
    while not stop.is_set():
        with lock:
            counts[i] += 1
        time.sleep(0.001)
ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
for t in ts: t.start()
data = bytearray(os.urandom(1<<20))
digest = hash(bytes(data))
def done(*a):
    stop.set()
    for t in ts: t.join()
    ok = hash(bytes(data)) == digest and all(c > 0 for c in counts)
    print("done", ok, counts, flush=True)
    os._exit(0 if ok else 3)
signal.signal(signal.SIGUSR1, done)
print("ready", flush=True)
while True:
    time.sleep(0.01)
`
	p := start(t, "", "", "/bin/sh", "-c", "exec python3 -c '"+strings.ReplaceAll(script, "'", `'"'"'`)+"' >"+log)
	waitFile(t, log, "ready")
	dir := keepDir(t)
	o := dumpOpts(p.Pid, dir)
	o.LeaveRunning = true
	res, err := Dump(o, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Threads) != 5 {
		t.Errorf("threads %v, want 5", res.Threads)
	}
	assertRunningUntraced(t, p.Pid)
	ps := crit(t, "x", dir, "ps")
	if !strings.Contains(ps, "python3") {
		t.Errorf("crit x ps: %s", ps)
	}
	crit(t, "x", dir, "mems")
	crit(t, "x", dir, "fds")
	time.Sleep(50 * time.Millisecond)
	if err := syscall.Kill(p.Pid, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	if st := p.Wait(t); st != 0 {
		b, _ := os.ReadFile(log)
		t.Fatalf("python exit %d: %s", st, b)
	}
}

// TestDumpSeccomp: a filtered task is dumped (its filter in seccomp.img,
// which crit reads) and left running, untraced, as it was.
func TestDumpSeccomp(t *testing.T) {
	needRoot(t)
	bin := filepath.Join(t.TempDir(), "seccomp")
	if out, err := exec.Command("gcc", "-o", bin, "testdata/seccomp.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	log := filepath.Join(t.TempDir(), "log")
	p := start(t, "", "", bin, log)
	waitFile(t, log, "ready")
	dir := t.TempDir()
	o := dumpOpts(p.Pid, dir)
	o.LeaveRunning = true
	if _, err := Dump(o, nil); err != nil {
		t.Fatalf("dump: %v", err)
	}
	assertRunningUntraced(t, p.Pid)
	if out := crit(t, "show", filepath.Join(dir, "seccomp.img")); !strings.Contains(out, "seccomp_filters") {
		t.Errorf("crit show seccomp.img: %s", out)
	}
	if out := crit(t, "show", filepath.Join(dir, fmt.Sprintf("core-%d.img", p.Pid))); !strings.Contains(out, `"seccomp_mode": "filter"`) {
		t.Errorf("core has no filter mode: %s", out)
	}
}

// TestDumpTaskState checks task-wide state in core: pending signals (both
// queues, not consumed by the dump), itimers, rlimits, umask, sigmask,
// a signal handler, credentials.
func TestDumpTaskState(t *testing.T) {
	needRoot(t)
	log := filepath.Join(t.TempDir(), "log")
	script := `
import signal, os, time, resource
os.umask(0o027)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2, signal.SIGRTMIN])
signal.signal(signal.SIGHUP, lambda *a: None)
signal.setitimer(signal.ITIMER_REAL, 1000, 500)
signal.signal(signal.SIGALRM, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_NOFILE, (777, 888))
os.dup2(1, 5)
os.dup2(os.open("/proc/self/fd/1", os.O_WRONLY | os.O_APPEND), 6)
print("ready", flush=True)
while True:
    time.sleep(1)
`
	p := start(t, "", "", "/bin/sh", "-c", "exec python3 -c '"+script+"' >"+log)
	waitFile(t, log, "ready")
	if err := syscall.Kill(p.Pid, syscall.SIGUSR2); err != nil { // shared queue
		t.Fatal(err)
	}
	if err := syscall.Tgkill(p.Pid, p.Pid, 34); err != nil { // SIGRTMIN, the thread's queue
		t.Fatal(err)
	}
	dir := t.TempDir()
	o := dumpOpts(p.Pid, dir)
	o.LeaveRunning = true
	if _, err := Dump(o, nil); err != nil {
		t.Fatal(err)
	}
	assertRunningUntraced(t, p.Pid)
	d, err := images.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	core, err := images.ReadOne[*criu_core.CoreEntry](d, images.CoreImg(p.Pid))
	if err != nil {
		t.Fatal(err)
	}
	tc, th := core.GetTc(), core.GetThreadCore()
	if q := tc.GetSignalsS().GetSignals(); len(q) != 1 || q[0].GetSiginfo()[0] != 12 {
		t.Errorf("shared pending signals %v, want SIGUSR2", q)
	}
	if q := th.GetSignalsP().GetSignals(); len(q) != 1 || q[0].GetSiginfo()[0] != 34 {
		t.Errorf("thread pending signals %v, want signal 34", q)
	}
	want := uint64(1<<(12-1) | 1<<(34-1))
	if th.GetBlkSigset()&want != want || tc.GetBlkSigset()&want != want {
		t.Errorf("sigmask %#x / %#x lacks %#x", th.GetBlkSigset(), tc.GetBlkSigset(), want)
	}
	if r := tc.GetTimers().GetReal(); r.GetIsec() != 500 || r.GetVsec() < 990 || r.GetVsec() > 1000 {
		t.Errorf("ITIMER_REAL %v, want interval 500 s, value ~1000 s", r)
	}
	if r := tc.GetRlimits().GetRlimits(); len(r) != 16 || r[unix.RLIMIT_NOFILE].GetCur() != 777 || r[unix.RLIMIT_NOFILE].GetMax() != 888 {
		t.Errorf("rlimits %v", r)
	}
	// 62 entries as CRIU writes them: SIGKILL (9) and SIGSTOP (19) left out.
	saIndex := func(sig syscall.Signal) int {
		i := int(sig) - 1
		if sig > syscall.SIGKILL {
			i--
		}
		if sig > syscall.SIGSTOP {
			i--
		}
		return i
	}
	hup, alrm := saIndex(syscall.SIGHUP), saIndex(syscall.SIGALRM)
	if sa := tc.GetSigactions(); len(sa) != 62 || sa[hup].GetSigaction() <= 1 || sa[alrm].GetSigaction() != 1 {
		t.Errorf("sigactions (%d): SIGHUP %v, SIGALRM %v", len(sa), sa[hup], sa[alrm])
	} else if sa[hup].GetRestorer() == 0 {
		t.Error("SIGHUP handler without sa_restorer")
	}
	fse, err := images.ReadOne[*fs.FsEntry](d, images.FsImg(p.Pid))
	if err != nil || fse.GetUmask() != 0o027 {
		t.Errorf("fs: %v %v", fse, err)
	}
	if c := th.GetCreds(); c.GetUid() != 0 || len(c.GetCapEff()) != 2 || c.GetCapEff()[0] == 0 {
		t.Errorf("creds %v", c)
	}
	// fd 5 is a dup of fd 1 (one file id), fd 6 a second open (its own).
	fdi, err := images.ReadAll[*fdinfo.FdinfoEntry](d, images.FdinfoImg(1))
	if err != nil {
		t.Fatal(err)
	}
	id := map[uint32]uint32{}
	for _, e := range fdi {
		id[e.GetFd()] = e.GetId()
	}
	if id[1] == 0 || id[5] != id[1] || id[6] == id[1] || id[6] == 0 {
		t.Errorf("file ids of fds 1, 5 (dup), 6 (reopen): %d %d %d", id[1], id[5], id[6])
	}
	// The dump consumed nothing: both signals are still pending.
	st, err := procfs.ReadStatus(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if st.ShdPnd&(1<<11) == 0 || st.SigPnd&(1<<33) == 0 {
		t.Errorf("pending after dump: shared %#x thread %#x", st.ShdPnd, st.SigPnd)
	}
}

func TestDumpFreezeCgroup(t *testing.T) {
	needRoot(t)
	cg := filepath.Join("/sys/fs/cgroup/freezer", fmt.Sprintf("godwit-dumper-test-%d", os.Getpid()))
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	p := startCounter(t, false, "-m", "4", "-t", "4")
	// Registered after start's cleanup, so it runs first: move the
	// process out (if still alive) and remove the cgroup.
	t.Cleanup(func() {
		_ = os.WriteFile("/sys/fs/cgroup/freezer/cgroup.procs", []byte(fmt.Sprint(p.Pid)), 0)
		_ = os.WriteFile(filepath.Join(cg, "freezer.state"), []byte("THAWED"), 0)
		_ = syscall.Kill(p.Pid, syscall.SIGKILL)
		for i := 0; i < 200 && os.Remove(cg) != nil; i++ {
			time.Sleep(10 * time.Millisecond)
		}
	})
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(fmt.Sprint(p.Pid)), 0); err != nil {
		t.Fatal(err)
	}
	o := dumpOpts(p.Pid, t.TempDir())
	o.LeaveRunning = true
	o.FreezeCgroup = cg
	// A cgroup someone else froze is refused: the dump would thaw it.
	if err := os.WriteFile(filepath.Join(cg, "freezer.state"), []byte("FROZEN"), 0); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 500; i++ {
		if b, _ := os.ReadFile(filepath.Join(cg, "freezer.state")); strings.TrimSpace(string(b)) == "FROZEN" {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	if _, err := Dump(o, nil); err == nil || !strings.Contains(err.Error(), "already frozen") {
		t.Fatalf("dump through a frozen cgroup: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(cg, "freezer.state")); strings.TrimSpace(string(b)) != "FROZEN" {
		t.Errorf("a refused dump changed the cgroup to %s", b)
	}
	if err := os.WriteFile(filepath.Join(cg, "freezer.state"), []byte("THAWED"), 0); err != nil {
		t.Fatal(err)
	}
	res, err := Dump(o, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Threads) != 5 {
		t.Errorf("threads %v", res.Threads)
	}
	assertRunningUntraced(t, p.Pid)
	if b, _ := os.ReadFile(filepath.Join(cg, "freezer.state")); strings.TrimSpace(string(b)) != "THAWED" {
		t.Errorf("cgroup left %s", b)
	}
	if err := syscall.Kill(p.Pid, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	if st := p.Wait(t); st != 0 {
		t.Fatalf("exit %d", st)
	}
	// A process outside the cgroup is refused, untouched.
	q := startCounter(t, false)
	o = dumpOpts(q.Pid, t.TempDir())
	o.FreezeCgroup = cg
	if _, err := Dump(o, nil); err == nil || !strings.Contains(err.Error(), "not in it") {
		t.Errorf("process outside the cgroup: %v", err)
	}
	assertRunningUntraced(t, q.Pid)
}

func TestDumpStats(t *testing.T) {
	needRoot(t)
	p := startCounter(t, false, "-m", "2")
	dir := t.TempDir()
	res, err := Dump(dumpOpts(p.Pid, dir), nil)
	if err != nil {
		t.Fatal(err)
	}
	d, err := images.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	st, err := images.ReadStats(d, images.StatsDump)
	if err != nil {
		t.Fatal(err)
	}
	ds := st.GetDump()
	if ds.GetPagesWritten() != res.Mem.Written || ds.GetPagesWritten() < 512 || ds.GetPagesScanned() < ds.GetPagesWritten() || ds.GetFrozenTime() == 0 {
		t.Errorf("stats-dump %v vs %+v", ds, res.Mem)
	}
	if ds.GetPagesScanned() != res.Mem.Written+res.Mem.Zero+res.Mem.Untouched {
		t.Errorf("scanned %d != written %d + zero %d + untouched %d", ds.GetPagesScanned(), res.Mem.Written, res.Mem.Zero, res.Mem.Untouched)
	}
	out := res.FormatStats()
	for _, want := range []string{"Frozen time:", "Memory pages written:", "skipped (zero page)"} {
		if !strings.Contains(out, want) {
			t.Errorf("FormatStats lacks %q:\n%s", want, out)
		}
	}
}

func TestDumpActionScripts(t *testing.T) {
	needRoot(t)
	p := startCounter(t, false, "-m", "1")
	out := filepath.Join(t.TempDir(), "actions")
	dir := t.TempDir()
	s := &actions.Scripts{Commands: []string{`echo "$CRTOOLS_SCRIPT_ACTION $CRTOOLS_INIT_PID" >>` + out}, ImagesDir: dir}
	o := dumpOpts(p.Pid, dir)
	o.LeaveRunning = true
	if _, err := Dump(o, s); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	if want := fmt.Sprintf("pre-dump %d\npost-dump %d\n", p.Pid, p.Pid); string(b) != want {
		t.Errorf("scripts ran %q, want %q", b, want)
	}
	// A failing post-dump script fails the dump and resumes the task.
	s.Commands = []string{`[ "$CRTOOLS_SCRIPT_ACTION" != post-dump ]`}
	if _, err := Dump(dumpOpts(p.Pid, t.TempDir()), s); err == nil || !strings.Contains(err.Error(), "post-dump") {
		t.Errorf("failing post-dump script: %v", err)
	}
	assertRunningUntraced(t, p.Pid)
	if err := syscall.Kill(p.Pid, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	if st := p.Wait(t); st != 0 {
		t.Fatalf("exit %d", st)
	}
}

// TestDumpOtherUser dumps a task of another user (prlimit64 from outside
// then fails with EPERM here, without CAP_SYS_RESOURCE, and the dumper
// asks the task itself) that also has a POSIX timer armed.
func TestDumpOtherUser(t *testing.T) {
	needRoot(t)
	log := filepath.Join(t.TempDir(), "log")
	os.Chmod(filepath.Dir(log), 0o777)
	script := `
import ctypes, os, resource, signal, time
libc = ctypes.CDLL(None, use_errno=True)
tid = ctypes.c_void_p()
if libc.timer_create(1, None, ctypes.byref(tid)) != 0: raise OSError(ctypes.get_errno(), "timer_create")
spec = (ctypes.c_long * 4)(7, 0, 3600, 0)
if libc.timer_settime(tid, 0, spec, None) != 0: raise OSError(ctypes.get_errno(), "timer_settime")
resource.setrlimit(resource.RLIMIT_NOFILE, (555, 666))
os.setgroups([65534])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
print("ready", flush=True)
while True:
    time.sleep(1)
`
	p := start(t, "", "", "/bin/sh", "-c", "exec python3 -c '"+script+"' >"+log)
	waitFile(t, log, "ready")
	dir := t.TempDir()
	o := dumpOpts(p.Pid, dir)
	o.LeaveRunning = true
	if _, err := Dump(o, nil); err != nil {
		t.Fatal(err)
	}
	assertRunningUntraced(t, p.Pid)
	d, err := images.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	core, err := images.ReadOne[*criu_core.CoreEntry](d, images.CoreImg(p.Pid))
	if err != nil {
		t.Fatal(err)
	}
	tc := core.GetTc()
	if r := tc.GetRlimits().GetRlimits(); len(r) != 16 || r[unix.RLIMIT_NOFILE].GetCur() != 555 || r[unix.RLIMIT_NOFILE].GetMax() != 666 {
		t.Errorf("rlimits %v", r)
	}
	c := core.GetThreadCore().GetCreds()
	if c.GetUid() != 65534 || c.GetEuid() != 65534 || c.GetGid() != 65534 || len(c.GetGroups()) != 1 || c.GetGroups()[0] != 65534 {
		t.Errorf("creds %v", c)
	}
	pt := tc.GetTimers().GetPosix()
	if len(pt) != 1 || pt[0].GetClockId() != 1 || pt[0].GetIsec() != 7 || pt[0].GetVsec() > 3600 || pt[0].GetVsec() < 3590 || pt[0].GetSiSigno() != uint32(syscall.SIGALRM) {
		t.Errorf("posix timers %v", pt)
	}
}

// TestDumpFallbackReadv: a task that cannot open one more fd cannot make
// the vmsplice pipes; the dump reads its memory from outside instead.
func TestDumpFallbackReadv(t *testing.T) {
	needRoot(t)
	log := filepath.Join(t.TempDir(), "log")
	script := `
import os, resource, time
data = bytearray(b"x" * (1 << 20))
top = max(int(f) for f in os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (top, 1024))
print("ready", flush=True)
while True:
    time.sleep(1)
`
	p := start(t, "", "", "/bin/sh", "-c", "exec python3 -c '"+script+"' >"+log)
	waitFile(t, log, "ready")
	o := dumpOpts(p.Pid, t.TempDir())
	o.Method = MethodVmsplice
	o.LeaveRunning = true
	res, err := Dump(o, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Method != MethodReadv || res.Mem.Written < 256 {
		t.Errorf("method %v, %d pages", res.Method, res.Mem.Written)
	}
	assertRunningUntraced(t, p.Pid)
}

// TestDumpScratchGone dumps a task with the scratch mapped executable at
// once, and one whose PR_SET_MDWE refuses that (the scratch is then made
// writable only, and its calls go one by one): both dumps succeed, and
// each task runs on untraced with exactly the mappings it had.
func TestDumpScratchGone(t *testing.T) {
	needRoot(t)
	for _, mdwe := range []bool{false, true} {
		t.Run(fmt.Sprintf("mdwe=%v", mdwe), func(t *testing.T) {
			log := filepath.Join(t.TempDir(), "log")
			prog := "import ctypes, sys, time\n"
			if mdwe {
				// PR_SET_MDWE (65), PR_MDWE_REFUSE_EXEC_GAIN (1).
				prog += "if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0: sys.exit('prctl: %d' % ctypes.get_errno())\n"
			}
			prog += "open(sys.argv[1], 'w').write('ready'); time.sleep(60)\n"
			p := start(t, "", "", "/usr/bin/python3", "-c", prog, log)
			waitFile(t, log, "ready")
			before, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", p.Pid))
			if err != nil {
				t.Fatal(err)
			}
			o := dumpOpts(p.Pid, t.TempDir())
			o.LeaveRunning = true
			if _, err := Dump(o, nil); err != nil {
				t.Fatal(err)
			}
			assertRunningUntraced(t, p.Pid)
			after, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", p.Pid))
			if err != nil {
				t.Fatal(err)
			}
			if string(before) != string(after) {
				t.Fatalf("mappings changed by the dump:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}
