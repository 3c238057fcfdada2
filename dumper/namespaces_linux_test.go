package dumper

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestNamespacesReadTwiceInOneProcess reads a tree's own UTS and IPC
// namespaces as a dump does, twice in one process (as `godwit service`
// does), then a task in godwit's namespaces: each read must leave
// godwit's own namespaces as they were, or the second dump takes the
// first tree's namespaces for godwit's and godwit's for the tree's.
func TestNamespacesReadTwiceInOneProcess(t *testing.T) {
	a := exec.Command("unshare", "-iu", "sleep", "60")
	b := exec.Command("sleep", "60")
	for _, c := range []*exec.Cmd{a, b} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Process.Kill(); _ = c.Wait() })
	}
	self, _ := os.Readlink("/proc/self/ns/ipc")
	for deadline := time.Now().Add(10 * time.Second); ; {
		exe, _ := os.Readlink("/proc/" + strconv.Itoa(a.Process.Pid) + "/exe")
		ns, _ := os.Readlink("/proc/" + strconv.Itoa(a.Process.Pid) + "/ns/ipc")
		if strings.HasSuffix(exe, "/sleep") && ns != "" && ns != self {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("unshare -iu: pid %d not in new namespaces", a.Process.Pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
	ta := []*frozenTask{{pid: a.Process.Pid}}
	for i := range 2 {
		own, err := treeNamespaces(ta)
		if err != nil {
			t.Fatal(err)
		}
		if len(own) != 2 {
			t.Fatalf("read %d: the tree's own namespaces %v, want uts and ipc", i, own)
		}
		if _, _, err := readNamespaces(ta, own); err != nil {
			t.Fatal(err)
		}
	}
	own, err := treeNamespaces([]*frozenTask{{pid: b.Process.Pid}})
	if err != nil || len(own) != 0 {
		t.Fatalf("a task in godwit's namespaces: own namespaces %v (%v), want none", own, err)
	}
}
