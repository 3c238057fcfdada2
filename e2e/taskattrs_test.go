package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestRestoreTaskAttrs dumps workloads/taskattrs.c, whose two threads
// each set their own CPU affinity, timer slack, TSC and machine-check
// policies and I/O priority, and which set coredump_filter and
// memory-deny-write-execute, and restores it through the binary: the
// restored program finds every value as it set it (MDWE and the TSC by
// their effect too).
func TestRestoreTaskAttrs(t *testing.T) {
	needRoot(t)
	w := startWorkload(t, cWorkload(t, "taskattrs"))
	dir := w.dump(t)
	w.reapKilled(t)
	r := restore(t, w, dir)
	code := r.finish(t, w)
	log := readFile(w.log)
	if code != 0 || !strings.Contains(log, "done bad=0") {
		t.Fatalf("restored program exited %d\n%s", code, w.tail())
	}
}

// TestRestoreTaskAttrsNotInherited dumps a two-thread program with every
// attribute at its default and restores it with `godwit restore -d` run
// under taskset, ionice, nice, chrt -b and an ambient capability from a shell with another timer
// slack, coredump_filter and umask: the restored threads must have the
// dumped values, not the restoring godwit's (which a new task inherits).
func TestRestoreTaskAttrsNotInherited(t *testing.T) {
	needRoot(t)
	if cpus, _ := os.ReadFile("/sys/devices/system/cpu/online"); strings.TrimSpace(string(cpus)) == "0" {
		t.Fatal("needs two online CPUs: taskset -c 0 must narrow godwit's affinity")
	}
	// Inheritable CAP_NET_RAW: an ambient one godwit has stays, unless
	// the restore clears the ambient set.
	w := startWorkload(t, "setpriv", "--inh-caps", "+net_raw", workloads["counter"], "-t", "2")
	defBefore := defaultSlacks(t, w.pid)
	before := taskAttrSnapshot(t, w.pid)
	dir := w.dump(t)
	w.reapKilled(t)
	sh := "echo 123456 > /proc/$$/timerslack_ns && echo 0x7f > /proc/self/coredump_filter && umask 077 && " +
		"exec setpriv --inh-caps +net_raw --ambient-caps +net_raw nice -n 7 chrt -b 0 taskset -c 0 ionice -c3 \"$0\" restore -d -D \"$1\" -o restore.log"
	out, err := exec.Command("sh", "-c", sh, godwitBin, dir).CombinedOutput()
	if err != nil {
		t.Fatalf("restore: %v: %s\n%s", err, out, readFile(filepath.Join(dir, "restore.log")))
	}
	waitFor(t, "the restored program to tick", func() bool { return alive(w.pid) && tracerOf(w.pid) == 0 })
	after := taskAttrSnapshot(t, w.pid)
	if !reflect.DeepEqual(before, after) {
		t.Errorf("restored attributes differ from the dumped ones:\ndumped   %v\nrestored %v", before, after)
	}
	if defAfter := defaultSlacks(t, w.pid); !reflect.DeepEqual(defBefore, defAfter) {
		t.Errorf("restored default timer slacks %v, dumped %v", defAfter, defBefore)
	}
}

// defaultSlacks is each thread's default timer slack, which the kernel
// copies from the forking thread and which writing 0 to timerslack_ns
// sets (and shows). It sets the threads' slack to it.
func defaultSlacks(t *testing.T, pid int) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		p := "/proc/" + e.Name() + "/timerslack_ns"
		if err := os.WriteFile(p, []byte("0"), 0); err != nil {
			t.Fatal(err)
		}
		out = append(out, strings.TrimSpace(readFile(p)))
	}
	return out
}

// taskAttrSnapshot is what each thread of pid has of the attributes a
// new task inherits from its forker, by thread (0 for the leader, then
// in TID order), and the process's.
func taskAttrSnapshot(t *testing.T, pid int) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil {
		t.Fatal(err)
	}
	var tids []int
	for _, e := range ents {
		n, _ := strconv.Atoi(e.Name())
		tids = append(tids, n)
	}
	sort.Ints(tids)
	p := "/proc/" + strconv.Itoa(pid) + "/"
	snap := []string{"coredump_filter=" + strings.TrimSpace(readFile(p+"coredump_filter")),
		"oom_score_adj=" + strings.TrimSpace(readFile(p+"oom_score_adj")),
		"personality=" + strings.TrimSpace(readFile(p+"personality"))}
	for i, tid := range tids {
		tp := p + "task/" + strconv.Itoa(tid) + "/"
		var fs []string
		for _, l := range strings.Split(readFile(tp+"status"), "\n") {
			k, v, _ := strings.Cut(l, ":")
			switch k {
			case "Cpus_allowed_list", "Umask", "NoNewPrivs", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "Seccomp":
				fs = append(fs, k+"="+strings.TrimSpace(v))
			}
		}
		st := readFile(tp + "stat")
		f := strings.Fields(st[strings.LastIndexByte(st, ')')+2:])
		// Fields from state (3rd of stat(5)): nice is the 19th, policy the 41st.
		fs = append(fs, "nice="+f[19-3], "policy="+f[41-3])
		fs = append(fs, "timerslack="+strings.TrimSpace(readFile("/proc/"+strconv.Itoa(tid)+"/timerslack_ns")))
		prio, _, e := syscall.Syscall(syscall.SYS_IOPRIO_GET, 1, uintptr(tid), 0)
		if e != 0 {
			t.Fatalf("ioprio_get %d: %v", tid, e)
		}
		fs = append(fs, "ioprio="+strconv.Itoa(int(prio)))
		snap = append(snap, fmt.Sprintf("thread %d: %s", i, strings.Join(fs, " ")))
	}
	return snap
}

// TestRestoreRefusesInheritedNoNewPrivs restores a program dumped without
// no_new_privs from a godwit that has it (inherited by every task it
// makes, and never unset): the restore must fail naming it.
func TestRestoreRefusesInheritedNoNewPrivs(t *testing.T) {
	needRoot(t)
	w := startC(t, false)
	dir := w.dump(t)
	w.reapKilled(t)
	out, err := exec.Command("setpriv", "--no-new-privs", godwitBin, "restore", "-d", "-D", dir, "-o", "restore.log").CombinedOutput()
	if err == nil {
		killAndForget(w.pid)
		t.Fatalf("restore under no_new_privs of a task without it exited 0: %s", out)
	}
	if !strings.Contains(string(out), "no_new_privs") {
		t.Fatalf("the error does not name no_new_privs: %s", out)
	}
	if pidExists(w.pid) {
		t.Fatalf("a failed restore left pid %d", w.pid)
	}
}
