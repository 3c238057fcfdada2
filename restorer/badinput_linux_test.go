package restorer

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/pstree"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"godwit/dumper"
	"godwit/internal/images"
	"godwit/internal/model/criuimg"
	"godwit/internal/procfs"
	"godwit/internal/puppet"
	"godwit/internal/testutil"
)

var (
	goodOnce sync.Once
	goodDir  string
	goodPid  int
	goodTids []int
)

// goodDump is a dump of a counter with 2 threads, made once, to be copied
// and damaged.
func goodDump(t *testing.T) (string, int, []int) {
	t.Helper()
	goodOnce.Do(func() {
		dir, err := os.MkdirTemp("", "godwit-restorer-good")
		if err != nil {
			t.Fatal(err)
		}
		log := filepath.Join(dir, "log")
		w := startWorkload(t, log, "tick 2", testutil.CounterBin(t, false), "-t", "2", log)
		goodTids = threadsOf(t, w.Pid)
		dump(t, w.Pid, filepath.Join(dir, "img"), nil)
		w.Reaped(t)
		goodDir, goodPid = dir, w.Pid
	})
	if goodDir == "" {
		t.Fatal("no good dump")
	}
	return filepath.Join(goodDir, "img"), goodPid, goodTids
}

// copyDir copies the images into a new temp dir.
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// restoreFails checks that restoring dir fails with an error containing
// every want, and that nothing was left behind: no task with the PID, no
// child of ours.
func restoreFails(t *testing.T, dir string, pid int, want ...string) error {
	return restoreFailsBut(t, dir, pid, 0, want...)
}

func restoreFailsBut(t *testing.T, dir string, pid, child int, want ...string) error {
	t.Helper()
	return restoreFailsOpts(t, dir, pid, child, nil, want...)
}

// restoreFailsWith is restoreFails with options set by opt.
func restoreFailsWith(t *testing.T, dir string, pid int, opt func(*Options), want ...string) error {
	t.Helper()
	return restoreFailsOpts(t, dir, pid, 0, opt, want...)
}

func restoreFailsOpts(t *testing.T, dir string, pid, child int, opt func(*Options), want ...string) error {
	t.Helper()
	o := Options{}
	o.ImagesDir = dir
	if opt != nil {
		opt(&o)
	}
	r, err := Restore(o, nil)
	if err == nil {
		unix.Kill(r.PID(), unix.SIGKILL)
		r.Wait()
		t.Fatalf("restore of damaged images succeeded")
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not name %q", err, w)
		}
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("error is not one line: %q", err)
	}
	if pid > 0 {
		if _, serr := os.Stat(fmt.Sprintf("/proc/%d", pid)); serr == nil {
			st, _ := procfs.ReadStatus(pid)
			if st == nil || st.Name != "counter" {
				t.Errorf("pid %d exists after a failed restore: %+v", pid, st)
			}
		}
	}
	noChildren(t, child)
	t.Logf("%v", err)
	return err
}

// noChildren checks that we have no child processes left (puppets).
func noChildren(t *testing.T, except ...int) {
	t.Helper()
	var left []string
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", os.Getpid()))
	for _, e := range ents {
		c, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", os.Getpid(), e.Name()))
	next:
		for _, f := range strings.Fields(string(c)) {
			for _, x := range except {
				if f == fmt.Sprint(x) {
					continue next
				}
			}
			left = append(left, f)
		}
	}
	if len(left) > 0 {
		t.Errorf("children left behind: %v", left)
	}
}

func TestRestoreMissingImages(t *testing.T) {
	needRoot(t)
	good, pid, tids := goodDump(t)
	names := []string{images.InventoryImg, images.PstreeImg, images.CoreImg(pid), images.MmImg(pid),
		images.PagemapImg(pid), images.PagesImg(1), images.FilesImg, images.FdinfoImg(1), images.FsImg(pid)}
	for _, tid := range tids {
		if tid != pid {
			names = append(names, images.CoreImg(tid))
		}
	}
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			dir := copyDir(t, good)
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
			restoreFails(t, dir, pid, name)
		})
	}
}

func TestRestoreTruncatedImages(t *testing.T) {
	needRoot(t)
	good, pid, _ := goodDump(t)
	for _, name := range []string{images.InventoryImg, images.PstreeImg, images.CoreImg(pid), images.MmImg(pid),
		images.PagemapImg(pid), images.PagesImg(1), images.FilesImg, images.FsImg(pid)} {
		t.Run(name, func(t *testing.T) {
			dir := copyDir(t, good)
			p := filepath.Join(dir, name)
			st, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(p, st.Size()-3); err != nil {
				t.Fatal(err)
			}
			restoreFails(t, dir, pid, name)
		})
	}
}

func TestRestoreCorruptImages(t *testing.T) {
	needRoot(t)
	good, pid, _ := goodDump(t)
	for _, name := range []string{images.InventoryImg, images.PstreeImg, images.CoreImg(pid), images.MmImg(pid),
		images.PagemapImg(pid), images.FilesImg, images.FdinfoImg(1), images.FsImg(pid)} {
		for _, at := range []int{0, 8} { // the magic; the first entry's size
			t.Run(fmt.Sprintf("%s@%d", name, at), func(t *testing.T) {
				dir := copyDir(t, good)
				p := filepath.Join(dir, name)
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				if name == images.InventoryImg && at == 8 {
					at = 4 // inventory has no common magic
				}
				copy(b[at:], []byte{0xff, 0xff, 0xff, 0x7f})
				if err := os.WriteFile(p, b, 0o644); err != nil {
					t.Fatal(err)
				}
				restoreFails(t, dir, pid, name)
			})
		}
	}
}

