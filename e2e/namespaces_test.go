package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"godwit/internal/images"
	"godwit/internal/model/criuimg"
)

// TestDumpRefusesForeignNamespaces dumps a program in a namespace of its
// own of each kind the restore cannot give back (it restores into
// godwit's): the dump must fail naming the task and the namespace, and
// leave the program running untraced, as it was. UTS and IPC namespaces
// are carried (TestUTSIPCNamespacesCarried).
func TestDumpRefusesForeignNamespaces(t *testing.T) {
	needRoot(t)
	for _, c := range []struct{ name, flag, want string }{
		{"mnt", "--mount", "mnt namespace"},
		{"cgroup", "--cgroup", "cgroup namespace"},
		{"user", "--user", "user namespace"},
		{"time", "--time", "time"},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := startWorkload(t, "unshare", c.flag, workloads["counter"])
			dir := t.TempDir()
			code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", dir)
			if code == 0 {
				t.Fatalf("dump of a task in its own %s namespace exited 0: %s", c.name, out)
			}
			if !strings.Contains(out, "task "+strconv.Itoa(w.pid)) || !strings.Contains(out, c.want) {
				t.Fatalf("the error names neither the task %d nor %q: %s", w.pid, c.want, out)
			}
			if _, err := os.Stat(filepath.Join(dir, "inventory.img")); err == nil {
				t.Errorf("a refused dump left inventory.img")
			}
			if st, tracer := procState(t, w.pid); tracer != 0 || st == "T" || st == "t" {
				t.Fatalf("after the refused dump pid %d is %s, tracer %d", w.pid, st, tracer)
			}
			w.waitTicks(2)
		})
	}
}

// TestDumpRefusesPidNamespaceInit dumps the init of a pid namespace (and
// the task that made it, whose children go into it): each is refused by
// name, and both keep running.
func TestDumpRefusesPidNamespaceInit(t *testing.T) {
	needRoot(t)
	w := startWorkload(t, "unshare", "--pid", "--fork", "--kill-child", workloads["counter"])
	var child int
	waitFor(t, "unshare's child", func() bool {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(w.pid) + "/task/" + strconv.Itoa(w.pid) + "/children")
		child, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return child > 0
	})
	t.Cleanup(func() { killAndForget(child) })
	for _, c := range []struct {
		pid  int
		want string
	}{
		{child, "is the init (pid 1) of a pid namespace"},
		{w.pid, "pid_for_children"},
	} {
		code, out := godwit(t, "dump", "-t", strconv.Itoa(c.pid), "-D", t.TempDir())
		if code == 0 || !strings.Contains(out, "task "+strconv.Itoa(c.pid)) || !strings.Contains(out, c.want) {
			t.Fatalf("dump of pid %d: exit %d, want an error naming it and %q: %s", c.pid, code, c.want, out)
		}
		if st, tracer := procState(t, c.pid); tracer != 0 || st == "T" || st == "t" {
			t.Fatalf("after the refused dump pid %d is %s, tracer %d", c.pid, st, tracer)
		}
	}
	w.waitTicks(2)
}

// TestDumpRefusesThreadNamespaces dumps a process whose second thread,
// not the leader, unshared a UTS (and, apart, a network) namespace: the
// dump must fail naming that thread and the namespace, and leave the
// process running untraced.
func TestDumpRefusesThreadNamespaces(t *testing.T) {
	needRoot(t)
	for _, c := range []struct{ name, want string }{
		{"uts", "uts namespace"},
		{"net", "network namespace"},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := startWorkload(t, cWorkload(t, "thrns"), c.name)
			ents, err := os.ReadDir("/proc/" + strconv.Itoa(w.pid) + "/task")
			if err != nil {
				t.Fatal(err)
			}
			tid := 0
			for _, e := range ents {
				if n, _ := strconv.Atoi(e.Name()); n != w.pid {
					tid = n
				}
			}
			if len(ents) != 2 || tid == 0 {
				t.Fatalf("want 2 threads in %d, have %d", w.pid, len(ents))
			}
			dir := t.TempDir()
			code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", dir)
			if code == 0 {
				t.Fatalf("dump of a process whose thread %d is in its own %s namespace exited 0: %s", tid, c.name, out)
			}
			if !strings.Contains(out, "thread "+strconv.Itoa(tid)) || !strings.Contains(out, c.want) {
				t.Fatalf("the error names neither thread %d nor %q: %s", tid, c.want, out)
			}
			if _, err := os.Stat(filepath.Join(dir, "inventory.img")); err == nil {
				t.Errorf("a refused dump left inventory.img")
			}
			for _, p := range []int{w.pid, tid} {
				if st, tracer := procState(t, p); tracer != 0 || st == "T" || st == "t" {
					t.Fatalf("after the refused dump %d is %s, tracer %d", p, st, tracer)
				}
			}
			w.waitTicks(2)
		})
	}
}

