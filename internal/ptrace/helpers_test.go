package ptrace

import (
	"bufio"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
)

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (ptrace of other processes, PFNs, clone3 set_tid)")
	}
}

// buildC compiles testdata/name.c into a temporary directory.
func buildC(t testing.TB, name string, flags ...string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), name)
	args := append([]string{"-O1", "-o", out, filepath.Join("testdata", name+".c")}, flags...)
	if b, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
		t.Fatalf("gcc %s: %v\n%s", name, err, b)
	}
	return out
}

type child struct {
	cmd   *exec.Cmd
	pid   int
	stdin io.WriteCloser
	out   *bufio.Reader
	first string // first line printed
}

// startChild runs bin, waits for its first output line, and registers a
// cleanup that closes tr (detaching everything) and kills and reaps the
// child, whatever the test's outcome.
func startChild(t testing.TB, tr *Tracer, bin string) *child {
	t.Helper()
	return startCmd(t, tr, exec.Command(bin))
}

// startCmd is startChild of cmd (e.g. with clone flags).
func startCmd(t testing.TB, tr *Tracer, cmd *exec.Cmd) *child {
	t.Helper()
	bin := cmd.Path
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, pid: cmd.Process.Pid, stdin: stdin, out: bufio.NewReader(stdout)}
	t.Cleanup(func() {
		if tr != nil {
			tr.Close()
		}
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := c.out.ReadString('\n')
	if err != nil {
		t.Fatalf("child %s: first line: %v", bin, err)
	}
	c.first = strings.TrimSpace(line)
	return c
}

func (c *child) addr(t testing.TB) uint64 {
	t.Helper()
	a, err := strconv.ParseUint(strings.TrimPrefix(c.first, "0x"), 16, 64)
	if err != nil {
		t.Fatalf("child address %q: %v", c.first, err)
	}
	return a
}

// waitBlocked waits until the child's main thread sleeps in a syscall
// (state S), so that a freeze catches it inside that syscall.
func waitBlocked(t *testing.T, pid int) {
	t.Helper()
	for i := 0; i < 500; i++ {
		st, err := procfs.ReadStat(pid)
		if err != nil {
			t.Fatal(err)
		}
		if st.State == 'S' {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("pid %d never blocked", pid)
}

// assertFree checks that no thread of pid is traced or ptrace-stopped.
func assertFree(t *testing.T, pid int) {
	t.Helper()
	tids, err := procfs.Tasks(pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, tid := range tids {
		st, err := procfs.ReadTaskStatus(pid, tid)
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			continue // a thread that just exited (ESRCH: while its status was read)
		}
		if err != nil {
			t.Fatal(err)
		}
		if st.TracerPid != 0 || st.State == 't' {
			t.Errorf("thread %d of %d: TracerPid %d, State %c after release", tid, pid, st.TracerPid, st.State)
		}
	}
}

func readU64(t testing.TB, pid int, addr uint64) uint64 {
	t.Helper()
	var b [8]byte
	if err := ReadMem(pid, addr, b[:]); err != nil {
		t.Fatal(err)
	}
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}