// TestRestorePidInUse: the original still runs (dumped with -R): restore
// refuses at once, starts nothing and leaves the original alone.
func TestRestorePidInUse(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	w := startWorkload(t, log, "tick 2", testutil.CounterBin(t, false), log)
	imgs := filepath.Join(dir, "img")
	dump(t, w.Pid, imgs, func(o *dumper.Options) { o.LeaveRunning = true })
	err := restoreFailsBut(t, imgs, 0, w.Pid, fmt.Sprint(w.Pid), "in use")
	if !errors.Is(err, ErrPidInUse) {
		t.Errorf("error %v is not ErrPidInUse", err)
	}
	st, err := procfs.ReadStatus(w.Pid)
	if err != nil || st.TracerPid != 0 || st.State == 'T' {
		t.Fatalf("original after the failed restore: %+v, %v", st, err)
	}
	n := ticks(t, log)
	waitTicks(t, log, n+1)
}

// TestRestorePidMax: a PID at or above pid_max is refused with a clear error.
func TestRestorePidMax(t *testing.T) {
	needRoot(t)
	good, pid, tids := goodDump(t)
	dir := copyDir(t, good)
	max, err := puppet.PidMax()
	if err != nil {
		t.Fatal(err)
	}
	big, want := max+pid%1000, "pid_max" // a PID a task can never have here
	if big >= 1<<22 {
		// pid_max is PID_MAX_LIMIT (as in a new pid namespace since
		// Linux 6.14): the image reader refuses the PID first.
		want = "bad pid"
	}
	d, err := images.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ps, err := images.ReadOne[*pstree.PstreeEntry](d, images.PstreeImg)
	if err != nil {
		t.Fatal(err)
	}
	ps.Pid = proto.Uint32(uint32(big))
	ps.Threads[0] = uint32(big)
	if err := images.Write(d, images.PstreeImg, ps); err != nil {
		t.Fatal(err)
	}
	for _, n := range [][2]string{{images.CoreImg(pid), images.CoreImg(big)}, {images.MmImg(pid), images.MmImg(big)},
		{images.FsImg(pid), images.FsImg(big)}, {images.PagemapImg(pid), images.PagemapImg(big)}} {
		if err := os.Rename(filepath.Join(dir, n[0]), filepath.Join(dir, n[1])); err != nil {
			t.Fatal(err)
		}
	}
	// The side image of frozen syscall registers names the old tids:
	// without it the threads keep their registers as CRIU's images hold
	// them (criuimg.RestartImg).
	os.Remove(filepath.Join(dir, criuimg.RestartImg))
	_ = tids
	restoreFails(t, dir, big, fmt.Sprint(big), want)
}

// TestWaitPidFree: a zombie holding the PID is waited for; a live task is
// refused at once.
func TestWaitPidFree(t *testing.T) {
	needRoot(t)
	cmd := exec.Command("/bin/true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	// Wait until it is a zombie, then reap it a little later.
	for i := 0; i < 1000; i++ {
		if st, err := procfs.ReadStatus(pid); err == nil && st.State == 'Z' {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	var reaped atomic.Bool
	go func() { time.Sleep(300 * time.Millisecond); cmd.Wait(); reaped.Store(true) }()
	if err := waitPidFree(pid, 5*time.Second); err != nil {
		t.Fatalf("zombie %d: %v", pid, err)
	}
	// Free means reaped: the zombie still held the pid until then.
	for i := 0; i < 100 && !reaped.Load(); i++ {
		time.Sleep(time.Millisecond) // Wait returns a moment after the reap
	}
	if !reaped.Load() {
		t.Errorf("pid %d reported free while still a zombie", pid)
	}
	live := exec.Command("/bin/sleep", "10")
	if err := live.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { live.Process.Kill(); live.Wait() }()
	if err := waitPidFree(live.Process.Pid, 5*time.Second); !errors.Is(err, ErrPidInUse) {
		t.Fatalf("live pid: %v, want ErrPidInUse", err)
	}
}

// TestRestoreFailsMidway: a file gone since the dump fails the restore in
// the step that needs it; the partial task is killed and reaped.
func TestRestoreFailsMidway(t *testing.T) {
	needRoot(t)
	for _, c := range []struct {
		name, gone, step string
	}{
		{"layout", "counter", "layout: mmap vma"},
		{"finalize", "log", "files: fd 3: open"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			bin := filepath.Join(dir, "counter")
			b, err := os.ReadFile(testutil.CounterBin(t, false))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(bin, b, 0o755); err != nil {
				t.Fatal(err)
			}
			log := filepath.Join(dir, "log")
			w := startWorkload(t, log, "tick 2", bin, log)
			imgs := filepath.Join(dir, "img")
			dump(t, w.Pid, imgs, nil)
			w.Reaped(t)
			if err := os.Remove(filepath.Join(dir, c.gone)); err != nil {
				t.Fatal(err)
			}
			err = restoreFails(t, imgs, w.Pid, c.step, filepath.Join(dir, c.gone), "no such file")
			t.Logf("error: %v", err)
			if _, serr := os.Stat(fmt.Sprintf("/proc/%d", w.Pid)); serr == nil {
				t.Errorf("pid %d still exists", w.Pid)
			}
		})
	}
}
