package dumper

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/testutil"
)

// EndTracking ends the tracking of every process of the tree, not only
// the root's: each task has a holder of its own, and a migration that
// gives up must leave none of them write-protected.
func TestEndTrackingTree(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	p := testutil.Start(t, exec.Command("sh", "-c", "sleep 1000 & sleep 1000 & echo ready >"+log+"; wait"), log, "ready")
	// The session's other members (the sleeps) go with the test too.
	t.Cleanup(func() { _ = unix.Kill(-p.Pid, unix.SIGKILL) })
	kids, err := Children(p.Pid)
	if err != nil || len(kids) != 2 {
		t.Fatalf("children of %d: %v %v", p.Pid, kids, err)
	}
	preDump(t, PreDumpOptions{Pid: p.Pid, ImagesDir: filepath.Join(dir, "1")})
	for _, pid := range append([]int{p.Pid}, kids...) {
		if len(holdersOf(pid)) != 1 {
			t.Fatalf("task %d: holders %v after the round, want one", pid, holdersOf(pid))
		}
	}
	EndTracking(p.Pid)
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range append([]int{p.Pid}, kids...) {
		for len(holdersOf(pid)) > 0 {
			if time.Now().After(deadline) {
				t.Fatalf("task %d still tracked by %v after EndTracking of the root", pid, holdersOf(pid))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// holdersOf lists the live godwit-track holders whose pidfd names pid.
func holdersOf(pid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		h, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", h))
		if err != nil || strings.TrimSpace(string(comm)) != holderComm {
			continue
		}
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", h)); err != nil || strings.Contains(string(st), ") Z ") {
			continue
		}
		info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", h, holderPidFD))
		if err == nil && pidfdTarget(string(info)) == pid {
			out = append(out, h)
		}
	}
	return out
}
