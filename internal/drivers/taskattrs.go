package drivers

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"godwit/internal/abi/linux"
	"godwit/internal/inject"
	"godwit/internal/model"
	"godwit/internal/procfs"
)

// ioprioWhoProcess is IOPRIO_WHO_PROCESS (include/uapi/linux/ioprio.h;
// x/sys/unix lacks it): ioprio_get/set of one thread, by TID.
const ioprioWhoProcess = 1

// cpuSetSize is the CPUs a unix.CPUSet holds (glibc's CPU_SETSIZE).
const cpuSetSize = len(unix.CPUSet{}) * 64

// defaultTimerSlack is the kernel's initial timer slack, which a thread
// keeps unless it or an ancestor set another.
const defaultTimerSlack = linux.InitTimerSlack

// defaultCoredumpFilter is MMF_DUMP_FILTER_DEFAULT (include/linux/sched/
// coredump.h, without CONFIG_CORE_DUMP_DEFAULT_ELF_HEADERS): what a task
// has unless it, an ancestor or the coredump_filter boot option set
// another.
const defaultCoredumpFilter = 0x33

// taskAttrsDriver dumps and restores per-thread CPU affinity, timer
// slack, the TSC and machine-check policies and the I/O priority, and
// the process's coredump_filter: state CRIU's images have no field for,
// which a restore would otherwise take from godwit (kept in the godwit
// image). Affinity, slack and I/O priority are read and set from outside
// (sched_*affinity, /proc/TID/timerslack_ns, ioprio_*), coredump_filter
// through /proc; the TSC and MCE policies only the thread can tell or
// set, with injected prctls.
type taskAttrsDriver struct{}

func (taskAttrsDriver) Name() string { return "taskattrs" }

// After the thread driver, which sets the scheduling policy: a switch
// to or from a real-time policy resets the timer slack.
func (taskAttrsDriver) After() []string { return []string{PhaseThreads, "thread"} }

// Collect reads coredump_filter.
func (taskAttrsDriver) Collect(d *Dump) error {
	b, err := os.ReadFile(procfs.Path(d.Pid, "coredump_filter"))
	if err != nil {
		if os.IsNotExist(err) {
			return nil // a kernel without core dumps
		}
		return fmt.Errorf("coredump_filter: %w", err)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 16, 32)
	if err != nil {
		return fmt.Errorf("coredump_filter %q: %w", b, err)
	}
	if v != defaultCoredumpFilter {
		f := uint32(v)
		d.Task.Attrs.CoredumpFilter = &f
	}
	return nil
}

// CollectThread reads the thread's affinity, timer slack and I/O
// priority from outside.
func (taskAttrsDriver) CollectThread(d *Dump, th *model.Thread) error {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(th.Tid, &set); err != nil {
		return fmt.Errorf("thread %d: sched_getaffinity: %w", th.Tid, err)
	}
	all, err := onlineCPUs()
	if err != nil {
		return err
	}
	if set != all {
		th.Attrs.Affinity = cpuWords(&set)
	}
	b, err := os.ReadFile(procfs.Path(th.Tid, "timerslack_ns"))
	if err != nil {
		return fmt.Errorf("thread %d: timer slack: %w", th.Tid, err)
	}
	slack, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return fmt.Errorf("thread %d: timer slack %q: %w", th.Tid, b, err)
	}
	if slack != defaultTimerSlack {
		// 0 for a real-time thread: its policy's, restored as such.
		th.Attrs.TimerSlack = slack
	}
	prio, _, e := unix.Syscall(unix.SYS_IOPRIO_GET, ioprioWhoProcess, uintptr(th.Tid), 0)
	if e != 0 {
		return fmt.Errorf("thread %d: ioprio_get: %w", th.Tid, e)
	}
	th.Attrs.Ioprio = uint32(prio)
	return nil
}

// CollectThreadInjected reads the thread's TSC and machine-check
// policies, which only the thread can tell.
func (k taskAttrsDriver) CollectThreadInjected(d *Dump, s *inject.Session, th *model.Thread) error {
	p, _ := k.PlanThreadInjected(d, s, th)
	if err := runPlanned(s, p); err != nil {
		return fmt.Errorf("thread %d: %w", th.Tid, err)
	}
	return nil
}

// PlanThreadInjected reads PR_GET_TSC and PR_MCE_KILL_GET.
func (taskAttrsDriver) PlanThreadInjected(d *Dump, s *inject.Session, th *model.Thread) (Planned, bool) {
	return Planned{Calls: []inject.Call{
		inject.C("prctl(PR_GET_TSC)", unix.SYS_PRCTL, unix.PR_GET_TSC, s.Scratch()+scratchTSC),
		inject.C("prctl(PR_MCE_KILL_GET)", unix.SYS_PRCTL, unix.PR_MCE_KILL_GET),
	}, Done: func(got []uint64, scratch []byte) error {
		switch got[1] {
		case unix.PR_MCE_KILL_DEFAULT:
		case unix.PR_MCE_KILL_EARLY, unix.PR_MCE_KILL_LATE:
			th.Attrs.MCEKill = uint32(got[1]) + 1
		default:
			return fmt.Errorf("machine-check kill policy %d unknown to godwit: cannot be restored", got[1])
		}
		switch v := le.Uint32(scratch[scratchTSC:]); v {
		case unix.PR_TSC_ENABLE:
		case unix.PR_TSC_SIGSEGV:
			th.Attrs.TSCSigsegv = true
		default:
			return fmt.Errorf("TSC mode %d unknown to godwit: cannot be restored", v)
		}
		return nil
	}}, true
}

