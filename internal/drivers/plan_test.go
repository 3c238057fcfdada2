package drivers

import (
	"errors"
	"os"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"

	"godwit/internal/inject"
	"godwit/internal/model"
	"godwit/internal/ptrace"
)

// planDriver is a driver for TestCollectAllInjected: planned calls (or
// none: not a planner), what its Done got, whether its fallback ran.
type planDriver struct {
	name     string
	calls    []inject.Call
	got      []uint64
	done     bool
	fallback bool
}

func (p *planDriver) Name() string    { return p.name }
func (p *planDriver) After() []string { return nil }
func (p *planDriver) CollectInjected(d *Dump, s *inject.Session) error {
	p.fallback = true
	return nil
}

type plannedDriver struct{ *planDriver }

func (p plannedDriver) PlanInjected(d *Dump, s *inject.Session) (Planned, bool) {
	return Planned{Calls: p.calls, Done: func(res []uint64, scratch []byte) error {
		if len(scratch) != ScratchDrivers {
			return errors.New("scratch not the drivers' part")
		}
		p.got, p.done = append([]uint64(nil), res...), true
		return nil
	}}, true
}

// TestCollectAllInjected runs the planned calls of several drivers in
// one stop, and where one fails, its driver's own collection instead,
// the plans after it in the next batch, the drivers that do not plan
// after them.
func TestCollectAllInjected(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (ptrace of a child)")
	}
	cmd := exec.Command("sleep", "100")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	tr := ptrace.New()
	defer tr.Close()
	if _, err := tr.FreezeProcess(pid, 0); err != nil {
		t.Fatal(err)
	}
	defer tr.Do(func() error { return tr.KillProcess(pid) })
	ps, err := tr.BeginInjection(pid)
	if err != nil {
		t.Fatal(err)
	}
	const size = 16384
	scratch, err := ps.Syscall(unix.SYS_MMAP, 0, size, unix.PROT_READ|unix.PROT_WRITE|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		ps.End()
		t.Fatal(err)
	}
	if err := ptrace.WriteMem(pid, scratch+size-4096, ptrace.BatchCode); err != nil {
		ps.End()
		t.Fatal(err)
	}
	s := inject.Wrap(ps, pid, scratch, size)
	s.SetBatch(scratch+size-4096, 8192)
	getpid := inject.C("getpid", unix.SYS_GETPID)
	a := &planDriver{name: "a", calls: []inject.Call{getpid, getpid}}
	bad := &planDriver{name: "bad", calls: []inject.Call{getpid, inject.C("close(-1)", unix.SYS_CLOSE, ^uint64(0))}}
	c := &planDriver{name: "c", calls: []inject.Call{inject.C("getppid", unix.SYS_GETPPID)}}
	plain := &planDriver{name: "plain"}
	_, before, _ := tr.InjectionStats()
	d := &Dump{Pid: pid, Task: &model.Task{Pid: pid}}
	err = CollectAllInjected([]Driver{plannedDriver{a}, plain, plannedDriver{bad}, plannedDriver{c}}, d, s, &model.Thread{Tid: pid})
	_, after, _ := tr.InjectionStats()
	if eerr := s.End(nil); eerr != nil {
		t.Fatal(eerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	if !a.done || a.fallback || len(a.got) != 2 || int(a.got[0]) != pid || int(a.got[1]) != pid {
		t.Errorf("a: done %v fallback %v got %v, want getpid twice = %d", a.done, a.fallback, a.got, pid)
	}
	if bad.done || !bad.fallback {
		t.Errorf("the failing plan: done %v fallback %v, want its own collection only", bad.done, bad.fallback)
	}
	if !c.done || c.fallback || len(c.got) != 1 || int(c.got[0]) != os.Getpid() {
		t.Errorf("c: done %v fallback %v got %v, want getppid = %d", c.done, c.fallback, c.got, os.Getpid())
	}
	if !plain.fallback {
		t.Error("the driver that does not plan did not collect")
	}
	// Two batches (the second after the failure), one stop each.
	if n := after - before; n != 2 {
		t.Errorf("%d stops, want 2", n)
	}
}