// TestUTSIPCNamespacesCarried dumps and restores a program in UTS and IPC
// namespaces of its own (workloads/sysvns.c): the restored program is in
// new namespaces, not godwit's, with its host and domain names, its ipc
// sysctls and its System V segment, semaphores and messages, each with
// its id; the program checks them all itself, and its semaphore kept
// counting across the move.
func TestUTSIPCNamespacesCarried(t *testing.T) {
	needRoot(t)
	w := startWorkload(t, cWorkload(t, "sysvns"))
	dir := w.dump(t)
	w.reapKilled(t)
	for _, n := range []string{"utsns-", "ipcns-var-", "ipcns-shm-", "ipcns-sem-", "ipcns-msg-"} {
		if m, _ := filepath.Glob(filepath.Join(dir, n+"*.img")); len(m) != 1 {
			t.Errorf("images %s*: %v", n, m)
		}
	}
	if d, err := images.Open(dir, false); err != nil {
		t.Fatal(err)
	} else {
		err = criuimg.CheckCRIU(d)
		d.Close()
		if err != nil {
			t.Errorf("CRIU's checks: %v", err)
		}
	}
	r := restore(t, w, dir)
	for _, ns := range []string{"uts", "ipc"} {
		self, _ := os.Readlink("/proc/self/ns/" + ns)
		got, err := os.Readlink("/proc/" + strconv.Itoa(w.pid) + "/ns/" + ns)
		if err != nil || got == self {
			t.Errorf("restored pid %d: %s namespace %q (%v), godwit's %q", w.pid, ns, got, err, self)
		}
	}
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(w.pid), "-u", "hostname").Output()
	if err != nil || strings.TrimSpace(string(out)) != "godwit-box" {
		t.Errorf("hostname in the restored namespace: %q (%v)", out, err)
	}
	if h, _ := os.Hostname(); h == "godwit-box" {
		t.Errorf("the restore renamed godwit's own host")
	}
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("the restored program failed its checks (exit %d)\n%s", code, w.tail())
	}
	if !strings.Contains(readFile(w.log), "done ticks=") {
		t.Fatalf("no done line\n%s", w.tail())
	}
}

// TestSysVAttachesCarried dumps and restores a tree (workloads/sysvns.c
// attach) whose tasks keep SysV segments of their IPC namespace attached:
// a read-write attach without its first page, a read-only attach, both
// inherited by a child. After the restore each task's VMA maps the
// restored segment (the child's copies of the parent's tick word follow
// it), the kernel counts the same attaches, and the read-only attach
// still cannot be made writable.
func TestSysVAttachesCarried(t *testing.T) {
	needRoot(t)
	w := startTree(t, cWorkload(t, "sysvns"), "attach")
	before := subtree(t, w.pid)
	if len(before) != 2 {
		t.Fatalf("want the program and its child, have %v", before)
	}
	t.Cleanup(func() {
		for p := range before {
			killAndForget(p)
		}
	})
	maps := sysvMaps(before)
	if len(maps) != 4 {
		t.Fatalf("want 4 SysV attaches in the tree, have %q", maps)
	}
	dir := w.dump(t)
	w.reapKilled(t)
	for p := range before {
		waitFor(t, "pid "+strconv.Itoa(p)+" to go", func() bool { return !pidExists(p) })
	}
	r := restore(t, w, dir)
	w.waitTicks(3)
	if after := sysvMaps(before); !slices.Equal(after, maps) {
		t.Errorf("SysV attaches before the dump:\n%s\nafter the restore:\n%s", strings.Join(maps, "\n"), strings.Join(after, "\n"))
	}
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("the restored program failed its checks (exit %d)\n%s", code, w.tail())
	}
}