// Restore writes coredump_filter, always: a restored task would
// otherwise keep godwit's, inherited at fork.
func (taskAttrsDriver) Restore(r *Restore, s *inject.Session) error {
	f := uint32(defaultCoredumpFilter)
	if p := r.Task.Attrs.CoredumpFilter; p != nil {
		f = *p
	}
	want := fmt.Sprintf("%#x", f)
	if err := os.WriteFile(procfs.Path(r.Task.Pid, "coredump_filter"), []byte(want), 0); err != nil {
		if os.IsNotExist(err) && r.Task.Attrs.CoredumpFilter == nil {
			return nil // a kernel without core dumps, as where it was dumped
		}
		return fmt.Errorf("coredump_filter %s: %w", want, err)
	}
	return nil
}

// RestoreThread sets each attribute explicitly, the defaults too: a new
// thread has its forker's (godwit's, or the restored leader's while it
// still had godwit's), not the kernel's defaults.
func (taskAttrsDriver) RestoreThread(r *Restore, s *inject.Session, th *model.Thread) error {
	a := &th.Attrs
	if a.Affinity != nil {
		if err := setAffinity(th.Tid, a.Affinity); err != nil {
			return err
		}
	} else if err := setDefaultAffinity(th.Tid); err != nil {
		return err
	}
	// 0 in the image is the default slack, or a real-time thread's 0:
	// for one of those (its policy is set already) the kernel writes 0
	// whatever is asked.
	slack := a.TimerSlack
	if slack == 0 {
		slack = defaultTimerSlack
	}
	v := strconv.FormatUint(slack, 10)
	if err := os.WriteFile(procfs.Path(th.Tid, "timerslack_ns"), []byte(v), 0); err != nil {
		return fmt.Errorf("thread %d: timer slack %s: %w", th.Tid, v, err)
	}
	// 0 is IOPRIO_CLASS_NONE: the priority derived from the nice value.
	if _, _, e := unix.Syscall(unix.SYS_IOPRIO_SET, ioprioWhoProcess, uintptr(th.Tid), uintptr(a.Ioprio)); e != 0 {
		return fmt.Errorf("thread %d: ioprio_set(%#x): %w", th.Tid, a.Ioprio, e)
	}
	tsc := uint64(unix.PR_TSC_ENABLE)
	if a.TSCSigsegv {
		tsc = unix.PR_TSC_SIGSEGV
	}
	s.Later("prctl(PR_SET_TSC)", unix.SYS_PRCTL, unix.PR_SET_TSC, tsc)
	if a.MCEKill != 0 {
		s.Later("prctl(PR_MCE_KILL)", unix.SYS_PRCTL, unix.PR_MCE_KILL, unix.PR_MCE_KILL_SET, uint64(a.MCEKill-1))
	} else {
		s.Later("prctl(PR_MCE_KILL_CLEAR)", unix.SYS_PRCTL, unix.PR_MCE_KILL, unix.PR_MCE_KILL_CLEAR, 0)
	}
	return nil
}

// setDefaultAffinity gives a thread that never chose its CPUs every
// online CPU (the kernel narrows them to its cpuset, as it would have for
// the thread).
func setDefaultAffinity(tid int) error {
	all, err := onlineCPUs()
	if err != nil {
		return err
	}
	if err := unix.SchedSetaffinity(tid, &all); err != nil {
		return fmt.Errorf("thread %d: CPU affinity %s: %w", tid, cpuList(&all), err)
	}
	return nil
}

// setAffinity sets the thread's mask and checks the kernel kept it whole:
// it narrows a mask to the CPUs of the thread's cpuset and to those
// online, and the thread must not run on fewer CPUs than it chose
// without the restore saying so.
func setAffinity(tid int, words []uint64) error {
	var set unix.CPUSet
	if len(words)*64 > cpuSetSize {
		return fmt.Errorf("thread %d: CPU affinity of %d CPUs: more than godwit handles (%d)", tid, len(words)*64, cpuSetSize)
	}
	for i, w := range words {
		for b := range 64 {
			if w&(1<<b) != 0 {
				set.Set(i*64 + b)
			}
		}
	}
	if err := unix.SchedSetaffinity(tid, &set); err != nil {
		return fmt.Errorf("thread %d: CPU affinity %s: %w", tid, cpuList(&set), err)
	}
	var got unix.CPUSet
	if err := unix.SchedGetaffinity(tid, &got); err != nil {
		return fmt.Errorf("thread %d: sched_getaffinity: %w", tid, err)
	}
	if got != set {
		return fmt.Errorf("thread %d: CPU affinity %s cannot be restored here: the kernel gives %s", tid, cpuList(&set), cpuList(&got))
	}
	return nil
}

