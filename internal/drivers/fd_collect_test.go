package drivers

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

	"godwit/internal/abi/linux"
	"godwit/internal/model"
)

func TestParseLockedInodes(t *testing.T) {
	in := "1: POSIX  ADVISORY  WRITE 1234 08:01:5678 0 EOF\n" +
		"1: -> POSIX  ADVISORY  WRITE 1240 08:01:5678 0 EOF\n" +
		"2: FLOCK  ADVISORY  WRITE 99 00:1f:42 0 EOF\n" +
		"3: OFDLCK ADVISORY  READ -1 fd:00:123456789 10 20\n"
	got, err := parseLockedInodes(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	for _, ino := range []uint64{5678, 42, 123456789} {
		if !got[ino] {
			t.Errorf("inode %d not among %v", ino, got)
		}
	}
	if len(got) != 3 {
		t.Errorf("read %v", got)
	}
	if _, err := parseLockedInodes(strings.NewReader("1: POSIX ADVISORY WRITE 1 08:01:x 0 EOF\n")); err == nil {
		t.Error("a bad inode was accepted")
	}
}

// The fds of another process are read on copies; fdinfo only for a
// locked file (when /proc shows every lock); the offset, flags, owner
// and the pipe's queue come from the copy.
func TestCollectFDsFromCopies(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root (pidfd_getfd)")
	}
	dir := t.TempDir()
	open := func(name string) *os.File {
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	locked, plain := open("locked"), open("plain")
	if err := unix.Flock(int(locked.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if _, err := plain.Seek(1234, 0); err != nil {
		t.Fatal(err)
	}
	ex := linux.FOwnerEx{Type: linux.FOwnerPID, Pid: int32(os.Getpid())}
	if err := setOwnerAs(int(plain.Fd()), model.FileOwner{Type: int(ex.Type), Pid: int(ex.Pid)}); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(plain.Fd(), unix.F_SETSIG, 40); err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if _, err := w.WriteString("queued"); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "100")
	cmd.ExtraFiles = []*os.File{locked, plain, r} // 3, 4, 5
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	// Until sleep sleeps, the child may still hold the fork's
	// close-on-exec fds (exec sets comm before it closes them) or sleep's
	// own passing ones, which vanish under the collection (a dump reads a
	// frozen task): wait for it in (clock_)nanosleep.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/syscall", cmd.Process.Pid))
		if f := strings.Fields(string(b)); len(f) > 0 && (f[0] == strconv.Itoa(unix.SYS_CLOCK_NANOSLEEP) || f[0] == strconv.Itoa(unix.SYS_NANOSLEEP)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("sleep did not start")
		}
	}
	fds, err := CollectFDs(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	byNum := map[int]*FD{}
	for i := range fds {
		byNum[fds[i].Num] = &fds[i]
	}
	l, p, rd := byNum[3], byNum[4], byNum[5]
	if l == nil || p == nil || rd == nil {
		t.Fatalf("fds 3-5 not all read: %v", fds)
	}
	if l.Info == nil {
		t.Error("the locked file's fdinfo (its lock lines) was not read")
	}
	if p.Pos != 1234 || p.Flags&unix.O_ACCMODE != unix.O_RDWR || p.MntID <= 0 {
		t.Errorf("plain file read as pos %d flags %#o mnt %d", p.Pos, p.Flags, p.MntID)
	}
	if want := (model.FileOwner{Type: linux.FOwnerPID, Pid: os.Getpid(), Signum: 40}); p.owner != want {
		t.Errorf("owner read %+v, want %+v", p.owner, want)
	}
	if !rd.pipeKnown || rd.pipeQueued != len("queued") {
		t.Errorf("pipe read as known %v, %d queued", rd.pipeKnown, rd.pipeQueued)
	}
	if procInitNS() {
		if p.Info != nil || !p.cloexecUnknown || rd.Info != nil {
			t.Error("fdinfo read for an unlocked file or a pipe")
		}
	} else if p.Info == nil || p.cloexecUnknown {
		t.Error("/proc hides locks here: every fdinfo must be read")
	}
}

// An owner the tree does not hold is refused at dump, naming it.
func TestCheckFDsOwnerOutsideTree(t *testing.T) {
	tr := &model.Tree{Files: map[model.ID]*model.File{1: {ID: 1, Owner: model.FileOwner{Type: linux.FOwnerPGRP, Pid: 777}}}}
	tr.Tasks = []*model.Task{{Pid: 10, Pgid: 10, FDs: []model.FD{{Num: 5, File: 1}}, Threads: []*model.Thread{{Tid: 10}}}}
	err := NewFiles().checkFDs(tr)
	if err == nil || !strings.Contains(err.Error(), "fd 5: its owner (F_SETOWN), process group 777, is not in the dumped tree") {
		t.Fatalf("error %v", err)
	}
	tr.Files[1].Owner.Pid = 10
	if err := NewFiles().checkFDs(tr); err != nil {
		t.Fatal(err)
	}
}

// setOwnerAs records the given uid and euid as the owner's, and leaves
// godwit's own ids as they were.
func TestSetOwnerAs(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root")
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	o := model.FileOwner{Type: linux.FOwnerTID, Pid: unix.Gettid(), UID: 1000, EUID: 1001}
	if err := setOwnerAs(int(r.Fd()), o); err != nil {
		t.Fatal(err)
	}
	got, err := readOwner(int(r.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if got != o {
		t.Errorf("owner read %+v, want %+v", got, o)
	}
	for i := 0; i < 4; i++ { // every thread of godwit still root
		if ruid, euid, suid := unix.Getresuid(); ruid != 0 || euid != 0 || suid != 0 {
			t.Fatalf("godwit's ids now %d %d %d", ruid, euid, suid)
		}
	}
}

// Read from /proc only (no copy of the fd: pidfd_getfd refused), an fd
// is refused, since its owner and signal cannot be read: with O_ASYNC,
// and without (an owner set with F_SETOWN alone, here on the write end,
// is state too, which /proc does not show).
func TestCollectFDsAsyncWithoutCopy(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root")
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	fl, err := unix.FcntlInt(r.Fd(), unix.F_GETFL, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(r.Fd(), unix.F_SETFL, fl|unix.O_ASYNC); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(w.Fd(), unix.F_SETOWN, os.Getpid()); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "100")
	cmd.ExtraFiles = []*os.File{r, w} // 3, 4
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	pid := cmd.Process.Pid
	// Until the child has exec'd, its fds 3 and 4 may still be the test's.
	var st unix.Stat_t
	if err := unix.Fstat(int(r.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	pipe := fmt.Sprintf("pipe:[%d]", st.Ino)
	for i := 0; ; i++ {
		l3, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/3", pid))
		l4, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/4", pid))
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); l3 == pipe && l4 == pipe && strings.HasSuffix(exe, "/sleep") {
			break
		}
		if i == 1000 {
			t.Fatalf("the child's fds 3 and 4 are %q %q, want %s", l3, l4, pipe)
		}
		time.Sleep(5 * time.Millisecond)
	}
	fdDir, err := unix.Open(fmt.Sprintf("/proc/%d/fd", pid), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fdDir)
	infoDir, err := unix.Open(fmt.Sprintf("/proc/%d/fdinfo", pid), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(infoDir)
	c := &fdCollector{pid: pid, fdDir: fdDir, infoDir: infoDir, pidfd: -1}
	out := make([]FD, 1)
	err = c.collectRange([]int{4}, out)
	if err == nil || !strings.Contains(err.Error(), "fd 4: pipe:[") || !strings.Contains(err.Error(), "its owner (F_SETOWN) and signal cannot be read") {
		t.Fatalf("the write end, no O_ASYNC, its owner set: %v, want a refusal", err)
	}
	err = c.collectRange([]int{3}, out)
	if err == nil || !strings.Contains(err.Error(), "fd 3: pipe:[") || !strings.Contains(err.Error(), "O_ASYNC is set but its owner (F_SETOWN) and signal cannot be read") {
		t.Fatalf("the O_ASYNC read end: %v, want a refusal", err)
	}
}
