package puppet

import (
	"errors"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
	"godwit/internal/ptrace"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (ptrace, clone3 with set_tid)")
	}
}

// freePid returns a PID that no task uses now, picked at random in the
// upper half of the range (other processes on the machine allocate PIDs all
// the time; spreading our picks keeps collisions with them and with our
// own recently killed tasks rare).
func freePid(t *testing.T) int {
	t.Helper()
	max, err := PidMax()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 1000; i++ {
		pid := max/2 + rand.IntN(max/2-100)
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); os.IsNotExist(err) {
			return pid
		}
	}
	t.Fatal("no free pid")
	return 0
}

// cloneFree clones p with a free PID, trying again if the PID was taken
// between our check and the clone (by someone else's fork).
func cloneFree(t *testing.T, p *Puppet, sibling bool) *Puppet {
	t.Helper()
	for i := 0; ; i++ {
		pid := freePid(t)
		c, err := p.Clone(pid, sibling)
		if errors.Is(err, ErrPidInUse) && i < 3 {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if c.Pid != pid {
			t.Fatalf("clone pid %d, want %d", c.Pid, pid)
		}
		return c
	}
}

func startPuppet(t *testing.T) (*ptrace.Tracer, *Puppet) {
	t.Helper()
	tr := ptrace.New()
	p, err := Start(Options{Tracer: tr})
	if err != nil {
		tr.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Kill()
		tr.Close()
	})
	return tr, p
}

func assertTracedStopped(t *testing.T, tr *ptrace.Tracer, pid, ppid int) {
	t.Helper()
	st, err := procfs.ReadStatus(pid)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != 't' || st.TracerPid != tr.ThreadID() || st.PPid != ppid || st.Threads != 1 {
		t.Errorf("task %d: State %c TracerPid %d (want %d) PPid %d (want %d) Threads %d",
			pid, st.State, st.TracerPid, tr.ThreadID(), st.PPid, ppid, st.Threads)
	}
}

func TestImage(t *testing.T) {
	img := Image(DefaultBase)
	if len(img) > 512 {
		t.Errorf("stub is %d bytes", len(img))
	}
	if string(img[:4]) != "\x7fELF" || img[SyscallOffset] != 0x0f || img[SyscallOffset+1] != 0x05 {
		t.Errorf("bad image % x", img)
	}
	// The injection point is followed by the jump back to the top, the
	// last instruction, and the name comes after the code.
	if end := SyscallOffset + 4; end != codeOffset+len(stubCode) || end > NameOffset {
		t.Errorf("code ends at %#x, injection point at %#x, name at %#x", codeOffset+len(stubCode), SyscallOffset, NameOffset)
	}
}