// sysvMaps are the SysV shm lines of the tasks' maps (range, protection,
// offset, segment id), "PID: " first, sorted.
func sysvMaps(pids map[int]taskInfo) []string {
	var out []string
	for p := range pids {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(p) + "/maps")
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 6 && strings.HasPrefix(f[5], "/SYSV") {
				out = append(out, strconv.Itoa(p)+": "+f[0]+" "+f[1]+" "+f[2]+" "+f[4])
			}
		}
	}
	slices.Sort(out)
	return out
}

// TestDumpRefusesHostSysVAttach dumps a program in godwit's own IPC
// namespace that keeps a SysV segment attached: the dump must fail naming
// the task and the segment, and leave the program running untraced.
func TestDumpRefusesHostSysVAttach(t *testing.T) {
	needRoot(t)
	// The segment is removed at once: it goes with the program.
	prog := `import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
id = libc.shmget(0, 4096, 0o600 | 0o1000)
assert id >= 0 and libc.shmat(id, None, 0) not in (None, 2**64 - 1)
assert libc.shmctl(id, 0, None) == 0
with open(sys.argv[-1], "a", buffering=1) as f:
    n = 0
    while True:
        n += 1
        f.write("tick %d\n" % n)
        time.sleep(0.02)
`
	w := startWorkload(t, "/usr/bin/python3", "-c", prog)
	dir := t.TempDir()
	code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", dir)
	if code == 0 || !strings.Contains(out, "task "+strconv.Itoa(w.pid)) || !strings.Contains(out, "of godwit's IPC namespace") {
		t.Fatalf("dump: exit %d, want an error naming task %d and godwit's IPC namespace: %s", code, w.pid, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "inventory.img")); err == nil {
		t.Errorf("a refused dump left inventory.img")
	}
	if st, tracer := procState(t, w.pid); tracer != 0 || st == "T" || st == "t" {
		t.Fatalf("after the refused dump pid %d is %s, tracer %d", w.pid, st, tracer)
	}
	w.waitTicks(2)
}

// TestJoinNSOverDumpedUTS restores a tree that had its own UTS and IPC
// namespaces with --join-ns uts:PID: the tree goes into that existing UTS
// namespace (the dumped one is not made), and still gets a new IPC
// namespace with its objects.
func TestJoinNSOverDumpedUTS(t *testing.T) {
	needRoot(t)
	host := exec.Command("unshare", "--uts", "sh", "-c", "hostname godwit-box && echo godwit.test > /proc/sys/kernel/domainname && exec sleep 300")
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = host.Process.Kill(); _ = host.Wait() })
	hostNS := ""
	waitFor(t, "the namespace holder", func() bool {
		exe, _ := os.Readlink("/proc/" + strconv.Itoa(host.Process.Pid) + "/exe")
		hostNS, _ = os.Readlink("/proc/" + strconv.Itoa(host.Process.Pid) + "/ns/uts")
		return strings.HasSuffix(exe, "/sleep")
	})
	w := startWorkload(t, cWorkload(t, "sysvns"))
	dir := w.dump(t)
	w.reapKilled(t)
	r := restore(t, w, dir, "--join-ns", "uts:"+strconv.Itoa(host.Process.Pid))
	got, _ := os.Readlink("/proc/" + strconv.Itoa(w.pid) + "/ns/uts")
	if got != hostNS {
		t.Errorf("restored into uts namespace %s, joined %s", got, hostNS)
	}
	self, _ := os.Readlink("/proc/self/ns/ipc")
	if ipc, _ := os.Readlink("/proc/" + strconv.Itoa(w.pid) + "/ns/ipc"); ipc == self || ipc == "" {
		t.Errorf("restored into ipc namespace %q, godwit's %q", ipc, self)
	}
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("the restored program failed its checks (exit %d)\n%s", code, w.tail())
	}
}

