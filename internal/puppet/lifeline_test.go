package puppet

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
	"godwit/internal/ptrace"
)

// Tasks handed between tracer threads (Release, then Adopt) are untraced in
// between: if godwit dies then, their lifeline must end them, not leave
// them pausing forever with the PIDs being restored. The helper process
// plays godwit and is killed in that window.
func TestDieWhileHandedOver(t *testing.T) {
	if os.Getenv("GODWIT_LIFELINE_HELPER") == "1" {
		lifelineHelper(t)
		return
	}
	needRoot(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestDieWhileHandedOver$", "-test.count=1")
	cmd.Env = append(os.Environ(), "GODWIT_LIFELINE_HELPER=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var pids []int
	defer func() {
		// Whatever the outcome, nothing of the helper's outlives the test.
		cmd.Process.Kill()
		cmd.Wait()
		for _, pid := range pids {
			unix.Kill(pid, unix.SIGKILL)
		}
	}()
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) > 0 && f[0] == "PIDS" {
			for _, s := range f[1:] {
				pid, err := strconv.Atoi(s)
				if err != nil {
					t.Fatalf("helper: %q", sc.Text())
				}
				pids = append(pids, pid)
			}
			break
		}
	}
	if len(pids) != 3 {
		t.Fatalf("helper gave no pids: %v", pids)
	}
	// The tasks are released and the helper is waiting: kill it, as
	// godwit could be killed, between the release and the adoption.
	for _, pid := range pids {
		st, err := procfs.ReadStatus(pid)
		if err != nil {
			t.Fatalf("task %d before the kill: %v", pid, err)
		}
		if st.TracerPid != 0 {
			t.Fatalf("task %d still traced by %d: not handed over", pid, st.TracerPid)
		}
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	deadline := time.Now().Add(time.Second)
	for {
		var left []string
		for _, pid := range pids {
			if s := alive(pid); s != "" {
				left = append(left, fmt.Sprintf("%d (%s)", pid, s))
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("tasks left a second after godwit died while they were handed over: %v", left)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// alive describes pid if it is a task that has not exited (a zombie waits
// only for its new parent to reap it), else "".
func alive(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(b)
	j := strings.LastIndexByte(s, ')')
	if j < 0 || j+2 >= len(s) || s[j+2] == 'Z' || s[j+2] == 'X' {
		return ""
	}
	return s[:j+3]
}

// lifelineHelper makes a puppet, its child and grandchild (the child a
// sibling, so its parent is the helper), releases all three as the
// restorer's spread does, prints their PIDs and waits to be killed.
func lifelineHelper(t *testing.T) {
	tr := ptrace.New()
	p, err := Start(Options{Tracer: tr})
	if err != nil {
		t.Fatal(err)
	}
	c1 := cloneFree(t, p, true)
	c2 := cloneFree(t, c1, false)
	tid, err := c2.CloneThread(freePid(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []*Puppet{p, c1} {
		if err := q.Release([]int{q.Pid}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c2.Release([]int{c2.Pid, tid}); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("PIDS %d %d %d\n", p.Pid, c1.Pid, c2.Pid)
	os.Stdout.Sync()
	time.Sleep(time.Minute) // killed before
	os.Exit(3)
}