func TestStart(t *testing.T) {
	needRoot(t)
	tr, p := startPuppet(t)
	assertTracedStopped(t, tr, p.Pid, os.Getpid())
	if comm, err := procfs.ReadComm(p.Pid); err != nil || comm != Comm {
		t.Errorf("comm %q %v", comm, err)
	}
	exe, err := os.Readlink("/proc/" + strconv.Itoa(p.Pid) + "/exe")
	if err != nil || !strings.HasPrefix(exe, "/memfd:godwit-puppet") {
		t.Errorf("exe %q, %v", exe, err)
	}
	maps, err := procfs.ReadMaps(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if len(maps) == 0 || maps[0].Start != DefaultBase || !maps[0].Exec || maps[0].Write {
		t.Errorf("first mapping %+v, want r-x at %#x", maps[0], DefaultBase)
	}
	got, err := tr.InjectSyscall(p.Pid, unix.SYS_GETPID)
	if err != nil || int(got) != p.Pid {
		t.Fatalf("getpid in puppet: %d, %v", got, err)
	}
	fds, err := procfs.FDs(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if len(fds) != 4 {
		t.Errorf("puppet fds %v, want only 0 1 2 and the lifeline", fds)
	}
	if err := p.checkLifeline(); err != nil {
		t.Error(err)
	}
}

func testClone(t *testing.T, sibling bool) {
	needRoot(t)
	tr, p := startPuppet(t)
	c := cloneFree(t, p, sibling)
	pid := c.Pid
	t.Cleanup(func() {
		c.Kill()
	})
	ppid := p.Pid
	if sibling {
		ppid = os.Getpid()
	}
	assertTracedStopped(t, tr, pid, ppid)
	got, err := tr.InjectSyscall(pid, unix.SYS_GETPID)
	if err != nil || int(got) != pid {
		t.Fatalf("getpid in clone: %d, %v", got, err)
	}
	got, err = tr.InjectSyscall(pid, unix.SYS_GETPPID)
	if err != nil || int(got) != ppid {
		t.Fatalf("getppid in clone: %d, %v (want %d)", got, err, ppid)
	}
	// The clone has the stub's mappings and nothing else: the scratch
	// page is gone from both, and both have an empty signal mask again.
	pm, _ := procfs.ReadMaps(p.Pid)
	cm, _ := procfs.ReadMaps(pid)
	if len(pm) != len(cm) {
		t.Errorf("puppet has %d mappings, clone %d", len(pm), len(cm))
	}
	for _, q := range []int{p.Pid, pid} {
		m, err := tr.GetSigmask(q)
		if err != nil || m != 0 {
			t.Errorf("sigmask of %d: %#x, %v", q, m, err)
		}
	}
	// A PID in use and a PID above pid_max fail cleanly; nothing is made.
	if _, err := p.Clone(p.Pid, sibling); !errors.Is(err, ErrPidInUse) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(p.Pid)+": pid is in use") {
		t.Errorf("clone with a taken pid: %v", err)
	}
	max, _ := PidMax()
	if _, err := p.Clone(max+5, sibling); !errors.Is(err, ErrPidMax) {
		t.Errorf("clone above pid_max: %v", err)
	}
	if n := len(tr.Traced()); n != 2 {
		t.Errorf("tracer holds %d tasks, want 2", n)
	}
	// Kill the clone; it must die (a child of the puppet is reaped by
	// init once the puppet is gone, which may take a moment, and never
	// where init is a process that reaps only its own children, as go
	// under unshare -pf: a zombie counts as dead).
	if err := c.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	for _, q := range []int{pid, p.Pid} {
		deadline := time.Now().Add(10 * time.Second)
		for {
			if alive(q) == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("task %d still alive after Kill: %s", q, alive(q))
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

func TestCloneChild(t *testing.T)   { testClone(t, false) }
func TestCloneSibling(t *testing.T) { testClone(t, true) }

// A process tree with chosen PIDs, and a thread with a chosen TID: the shape
// restore builds.
func TestTreeAndThread(t *testing.T) {
	needRoot(t)
	tr, p := startPuppet(t)
	child := cloneFree(t, p, false)
	t.Cleanup(func() { child.Kill() })
	grand := cloneFree(t, child, false)
	t.Cleanup(func() { grand.Kill() })
	assertTracedStopped(t, tr, grand.Pid, child.Pid)

	want := freePid(t)
	tid, err := child.CloneThread(want)
	if err != nil {
		t.Fatal(err)
	}
	if tid != want {
		t.Fatalf("thread tid %d, want %d", tid, want)
	}
	st, err := procfs.ReadTaskStatus(child.Pid, tid)
	if err != nil {
		t.Fatal(err)
	}
	if st.Tgid != child.Pid || st.State != 't' || st.TracerPid != tr.ThreadID() {
		t.Errorf("thread %d: %+v", tid, st)
	}
	if got, err := tr.InjectSyscall(tid, unix.SYS_GETTID); err != nil || int(got) != tid {
		t.Errorf("gettid in new thread: %d %v", got, err)
	}
	if got, err := tr.InjectSyscall(tid, unix.SYS_GETPID); err != nil || int(got) != child.Pid {
		t.Errorf("getpid in new thread: %d %v", got, err)
	}
	if m, err := tr.GetSigmask(tid); err != nil || m != 0 {
		t.Errorf("new thread sigmask %#x %v", m, err)
	}
	if tids, _ := procfs.Tasks(child.Pid); len(tids) != 2 {
		t.Errorf("child threads %v", tids)
	}
	if _, err := child.CloneThread(grand.Pid); !errors.Is(err, ErrPidInUse) {
		t.Errorf("thread with a taken tid: %v", err)
	}
}

// Closing the tracer kills puppets it did not kill itself (EXITKILL), the
// clones included.
func TestCloseKillsPuppets(t *testing.T) {
	needRoot(t)
	tr := ptrace.New()
	defer tr.Close()
	p, err := Start(Options{Tracer: tr})
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.Clone(freePid(t), true)
	if err != nil {
		p.Kill()
		t.Fatal(err)
	}
	tr.Close()
	for _, q := range []int{p.Pid, c.Pid} {
		// Both are our children: reap them, which also proves they died.
		var ws unix.WaitStatus
		if _, err := unix.Wait4(q, &ws, unix.WALL, nil); err != nil {
			t.Fatalf("wait %d: %v", q, err)
		}
		if !ws.Signaled() || ws.Signal() != unix.SIGKILL {
			t.Errorf("task %d: status %#x, want killed by SIGKILL", q, uint32(ws))
		}
	}
	p.proc.Release()
}
