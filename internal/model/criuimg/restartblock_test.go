package criuimg

import (
	"testing"

	core_x86 "github.com/checkpoint-restore/go-criu/v8/crit/images/core-x86"
	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"golang.org/x/sys/unix"

	"godwit/internal/images"
	"godwit/internal/model"
	"godwit/internal/ptrace"
)

// readCore reads the one core image of a fixture directory.
func readCore(t *testing.T, dir string, pid int) *criu_core.CoreEntry {
	t.Helper()
	d, err := images.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	c, err := images.ReadOne[*criu_core.CoreEntry](d, images.CoreImg(pid))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRestartSyscallCoreForCRIU: `sleep 1000` frozen a second time in its
// clock_nanosleep (so inside restart_syscall, as every final dump after a
// pre-dump finds it). Fixtures: CRIU 4.2's own dump of such a sleep
// (stopped and continued first), and the core godwit wrote before this
// fix at the end of a pre-dump chain, which CRIU restored "successfully"
// and whose sleep then exited at once: CRIU's restore returns to user
// space with rax as written, and godwit left -ERESTART_RESTARTBLOCK there.
// What matters to CRIU is rax (and rip): never an -ERESTART* value.
func TestRestartSyscallCoreForCRIU(t *testing.T) {
	criu := readCore(t, "testdata/restartblock/criu42", 30557)
	cg := criu.GetThreadInfo().GetGpregs()
	if cg.GetOrigAx() != unix.SYS_RESTART_SYSCALL || int64(cg.GetAx()) != -int64(unix.EINTR) {
		t.Fatalf("CRIU's fixture: orig_ax %d ax %#x, want restart_syscall with -EINTR", cg.GetOrigAx(), cg.GetAx())
	}
	if unappliedRestart(criu) {
		t.Errorf("CRIU's own core flagged as an unapplied restart")
	}

	old := readCore(t, "testdata/restartblock/godwit-s6", 24313)
	og := old.GetThreadInfo().GetGpregs()
	if og.GetOrigAx() != unix.SYS_RESTART_SYSCALL || int64(og.GetAx()) != -ptrace.ERESTART_RESTARTBLOCK {
		t.Fatalf("old godwit fixture: orig_ax %d ax %#x, want restart_syscall with -ERESTART_RESTARTBLOCK", og.GetOrigAx(), og.GetAx())
	}
	if !unappliedRestart(old) {
		t.Errorf("the core CRIU restored into an exiting sleep passes the check")
	}

	// The same frozen thread written now: the dump read the call
	// (clock_nanosleep) from the code before rip.
	frozen := ptraceRegs(og)
	th := &model.Thread{Tid: 24313, Regs: frozen, RestartNr: unix.SYS_CLOCK_NANOSLEEP}
	g, applied := gpregs(&th.Regs, false, th.RestartNr)
	c := &criu_core.CoreEntry{ThreadInfo: &core_x86.ThreadInfoX86{Gpregs: g}}
	if !applied || g.GetAx() != unix.SYS_CLOCK_NANOSLEEP || g.GetIp() != og.GetIp()-2 || g.GetOrigAx() != unix.SYS_RESTART_SYSCALL {
		t.Fatalf("written: applied %v ax %#x ip %#x orig_ax %d; want clock_nanosleep at ip %#x", applied, g.GetAx(), g.GetIp(), g.GetOrigAx(), og.GetIp()-2)
	}
	// The call's arguments stay where the syscall instruction reads them.
	if g.GetDi() != og.GetDi() || g.GetSi() != og.GetSi() || g.GetDx() != og.GetDx() || g.GetR10() != og.GetR10() {
		t.Errorf("arguments changed: %v, was %v", g, og)
	}
	if unappliedRestart(c) {
		t.Errorf("the new core is flagged as an unapplied restart")
	}
	// godwit's restore gets the frozen registers back from RestartImg.
	back := *th
	back.Regs = ptraceRegs(g)
	back.RestartNr = 0
	tr := &model.Tree{Tasks: []*model.Task{{Pid: 24313, Threads: []*model.Thread{&back}}}}
	dir := t.TempDir()
	d, err := images.Open(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := writeRestart(d, []frozenRegs{{tid: 24313, rax: frozen.Rax, rip: frozen.Rip}}); err != nil {
		t.Fatal(err)
	}
	if err := readRestart(d, tr); err != nil {
		t.Fatal(err)
	}
	if back.Regs != frozen || back.RestartNr != unix.SYS_CLOCK_NANOSLEEP {
		t.Errorf("read back: regs %+v nr %d, want the frozen ones and clock_nanosleep", back.Regs, back.RestartNr)
	}
}
