package restorer

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"golang.org/x/sys/unix"

	"godwit/dumper"
	"godwit/internal/images"
	"godwit/internal/model"
	"godwit/internal/model/criuimg"
	"godwit/internal/ptrace"
	"godwit/internal/testutil"
	"godwit/internal/xstate"
)

var gapsBuild struct {
	once sync.Once
	bin  string
	err  error
}

// gapsBin builds testdata/gaps.c once per test binary.
func gapsBin(t *testing.T) string {
	t.Helper()
	g := &gapsBuild
	g.once.Do(func() {
		dir, err := os.MkdirTemp("", "godwit-gaps")
		if err != nil {
			g.err = err
			return
		}
		g.bin = filepath.Join(dir, "gaps")
		if out, err := exec.Command("gcc", "-O2", "-Wall", "-pthread", "-o", g.bin, "testdata/gaps.c").CombinedOutput(); err != nil {
			g.err = fmt.Errorf("gcc: %v\n%s", err, out)
		}
	})
	if g.err != nil {
		t.Fatal(g.err)
	}
	return g.bin
}

// gapWorkload starts gaps MODE in a fresh directory; it returns the
// process, its log and the directory.
func gapWorkload(t *testing.T, mode string) (*testutil.Proc, string, string) {
	t.Helper()
	needRoot(t)
	bin := gapsBin(t)
	dir := t.TempDir()
	work := filepath.Join(dir, "work")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(dir, "log")
	w := startWorkload(t, log, "ready "+mode, bin, mode, work, log)
	return w, log, dir
}

// roundTrip dumps the gaps workload in mode (killing it), restores it and
// lets it check itself.
func roundTrip(t *testing.T, mode string, after func(pid int)) {
	w, log, dir := gapWorkload(t, mode)
	imgs := filepath.Join(dir, "img")
	dump(t, w.Pid, imgs, nil)
	w.Reaped(t)
	r := restore(t, imgs, nil)
	if after != nil {
		after(r.PID())
	}
	if got := finish(t, r, log); got != "done "+mode {
		t.Fatalf("last line %q", got)
	}
}

// TestRestoreLoginuid: the audit login uid of every thread, which the
// restored threads would otherwise inherit from godwit.
func TestRestoreLoginuid(t *testing.T) {
	if _, err := os.Stat("/proc/self/loginuid"); err != nil {
		t.Fatalf("no loginuid on this kernel: %v", err)
	}
	if b, _ := os.ReadFile("/proc/self/loginuid"); string(b) == "1234" {
		t.Fatal("godwit's own loginuid is the workload's: the test would prove nothing")
	}
	roundTrip(t, "loginuid", func(pid int) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/loginuid", pid))
		if err != nil || string(b) != "1234" {
			t.Errorf("restored loginuid %q, %v", b, err)
		}
	})
}

// TestRestoreSharedMapWritable: a shared file mapping made read-only from
// an O_RDWR file can be mprotect'ed writable after restore.
func TestRestoreSharedMapWritable(t *testing.T) { roundTrip(t, "mapwrite", nil) }

// TestRestoreMembarrier: private expedited and rseq registrations, and
// no sync-core one.
func TestRestoreMembarrier(t *testing.T) { roundTrip(t, "membarrier", nil) }

// TestRestoreDeletedCwd: a task whose cwd was removed still sees it
// removed.
func TestRestoreDeletedCwd(t *testing.T) {
	roundTrip(t, "cwd", func(pid int) {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
		if err != nil || !strings.HasSuffix(l, " (deleted)") {
			t.Errorf("restored cwd %q, %v", l, err)
		}
	})
}

// TestRestoreGuardRegions: guard pages neither fail the dump nor vanish.
func TestRestoreGuardRegions(t *testing.T) { roundTrip(t, "guard", nil) }

// TestRestoreDroppable: a MAP_DROPPABLE mapping comes back droppable.
func TestRestoreDroppable(t *testing.T) { roundTrip(t, "droppable", nil) }

// TestRestoreNoVdso: a task that unmapped its vDSO restores without one.
func TestRestoreNoVdso(t *testing.T) {
	roundTrip(t, "novdso", func(pid int) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
		if err != nil || strings.Contains(string(b), "[vdso]") || strings.Contains(string(b), "[vvar") {
			t.Errorf("restored maps (%v):\n%s", err, b)
		}
	})
}

