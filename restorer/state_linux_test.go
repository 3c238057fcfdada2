package restorer

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/dumper"
	"godwit/internal/procfs"
	"godwit/internal/testutil"
)

// procState is what /proc shows of a stopped task, as comparable lines.
func procState(t tb, pid int) map[string]string {
	t.Helper()
	p := fmt.Sprintf("/proc/%d/", pid)
	out := map[string]string{}
	read := func(name string) string {
		b, err := os.ReadFile(p + name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return string(b)
	}
	link := func(name string) string {
		s, err := os.Readlink(p + name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return s
	}
	out["maps"] = normalMaps(t, pid)
	for _, f := range []string{"limits", "timers", "personality", "cmdline", "environ", "auxv", "comm"} {
		out[f] = read(f)
	}
	for _, l := range []string{"cwd", "root", "exe"} {
		out[l] = link(l)
	}
	st := strings.Fields(read("stat"))
	out["stat mm"] = strings.Join(append(st[25:28], st[44:51]...), " ")
	fds, _ := os.ReadDir(p + "fd")
	for _, e := range fds {
		info := read("fdinfo/" + e.Name())
		var keep []string
		for _, l := range strings.Split(info, "\n") {
			if strings.HasPrefix(l, "pos:") || strings.HasPrefix(l, "flags:") {
				keep = append(keep, l)
			}
		}
		out["fd "+e.Name()] = link("fd/"+e.Name()) + " " + strings.Join(keep, " ")
	}
	tasks, _ := os.ReadDir(p + "task")
	for _, e := range tasks {
		s, err := procfs.ReadStatus(atoi(e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		for k := range s.Raw {
			switch k {
			case "SigBlk":
				// The original, left stopped by dump -s, may take a
				// SIGALRM of its 50 ms itimer as it is detached and
				// stop inside the handler, which blocks SIGALRM
				// there: the mask the dump saved is the one before.
				// The itimer's restore is checked by the program.
				var m uint64
				fmt.Sscanf(s.Raw[k], "%x", &m)
				keys = append(keys, fmt.Sprintf("SigBlk=%016x (SIGALRM ignored)", m&^(1<<(unix.SIGALRM-1))))
			case "SigPnd", "ShdPnd":
				// The itimer goes on firing into both stopped tasks: a
				// SIGALRM is pending or not depending on when each is
				// read. The program checks its alarms itself.
				var m uint64
				fmt.Sscanf(s.Raw[k], "%x", &m)
				keys = append(keys, fmt.Sprintf("%s=%016x (SIGALRM ignored)", k, m&^(1<<(unix.SIGALRM-1))))
			case "Name", "Umask", "SigIgn", "SigCgt", "CapInh", "CapPrm",
				"CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Uid", "Gid", "Groups", "Threads", "Seccomp":
				keys = append(keys, k+"="+s.Raw[k])
			}
		}
		ts := strings.Fields(read("task/" + e.Name() + "/stat"))
		keys = append(keys, "nice="+ts[18], "policy="+ts[40], "rtprio="+ts[39])
		sort.Strings(keys)
		out["task "+e.Name()] = strings.Join(keys, " ")
	}
	return out
}

func atoi(s string) int {
	var n int
	fmt.Sscan(s, &n)
	return n
}

// waitStopped waits for pid to be in a group stop, untraced.
func waitStopped(t tb, pid int) {
	t.Helper()
	for i := 0; ; i++ {
		st, err := procfs.ReadStatus(pid)
		if err != nil {
			t.Fatal(err)
		}
		if st.State == 'T' && st.TracerPid == 0 {
			return
		}
		if i == 500 {
			t.Fatalf("%d: state %c tracer %d, want stopped", pid, st.State, st.TracerPid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRestoreState compares what /proc shows of a task stopped by the dump
// (-s) with the restored task left stopped (-s), then lets the workload
// check itself: fds, offsets, memory of every kind, signals, timers,
// limits, personality, pdeath signal, sigaltstack.
func TestRestoreState(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "state")
	if out, err := exec.Command("gcc", "-O2", "-pthread", "-o", bin, "testdata/state.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	work := filepath.Join(dir, "work")
	os.Mkdir(work, 0o755)
	log := filepath.Join(dir, "log")
	w := startWorkload(t, log, "ready", bin, work, log)
	imgs := filepath.Join(dir, "img")
	dump(t, w.Pid, imgs, func(o *dumper.Options) { o.LeaveStopped = true })
	waitStopped(t, w.Pid)
	before := procState(t, w.Pid)
	niced := false
	for k, v := range before {
		niced = niced || strings.HasPrefix(k, "task ") && strings.Contains(v, "nice=7")
	}
	if !niced {
		t.Fatalf("no thread with nice 7 before the dump: %v", before)
	}
	unix.Kill(w.Pid, unix.SIGKILL)
	w.Reaped(t)

	// In a pid namespace of its own: the dumped TIDs are free there.
	res := restoreInPidNS(t, nsJob{Imgs: imgs, Log: log, LeaveStopped: true})
	after := map[string]string{}
	for k, v := range res.State {
		after[k] = string(v)
	}
	for k, v := range before {
		if after[k] != v {
			t.Errorf("%s differs:\nbefore: %s\nafter:  %s", k, v, after[k])
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			t.Errorf("%s only after restore: %s", k, after[k])
		}
	}
	if !strings.HasPrefix(res.Last, "done ") {
		t.Fatalf("restored task's last log line %q", res.Last)
	}
}

// normalMaps lists the VMAs of pid with their VmFlags, adjacent pieces of
// one file mapping with the same protection and flags joined: whether the
// kernel merged them depends on their anon_vma history, which a program
// cannot see.
func normalMaps(t tb, pid int) string {
	t.Helper()
	maps, err := procfs.ReadMaps(pid)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	var flags []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmFlags:") {
			flags = append(flags, strings.TrimSpace(l[8:]))
		}
	}
	if len(flags) != len(maps) {
		t.Fatalf("smaps of %d: %d VmFlags for %d maps", pid, len(flags), len(maps))
	}
	var out []string
	var last *procfs.Mapping
	lastFlags := ""
	for i := range maps {
		m := &maps[i]
		if last != nil && m.Inode != 0 && m.Inode == last.Inode && m.Start == last.End &&
			m.Perms == last.Perms && flags[i] == lastFlags && m.Offset == last.Offset+(last.End-last.Start) {
			last.End = m.End
			out[len(out)-1] = fmt.Sprintf("%x-%x %s %x %d %s [%s]", last.Start, last.End, last.Perms, last.Offset, last.Inode, last.Path, lastFlags)
			continue
		}
		last, lastFlags = m, flags[i]
		ino := m.Inode
		if m.Shared && m.Path == "/dev/zero" {
			ino = 0 // a new shared anonymous object
		}
		out = append(out, fmt.Sprintf("%x-%x %s %x %d %s [%s]", m.Start, m.End, m.Perms, m.Offset, ino, m.Path, flags[i]))
	}
	return strings.Join(out, "\n")
}

// TestRestoreUnprivileged restores a counter running as uid/gid 1000
// without capabilities: creds are rebuilt (and the same state compared).
func TestRestoreUnprivileged(t *testing.T) {
	needRoot(t)
	// t.TempDir's parents are private to root: use a dir uid 1000 can reach.
	dir, err := os.MkdirTemp("", "godwit-restorer-unpriv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o777)
	bin := filepath.Join(dir, "counter")
	b, err := os.ReadFile(testutil.CounterBin(t, false))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(dir, "log")
	w := startWorkload(t, log, "tick 3", "/usr/bin/setpriv", "--reuid=1000", "--regid=1000", "--groups=1000,1001",
		"--inh-caps=-all", "--bounding-set=-sys_admin", bin, log)
	imgs := filepath.Join(dir, "img")
	dump(t, w.Pid, imgs, func(o *dumper.Options) { o.LeaveStopped = true })
	waitStopped(t, w.Pid)
	before := procState(t, w.Pid)
	if !strings.Contains(before["task "+fmt.Sprint(w.Pid)], "Uid=1000") {
		t.Fatalf("workload not unprivileged: %s", before["task "+fmt.Sprint(w.Pid)])
	}
	unix.Kill(w.Pid, unix.SIGKILL)
	w.Reaped(t)
	r := restore(t, imgs, func(o *Options) { o.LeaveStopped = true })
	waitStopped(t, r.PID())
	after := procState(t, r.PID())
	for k, v := range before {
		if after[k] != v {
			t.Errorf("%s differs:\nbefore: %s\nafter:  %s", k, v, after[k])
		}
	}
	unix.Kill(r.PID(), unix.SIGCONT)
	finish(t, r, log)
}

// TestRestoreRefusesBoundingSet: a restorer whose capability bounding set
// lacks one the images have refuses by name, rather than giving the task
// a smaller set. The workload runs as uid 1000 with no capabilities but
// the full bounding set; godwit runs in a child (setpriv) that dropped
// CAP_SYS_BOOT from its own.
func TestRestoreRefusesBoundingSet(t *testing.T) {
	needRoot(t)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Fatalf("setpriv (util-linux): %v", err)
	}
	// t.TempDir's parents are private to root: use a dir uid 1000 can reach.
	dir, err := os.MkdirTemp("", "godwit-restorer-bnd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o777)
	bin := filepath.Join(dir, "counter")
	b, err := os.ReadFile(testutil.CounterBin(t, false))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(dir, "log")
	w := startWorkload(t, log, "tick 3", setpriv, "--reuid=1000", "--regid=1000", "--clear-groups", "--inh-caps=-all", bin, log)
	st, err := procfs.ReadStatus(w.Pid)
	if err != nil || st.CapBnd&(1<<unix.CAP_SYS_BOOT) == 0 || st.CapPrm != 0 {
		t.Fatalf("workload: want no permitted capabilities and CAP_SYS_BOOT in the bounding set: %+v, %v", st, err)
	}
	imgs := filepath.Join(dir, "img")
	dump(t, w.Pid, imgs, nil)
	w.Reaped(t)
	res := restoreInPidNS(t, nsJob{Imgs: imgs, Log: log, Refused: "bounding set"}, setpriv, "--bounding-set=-sys_boot")
	if !strings.Contains(res.Last, "CAP_SYS_BOOT") {
		t.Fatalf("refusal does not name CAP_SYS_BOOT: %s", res.Last)
	}
	// With godwit's full set the same images restore.
	if got := restoreInPidNS(t, nsJob{Imgs: imgs, Log: log}).Last; !strings.HasPrefix(got, "done") {
		t.Fatalf("last line %q", got)
	}
}
