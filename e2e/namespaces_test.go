package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
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