// TestDumpRefusesAIO: an io_setup ring is refused by name, and the task
// runs on untouched.
func TestDumpRefusesAIO(t *testing.T) {
	w, log, dir := gapWorkload(t, "aio")
	o := dumper.Options{}
	o.Pid, o.ImagesDir = w.Pid, filepath.Join(dir, "img")
	_, err := dumper.Dump(o, nil)
	if err == nil || !strings.Contains(err.Error(), "AIO ring") {
		t.Fatalf("dump: %v, want an AIO ring refusal", err)
	}
	if err := unix.Kill(w.Pid, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	if code := w.Wait(t); code != 0 {
		b, _ := os.ReadFile(log)
		t.Fatalf("after the failed dump: exit %d\n%s", code, b)
	}
}

// TestRestoreInRestartSyscall: a thread stopped in nanosleep by one dump
// that left it running is, at the next dump, inside restart_syscall; after
// restore its sleep goes on, without EINTR.
func TestRestoreInRestartSyscall(t *testing.T) {
	w, log, dir := gapWorkload(t, "sleep")
	var imgs string
	for i := 0; ; i++ {
		imgs = filepath.Join(dir, fmt.Sprintf("img%d", i))
		dump(t, w.Pid, imgs, func(o *dumper.Options) { o.LeaveRunning = true })
		if inRestartSyscall(t, imgs) {
			break
		}
		if i == 5 {
			t.Fatal("the sleeper was never dumped inside restart_syscall")
		}
	}
	unix.Kill(w.Pid, unix.SIGKILL)
	w.Reaped(t)
	// CRIU's restore returns to the program with rax as the core image
	// has it: the restart must be applied there (a sleep given
	// -ERESTART_RESTARTBLOCK exits at once).
	d, err := images.Open(imgs, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := criuimg.CheckCRIU(d); err != nil {
		t.Errorf("CheckCRIU: %v", err)
	}
	tree, err := criuimg.Read(d)
	if err != nil {
		t.Fatal(err)
	}
	for _, th := range tree.Root().Threads {
		if th.Regs.Orig_rax != unix.SYS_RESTART_SYSCALL {
			continue
		}
		c, err := images.ReadOne[*criu_core.CoreEntry](d, images.CoreImg(th.Tid))
		if err != nil {
			t.Fatal(err)
		}
		if g := c.GetThreadInfo().GetGpregs(); g.GetAx() != unix.SYS_NANOSLEEP && g.GetAx() != unix.SYS_CLOCK_NANOSLEEP || g.GetIp() != th.Regs.Rip-2 {
			t.Errorf("thread %d inside restart_syscall: core ax %#x ip %#x, want (clock_)nanosleep at %#x", th.Tid, g.GetAx(), g.GetIp(), th.Regs.Rip-2)
		}
	}
	d.Close()
	// In a pid namespace of its own: the dumped TIDs are free there.
	if got := restoreInPidNS(t, nsJob{Imgs: imgs, Log: log}).Last; got != "done sleep" {
		t.Fatalf("last line %q", got)
	}
}

// TestRestartPendingSignalForCRIU: a thread frozen in nanosleep with a
// signal pending (blocked: it stays pending) is written as CRIU's own
// dump writes it, -EINTR in the core, which CRIU's restore hands to the
// program (before, the core kept -ERESTART_RESTARTBLOCK, and CRIU 4.2's
// restore of a program so frozen failed its call with errno 516), while
// godwit's restore, from the frozen registers, lets the sleep go on.
func TestRestartPendingSignalForCRIU(t *testing.T) {
	w, log, dir := gapWorkload(t, "sleep")
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", w.Pid))
	if err != nil {
		t.Fatal(err)
	}
	sleeper := 0
	for _, e := range ents {
		if tid, _ := strconv.Atoi(e.Name()); tid != w.Pid {
			sleeper = tid
		}
	}
	if sleeper == 0 {
		t.Fatal("no sleeper thread")
	}
	// The sleeper blocks every signal: this one stays on its queue.
	if err := unix.Tgkill(w.Pid, sleeper, unix.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	// Dumped inside nanosleep (not between two sleeps).
	var imgs string
	var d *images.Dir
	for i := 0; ; i++ {
		imgs = filepath.Join(dir, fmt.Sprintf("img%d", i))
		dump(t, w.Pid, imgs, func(o *dumper.Options) { o.LeaveRunning = true })
		if d, err = images.Open(imgs, false); err != nil {
			t.Fatal(err)
		}
		tree, err := criuimg.Read(d)
		if err != nil {
			t.Fatal(err)
		}
		if inside := slices.ContainsFunc(tree.Root().Threads, func(th *model.Thread) bool {
			return th.Tid == sleeper && ptrace.Restart(&th.Regs) == ptrace.RestartBlock
		}); inside {
			break
		}
		d.Close()
		if i == 5 {
			t.Fatal("the sleeper was never dumped inside nanosleep")
		}
	}
	unix.Kill(w.Pid, unix.SIGKILL)
	w.Reaped(t)
	if err := criuimg.CheckCRIU(d); err != nil {
		t.Errorf("CheckCRIU: %v", err)
	}
	c, err := images.ReadOne[*criu_core.CoreEntry](d, images.CoreImg(sleeper))
	d.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(c.GetThreadCore().GetSignalsP().GetSignals()) != 1 {
		t.Fatalf("sleeper's core: %d pending signals, want SIGUSR2", len(c.GetThreadCore().GetSignalsP().GetSignals()))
	}
	if g := c.GetThreadInfo().GetGpregs(); int64(g.GetAx()) != -int64(unix.EINTR) {
		t.Errorf("sleeper's core: ax %#x orig_ax %d, want -EINTR", g.GetAx(), g.GetOrigAx())
	}
	if got := restoreInPidNS(t, nsJob{Imgs: imgs, Log: log}).Last; got != "done sleep" {
		t.Fatalf("last line %q", got)
	}
}

// inRestartSyscall reports whether a thread of the dump in imgs sits in
// restart_syscall (interrupted again).
func inRestartSyscall(t *testing.T, imgs string) bool {
	t.Helper()
	d, err := images.Open(imgs, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	tree, err := criuimg.Read(d)
	if err != nil {
		t.Fatal(err)
	}
	for _, th := range tree.Root().Threads {
		if th.Regs.Orig_rax == unix.SYS_RESTART_SYSCALL && int64(th.Regs.Rax) == -516 {
			return true
		}
	}
	return false
}

// killedAfter sends SIGUSR1 to the restored task and checks that it dies
// by signal sig with want in its log.
func killedAfter(t *testing.T, r *Restorer, log string, sig unix.Signal, want string) {
	t.Helper()
	if err := unix.Kill(r.PID(), unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	code, err := r.Wait()
	b, _ := os.ReadFile(log)
	if err != nil || code != 128+int(sig) {
		t.Fatalf("restored %d: exit %d, %v, want killed by %v; log:\n%s", r.PID(), code, err, sig, b)
	}
	if !strings.Contains(string(b), want) || strings.Contains(string(b), "BAD") {
		t.Fatalf("log, want %q:\n%s", want, b)
	}
}

// TestRestoreSeccomp: filters shared by every thread (TSYNC) and one of
// a thread's own come back; the shared ones are still one object (a
// later TSYNC succeeds) and a forbidden call still kills the process.
func TestRestoreSeccomp(t *testing.T) {
	w, log, dir := gapWorkload(t, "seccomp")
	imgs := filepath.Join(dir, "img")
	dump(t, w.Pid, imgs, nil)
	w.Reaped(t)
	r := restore(t, imgs, nil)
	st := fmt.Sprintf("/proc/%d/status", r.PID())
	if b, err := os.ReadFile(st); err != nil || !strings.Contains(string(b), "Seccomp:\t2") {
		t.Fatalf("restored %s (%v):\n%s", st, err, b)
	}
	killedAfter(t, r, log, unix.SIGSYS, "done seccomp")
}

// TestRestoreSeccompStrict: a thread in strict mode stays in it: its
// first call outside read/write/exit ends it (else it exits the process
// with 3).
func TestRestoreSeccompStrict(t *testing.T) {
	w, log, dir := gapWorkload(t, "strict")
	imgs := filepath.Join(dir, "img")
	dump(t, w.Pid, imgs, nil)
	w.Reaped(t)
	r := restore(t, imgs, nil)
	if got := finish(t, r, log); got != "done strict" {
		t.Fatalf("last line %q", got)
	}
	if b, _ := os.ReadFile(log); !strings.Contains(string(b), "strict read") {
		t.Fatalf("the strict thread read nothing:\n%s", b)
	}
}

// TestRestoreAMX: the godwit image's AMX state (here written into a
// real dump, tile data in use in the leader) is restored on a CPU with
// AMX, and refused by name, leaving no task behind, on one without.
func TestRestoreAMX(t *testing.T) {
	w, _, dir := gapWorkload(t, "membarrier")
	imgs := filepath.Join(dir, "img")
	dump(t, w.Pid, imgs, nil)
	w.Reaped(t)
	name := filepath.Join(imgs, criuimg.GodwitTaskImg(w.Pid))
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	tiles := fmt.Sprintf(`,"xcomp_perm":%d,"threads":[{"tid":%d,"tilecfg":%q,"tiledata":%q}]}`,
		1<<18|1<<17|3, w.Pid, base64.StdEncoding.EncodeToString(make([]byte, 64)), base64.StdEncoding.EncodeToString(make([]byte, 8192)))
	b = append(bytes.TrimSuffix(bytes.TrimSpace(b), []byte("}")), tiles...)
	if err := os.WriteFile(name, b, 0o600); err != nil {
		t.Fatal(err)
	}
	o := Options{}
	o.ImagesDir = imgs
	r, err := Restore(o, nil)
	if xstate.HaveAMX() {
		if err != nil {
			t.Fatalf("restore on a CPU with AMX: %v", err)
		}
		unix.Kill(r.PID(), unix.SIGKILL)
		r.Wait()
		return
	}
	if err == nil {
		unix.Kill(r.PID(), unix.SIGKILL)
		r.Wait()
		t.Fatal("tile state restored on a CPU without AMX")
	}
	if !strings.Contains(err.Error(), "ARCH_REQ_XCOMP_PERM") {
		t.Fatalf("restore: %v, want the AMX permission named", err)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", w.Pid)); err == nil {
		t.Fatalf("pid %d left behind by the failed restore", w.Pid)
	}
}

// TestRestoreHugetlb: private anonymous hugetlb memory comes back in huge
// pages of the same size, with its contents, while huge pages can be had;
// without them the restore fails naming them. The test lets the kernel
// make two surplus 2 MiB pages (vm.nr_overcommit_hugepages) and puts the
// setting back.
func TestRestoreHugetlb(t *testing.T) {
	const knob = "/proc/sys/vm/nr_overcommit_hugepages"
	b, err := os.ReadFile(knob)
	if err != nil {
		t.Fatal(err)
	}
	old := strings.TrimSpace(string(b))
	var n int
	fmt.Sscan(old, &n)
	setKnob := func(v int) {
		if err := os.WriteFile(knob, []byte(fmt.Sprint(v)), 0); err != nil {
			t.Fatal(err)
		}
	}
	setKnob(n + 2)
	t.Cleanup(func() { os.WriteFile(knob, []byte(old), 0) })
	w, log, dir := gapWorkload(t, "hugetlb")
	imgs := filepath.Join(dir, "img")
	dump(t, w.Pid, imgs, nil)
	w.Reaped(t)
	r := restore(t, imgs, nil)
	if got := finish(t, r, log); got != "done hugetlb" {
		t.Fatalf("last line %q", got)
	}
	// No huge page to be had: refused by name, nothing left behind.
	nr, _ := os.ReadFile("/proc/sys/vm/nr_hugepages")
	if n != 0 || strings.TrimSpace(string(nr)) != "0" {
		return // huge pages reserved on this host: the refusal cannot be provoked
	}
	setKnob(0)
	o := Options{}
	o.ImagesDir = imgs
	if r, err := Restore(o, nil); err == nil {
		unix.Kill(r.PID(), unix.SIGKILL)
		r.Wait()
		t.Fatal("restored without huge pages")
	} else if !strings.Contains(err.Error(), "huge pages") {
		t.Fatalf("restore without huge pages: %v", err)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", w.Pid)); err == nil {
		t.Fatalf("pid %d left behind by the failed restore", w.Pid)
	}
}
