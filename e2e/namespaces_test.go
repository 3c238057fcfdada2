package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestDumpRefusesForeignNamespaces dumps a program in a namespace of its
// own of each kind the restore cannot give back (it restores into
// godwit's): the dump must fail naming the task and the namespace, and
// leave the program running untraced, as it was.
func TestDumpRefusesForeignNamespaces(t *testing.T) {
	needRoot(t)
	for _, c := range []struct{ name, flag, want string }{
		{"uts", "--uts", "uts namespace"},
		{"ipc", "--ipc", "ipc namespace"},
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