var online struct {
	once sync.Once
	set  unix.CPUSet
	err  error
}

// onlineCPUs is the set of CPUs online, which a thread's affinity holds
// when it never chose one (sched_getaffinity shows the active ones).
func onlineCPUs() (unix.CPUSet, error) {
	online.once.Do(func() {
		b, err := os.ReadFile("/sys/devices/system/cpu/online")
		if err != nil {
			online.err = fmt.Errorf("online CPUs: %w", err)
			return
		}
		online.set, online.err = parseCPUList(strings.TrimSpace(string(b)))
	})
	return online.set, online.err
}

// parseCPUList parses a kernel CPU list ("0-3,5").
func parseCPUList(s string) (unix.CPUSet, error) {
	var set unix.CPUSet
	if s == "" {
		return set, nil
	}
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		b := a
		if err == nil && isRange {
			b, err = strconv.Atoi(hi)
		}
		if err != nil || a < 0 || b < a || b >= cpuSetSize {
			return set, fmt.Errorf("CPU list %q: bad %q", s, part)
		}
		for c := a; c <= b; c++ {
			set.Set(c)
		}
	}
	return set, nil
}

// cpuWords is set as 64-bit words, without trailing zero words.
func cpuWords(set *unix.CPUSet) []uint64 {
	var w []uint64
	for c := range cpuSetSize {
		if set.IsSet(c) {
			for len(w) <= c/64 {
				w = append(w, 0)
			}
			w[c/64] |= 1 << (c % 64)
		}
	}
	if w == nil {
		w = []uint64{} // no CPU at all: kept apart from "every CPU"
	}
	return w
}

// cpuList names set's CPUs as the kernel lists them.
func cpuList(set *unix.CPUSet) string {
	var parts []string
	for c := 0; c < cpuSetSize; c++ {
		if !set.IsSet(c) {
			continue
		}
		e := c
		for e+1 < cpuSetSize && set.IsSet(e+1) {
			e++
		}
		if e == c {
			parts = append(parts, strconv.Itoa(c))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", c, e))
		}
		c = e
	}
	if parts == nil {
		return "none"
	}
	return strings.Join(parts, ",")
}

// mdweDriver dumps and restores PR_SET_MDWE (memory-deny-write-execute),
// a security setting of the mm that cannot be unset once set. It is set
// last, after every mapping is laid out at its protection and before the
// restore's scratch window goes (unmapping it is allowed): the restore's
// own executable mappings come before.
type mdweDriver struct{}

func (mdweDriver) Name() string { return "mdwe" }
func (mdweDriver) After() []string {
	return []string{PhaseMM, "memory", "guards", "rlimits", "seccomp", "creds", "signals", "dumpable"}
}

// CollectInjected reads it; a kernel without MDWE (EINVAL) has none.
func (mdweDriver) CollectInjected(d *Dump, s *inject.Session) error {
	v, err := s.Call("prctl(PR_GET_MDWE)", unix.SYS_PRCTL, unix.PR_GET_MDWE, 0, 0, 0, 0)
	if err != nil {
		if e, ok := inject.Errno(err); ok && e == unix.EINVAL {
			return nil
		}
		return err
	}
	return setMDWE(d, v)
}

// PlanInjected reads PR_GET_MDWE; a kernel without it fails the call,
// and CollectInjected tells that from an error.
func (mdweDriver) PlanInjected(d *Dump, s *inject.Session) (Planned, bool) {
	return Planned{Calls: []inject.Call{inject.C("prctl(PR_GET_MDWE)", unix.SYS_PRCTL, unix.PR_GET_MDWE, 0, 0, 0, 0)},
		Done: func(got []uint64, _ []byte) error { return setMDWE(d, got[0]) }}, true
}

// setMDWE records the memory-deny-write-execute flags PR_GET_MDWE
// returned.
func setMDWE(d *Dump, v uint64) error {
	if v&^(unix.PR_MDWE_REFUSE_EXEC_GAIN|unix.PR_MDWE_NO_INHERIT) != 0 {
		return fmt.Errorf("memory-deny-write-execute flags %#x unknown to godwit: cannot be restored", v)
	}
	d.Task.Attrs.MDWE = uint32(v)
	return nil
}

// Restore sets it.
func (mdweDriver) Restore(r *Restore, s *inject.Session) error {
	v := r.Task.Attrs.MDWE
	if v == 0 {
		return nil
	}
	if _, err := s.Call("prctl(PR_SET_MDWE)", unix.SYS_PRCTL, unix.PR_SET_MDWE, uint64(v), 0, 0, 0); err != nil {
		return fmt.Errorf("memory-deny-write-execute %#x: %w", v, err)
	}
	return nil
}
