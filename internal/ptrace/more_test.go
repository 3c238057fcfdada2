package ptrace

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
)

func waitCounter(t *testing.T, pid int, addr, past uint64, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for readU64(t, pid, addr) <= past {
		if time.Now().After(deadline) {
			t.Fatalf("%s stopped", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// Threads appear and vanish while we freeze: the freeze must settle on the
// live set, and the thaw leave the program going.
func TestFreezeThreadChurn(t *testing.T) {
	needRoot(t)
	tr := New()
	c := startChild(t, tr, buildC(t, "churn", "-pthread"))
	addr := c.addr(t)
	for i := 0; i < 20; i++ {
		tids, err := tr.FreezeProcess(c.pid, 0)
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		live, err := procfs.Tasks(c.pid)
		if err != nil {
			t.Fatal(err)
		}
		if len(live) != len(tids) {
			t.Fatalf("round %d: froze %v but /proc lists %v", i, tids, live)
		}
		for _, tid := range tids {
			if got, err := tr.InjectSyscall(tid, unix.SYS_GETTID); err != nil || int(got) != tid {
				t.Fatalf("gettid in %d: %d %v", tid, got, err)
			}
		}
		v := readU64(t, c.pid, addr)
		if err := tr.ThawProcess(c.pid, false); err != nil {
			t.Fatal(err)
		}
		waitCounter(t, c.pid, addr, v, "thread churn")
	}
	assertFree(t, c.pid)
}

// Signals with a handler keep arriving: the freeze delivers what was
// already dequeued, injection blocks the rest, nothing is lost or breaks.
func TestFreezeUnderSignals(t *testing.T) {
	needRoot(t)
	tr := New()
	c := startChild(t, tr, buildC(t, "alarm"))
	addr := c.addr(t)
	for i := 0; i < 20; i++ {
		if _, err := tr.FreezeProcess(c.pid, 0); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		s, err := tr.BeginInjection(c.pid)
		if err != nil {
			t.Fatal(err)
		}
		for j := 0; j < 10; j++ {
			if got, err := s.Syscall(unix.SYS_GETPID); err != nil || int(got) != c.pid {
				t.Fatalf("getpid: %d %v", got, err)
			}
			time.Sleep(100 * time.Microsecond) // let SIGALRMs pile up
		}
		if err := s.End(); err != nil {
			t.Fatal(err)
		}
		v := readU64(t, c.pid, addr)
		if err := tr.ThawProcess(c.pid, false); err != nil {
			t.Fatal(err)
		}
		waitCounter(t, c.pid, addr, v, "SIGALRM handler")
	}
	assertFree(t, c.pid)
}

// A process already stopped by SIGSTOP freezes (as a group-stop), accepts
// injected calls, stays stopped after the thaw and runs again on SIGCONT.
// ThawProcess(leaveStopped) turns a running process into a stopped one.
func TestGroupStop(t *testing.T) {
	needRoot(t)
	tr := New()
	c := startChild(t, tr, buildC(t, "spin"))
	ctr := c.addr(t)
	state := func() byte {
		st, err := procfs.ReadStat(c.pid)
		if err != nil {
			t.Fatal(err)
		}
		return st.State
	}
	waitState := func(want byte) {
		t.Helper()
		for i := 0; state() != want; i++ {
			if i > 1000 {
				t.Fatalf("state %c, want %c", state(), want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	if err := unix.Kill(c.pid, unix.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitState('T')
	if _, err := tr.FreezeProcess(c.pid, 0); err != nil {
		t.Fatal(err)
	}
	st, err := tr.LastStop(c.pid)
	if err != nil || !st.GroupStop() {
		t.Errorf("stop of a SIGSTOPped task: %v %v", st, err)
	}
	if got, err := tr.InjectSyscall(c.pid, unix.SYS_GETPID); err != nil || int(got) != c.pid {
		t.Fatalf("getpid: %d %v", got, err)
	}
	if err := tr.ThawProcess(c.pid, false); err != nil {
		t.Fatal(err)
	}
	assertFree(t, c.pid)
	waitState('T')
	v := readU64(t, c.pid, ctr)
	time.Sleep(20 * time.Millisecond)
	if readU64(t, c.pid, ctr) != v {
		t.Fatal("runs after thaw of a stopped process")
	}
	unix.Kill(c.pid, unix.SIGCONT)
	waitCounter(t, c.pid, ctr, v, "counter after SIGCONT")

	// Running → frozen → left stopped.
	if _, err := tr.FreezeProcess(c.pid, 0); err != nil {
		t.Fatal(err)
	}
	if st, _ := tr.LastStop(c.pid); st.GroupStop() {
		t.Errorf("running task reported as group-stopped: %v", st)
	}
	frozenAt := readU64(t, c.pid, ctr)
	if err := tr.ThawProcess(c.pid, true); err != nil {
		t.Fatal(err)
	}
	waitState('T')
	assertFree(t, c.pid)
	if v := readU64(t, c.pid, ctr); v != frozenAt {
		t.Errorf("ran %d iterations between the freeze and the stop", v-frozenAt)
	}
	unix.Kill(c.pid, unix.SIGCONT)
	waitCounter(t, c.pid, ctr, readU64(t, c.pid, ctr), "counter after second SIGCONT")
}

func BenchmarkInject(b *testing.B) {
	needRoot(b)
	tr := New()
	c := startChild(b, tr, buildC(b, "read"))
	if _, err := tr.FreezeProcess(c.pid, 0); err != nil {
		b.Fatal(err)
	}
	b.Run("InjectSyscall", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := tr.InjectSyscall(c.pid, unix.SYS_GETPID); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Session", func(b *testing.B) {
		s, err := tr.BeginInjection(c.pid)
		if err != nil {
			b.Fatal(err)
		}
		for i := 0; i < b.N; i++ {
			if _, err := s.Syscall(unix.SYS_GETPID); err != nil {
				b.Fatal(err)
			}
		}
		if err := s.End(); err != nil {
			b.Fatal(err)
		}
	})
	b.Run("GetRegsBatched", func(b *testing.B) {
		err := tr.Do(func() error {
			for i := 0; i < b.N; i++ {
				if _, err := tr.GetRegs(c.pid); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	})
	b.Run("GetRegs", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := tr.GetRegs(c.pid); err != nil {
				b.Fatal(err)
			}
		}
	})
	if err := tr.ThawProcess(c.pid, false); err != nil {
		b.Fatal(err)
	}
}

// The usual dump target is not our child: its parent is whoever started it
// (here init, after a double fork). Freeze, inject, thaw, then kill it.
func TestNotOurChild(t *testing.T) {
	needRoot(t)
	bin := buildC(t, "spin")
	out, err := exec.Command("sh", "-c", bin+" >/dev/null 2>&1 & echo $!").Output()
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.Kill(pid, unix.SIGKILL)
		waitGone(t, pid)
	})
	tr := New()
	defer tr.Close()
	if st, err := procfs.ReadStat(pid); err != nil || st.Ppid == unix.Getpid() {
		t.Fatalf("target %d: %+v %v", pid, st, err)
	}
	tids, err := tr.FreezeProcess(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	exercise(t, tr, pid, tids)
	if err := tr.ThawProcess(pid, false); err != nil {
		t.Fatal(err)
	}
	assertFree(t, pid)
	if _, err := tr.FreezeProcess(pid, 0); err != nil {
		t.Fatal(err)
	}
	if err := tr.KillProcess(pid); err != nil {
		t.Fatal(err)
	}
	if n := len(tr.Traced()); n != 0 {
		t.Errorf("%d tasks still traced", n)
	}
	waitGone(t, pid)
}

// waitGone waits until pid is dead: gone, or a zombie (its reaper is the
// namespace's init, which under `unshare -pf go test` is go, and never
// reaps).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); os.IsNotExist(err) {
			return
		}
		if st, err := procfs.ReadStat(pid); err == nil && (st.State == 'Z' || st.State == 'X') {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still exists", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
