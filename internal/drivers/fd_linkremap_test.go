package drivers

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"godwit/internal/model"
)

// The link_remap names of a restored tree are held before its tasks run
// and removed after: each in the root of the task that holds the file
// (here a task in a mount namespace of its own, whose tmpfs the tree's
// root task does not see), still removed when the tree's root task has
// exited meanwhile, and left alone when the name no longer is the
// restored inode.
func TestLinkRemapsHeldInTheirTasksRoot(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root (mount namespace)")
	}
	dir := t.TempDir()
	// The holder: in its own mount namespace, a tmpfs on dir with two
	// link_remap names only it sees.
	holder := exec.Command("/bin/sh", "-c", `mount --make-rprivate / && mount -t tmpfs none "$0" && echo a >"$0/link_remap.1" && echo b >"$0/link_remap.2" && touch "$0/ready" && exec sleep 1000`, dir)
	holder.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	var errOut bytes.Buffer
	holder.Stderr = &errOut
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { holder.Process.Kill(); holder.Wait() }()
	root := exec.Command("sleep", "1000")
	if err := root.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { root.Process.Kill(); root.Wait() }()
	in := func(name string) string {
		return fmt.Sprintf("/proc/%d/root%s/%s", holder.Process.Pid, dir, name)
	}
	for i := 0; ; i++ {
		if _, err := os.Stat(in("ready")); err == nil {
			break
		}
		if i == 1000 {
			t.Fatalf("the holder's tmpfs is not ready: %s", errOut.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := os.Stat(filepath.Join(dir, "link_remap.1")); !os.IsNotExist(err) {
		t.Fatalf("the holder's tmpfs is visible outside its namespace: %v", err)
	}
	tr := &model.Tree{Files: map[model.ID]*model.File{
		1: {ID: 1, Kind: model.Ghost, Ghost: &model.GhostState{Linked: dir + "/link_remap.1"}},
		2: {ID: 2, Kind: model.Ghost, Ghost: &model.GhostState{Linked: dir + "/link_remap.2"}},
	}}
	tr.Tasks = []*model.Task{
		{Pid: root.Process.Pid},
		{Pid: holder.Process.Pid, FDs: []model.FD{{Num: 3, File: 1}, {Num: 4, File: 2}}},
	}
	l, err := HoldLinkRemaps(tr)
	if err != nil {
		t.Fatal(err)
	}
	// The tasks run: the tree's root exits, and the holder replaces
	// link_remap.2 by a file of its own.
	root.Process.Kill()
	root.Wait()
	if err := os.Rename(in("ready"), in("link_remap.2")); err != nil {
		t.Fatal(err)
	}
	if err := l.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(in("link_remap.1")); !os.IsNotExist(err) {
		t.Errorf("link_remap.1 in the holder's root was left: %v", err)
	}
	if _, err := os.Lstat(in("link_remap.2")); err != nil {
		t.Errorf("link_remap.2, replaced since the hold, was removed: %v", err)
	}
}