// TestDumpRefusesIPCNamespaceSharedOutside dumps a sleep whose IPC
// namespace (with a message queue in it) is also its parent shell's,
// which is not dumped: the restore would make a new namespace, leaving
// the shell with the objects the sleep would use elsewhere. The dump must
// fail naming an outside task, and leave the sleep running untraced.
func TestDumpRefusesIPCNamespaceSharedOutside(t *testing.T) {
	needRoot(t)
	pidFile := filepath.Join(t.TempDir(), "pid")
	holder := exec.Command("unshare", "-i", "--fork", "--kill-child", "sh", "-c", "ipcmk -Q >/dev/null && sleep 1000 & echo $! > "+pidFile+"; wait")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	var sleeper int
	t.Cleanup(func() {
		if sleeper > 0 {
			killAndForget(sleeper)
		}
		_ = holder.Process.Kill()
		_ = holder.Wait()
	})
	waitFor(t, "the sleep in the shared namespace", func() bool {
		b, _ := os.ReadFile(pidFile)
		sleeper, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		exe, _ := os.Readlink("/proc/" + strconv.Itoa(sleeper) + "/exe")
		return sleeper > 0 && strings.HasSuffix(exe, "/sleep")
	})
	self, _ := os.Readlink("/proc/self/ns/ipc")
	if ns, _ := os.Readlink("/proc/" + strconv.Itoa(sleeper) + "/ns/ipc"); ns == self || ns == "" {
		t.Fatalf("sleep %d in ipc namespace %q, godwit's %q", sleeper, ns, self)
	}
	code, out := godwit(t, "dump", "-t", strconv.Itoa(sleeper), "-D", t.TempDir())
	if code == 0 || !strings.Contains(out, "ipc namespace is also used by") || !strings.Contains(out, "outside the tree") {
		t.Fatalf("dump: exit %d, want an error naming a task outside the tree in its ipc namespace: %s", code, out)
	}
	if st, tracer := procState(t, sleeper); tracer != 0 || st == "T" || st == "t" {
		t.Fatalf("after the refused dump pid %d is %s, tracer %d", sleeper, st, tracer)
	}
}

// TestJoinNSIPCRefusesMissingObjects restores a tree that had its own IPC
// namespace, with SysV objects, into an existing empty one (--join-ns
// ipc:PID): the tree would find none of its objects, or others under
// their ids, so the restore must fail naming one, and leave no task.
func TestJoinNSIPCRefusesMissingObjects(t *testing.T) {
	needRoot(t)
	host := exec.Command("unshare", "--ipc", "sleep", "300")
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = host.Process.Kill(); _ = host.Wait() })
	self, _ := os.Readlink("/proc/self/ns/ipc")
	waitFor(t, "the namespace holder", func() bool {
		exe, _ := os.Readlink("/proc/" + strconv.Itoa(host.Process.Pid) + "/exe")
		ns, _ := os.Readlink("/proc/" + strconv.Itoa(host.Process.Pid) + "/ns/ipc")
		return strings.HasSuffix(exe, "/sleep") && ns != self
	})
	w := startWorkload(t, cWorkload(t, "sysvns"))
	dir := w.dump(t)
	w.reapKilled(t)
	code, out := godwit(t, "restore", "-D", dir, "--join-ns", "ipc:"+strconv.Itoa(host.Process.Pid))
	if code == 0 || !strings.Contains(out, "--join-ns ipc: the dump's SysV") || !strings.Contains(out, "not in the joined namespace") {
		t.Fatalf("restore: exit %d, want a refusal naming a SysV object: %s", code, out)
	}
	if pidExists(w.pid) {
		t.Fatalf("the refused restore left pid %d", w.pid)
	}
}
