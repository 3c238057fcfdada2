package restorer

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/dumper"
)

// shmSplitInner runs TestShmSplit's overlapped case as the init of a PID
// namespace of its own, with the child's PID below its parent's.
const shmSplitInner = "GODWIT_TEST_SHMSPLIT_LOWPID"

// TestShmSplit restores a parent and child mapping disjoint halves of one
// shared anonymous object (testdata/shmsplit.c): each task must read its
// own half back, whichever task the restore makes the object in, (a) from
// a plain restore and (b) prepared from a pre-dump round, the tasks
// rewriting their halves (and the child removing a page) before the final
// dump, then finished; (b) again with the child's PID below the parent's.
func TestShmSplit(t *testing.T) {
	if os.Getenv(shmSplitInner) != "" {
		// The namespace's init: the test binary itself.
		t.Run("overlap", func(t *testing.T) { shmSplit(t, true, "1") })
		return
	}
	t.Run("plain", func(t *testing.T) { shmSplit(t, false, "") })
	t.Run("overlap", func(t *testing.T) { shmSplit(t, true, "") })
	t.Run("overlap-lowpid", func(t *testing.T) {
		needRoot(t)
		cmd := exec.Command(os.Args[0], "-test.run=^TestShmSplit$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), shmSplitInner+"=1")
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWPID | unix.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
		done := make(chan struct{})
		var out []byte
		var err error
		go func() { out, err = cmd.CombinedOutput(); close(done) }()
		select {
		case <-done:
		case <-time.After(3 * time.Minute):
			// The namespace's init: everything in it dies with it.
			_ = cmd.Process.Kill()
			<-done
			t.Fatalf("no result after 3 minutes:\n%s", out)
		}
		if err != nil || !strings.Contains(string(out), "--- PASS: TestShmSplit/overlap") {
			t.Fatalf("in a pid namespace: %v\n%s", err, out)
		}
	})
}

func shmSplit(t *testing.T, overlap bool, lowPid string) {
	needRoot(t)
	if lowPid != "" {
		// Our own /proc, for this namespace's PIDs.
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			t.Fatal(err)
		}
	}
	subreaper(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "shmsplit")
	if out, err := exec.Command("gcc", "-O2", "-Wall", "-o", bin, "testdata/shmsplit.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v %s", err, out)
	}
	log := filepath.Join(dir, "log")
	argv := []string{bin, log}
	if lowPid != "" {
		argv = append([]string{"/usr/bin/env", "LOWPID=" + lowPid}, argv...)
	}
	w := startWorkload(t, log, "ready", argv...)
	m := regexp.MustCompile(`(?m)^ready (\d+) (\d+)$`).FindStringSubmatch(readLog(t, log))
	if m == nil {
		t.Fatalf("no ready line:\n%s", readLog(t, log))
	}
	parent, _ := strconv.Atoi(m[1])
	kid, _ := strconv.Atoi(m[2])
	t.Cleanup(func() {
		dumper.EndTracking(w.Pid)
		_ = unix.Kill(kid, unix.SIGKILL)
	})
	if parent != w.Pid {
		t.Fatalf("ready line names %d, started %d", parent, w.Pid)
	}
	if lowPid != "" && kid > parent {
		t.Fatalf("child %d above its parent %d: ns_last_pid did not take", kid, parent)
	}
	final := filepath.Join(dir, "final")
	var r *Restorer
	if !overlap {
		dump(t, w.Pid, final, nil)
		w.Reaped(t)
		reapGone(t, kid)
		r = restore(t, final, nil)
	} else {
		r1 := preRound(t, w.Pid, dir, 1)
		l1 := treeLayout(t, []int{w.Pid, kid})
		// Both halves rewritten after the round, and one page of the
		// child's removed: the round's data is stale there.
		if err := unix.Kill(w.Pid, unix.SIGUSR2); err != nil {
			t.Fatal(err)
		}
		waitLine(t, log, "cbump")
		dump(t, w.Pid, final, func(o *dumper.Options) { o.PrevImagesDir, o.TrackMem = "../r1", true })
		w.Reaped(t)
		reapGone(t, kid)
		p, err := Prepare(Options{}, l1)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Abort)
		if err := p.WritePages(context.Background(), r1); err != nil {
			t.Fatal(err)
		}
		if st := p.Stats(); st.Shared != 1 || st.Pages == 0 {
			t.Fatalf("the object was not prepared and written by the round: %+v", st)
		}
		r, err = p.Finish(context.Background(), Options{ImagesDir: final}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if !r.waited {
				_ = unix.Kill(r.PID(), unix.SIGKILL)
				r.Wait()
			}
		})
	}
	last := finish(t, r, log)
	got := readLog(t, log)
	if last != "done 0" || !strings.Contains(got, "\nP ok\n") || !strings.Contains(got, "\nC ok\n") {
		t.Fatalf("the tasks' halves after the restore:\n%s", got)
	}
}
