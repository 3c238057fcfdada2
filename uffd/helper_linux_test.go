package uffd

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var (
	childOnce sync.Once
	childBin  string
	childErr  error
	tmpDir    string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if tmpDir != "" {
		os.RemoveAll(tmpDir)
	}
	os.Exit(code)
}

// childPath compiles testdata/child.c once per test binary.
func childPath(t testing.TB) string {
	t.Helper()
	childOnce.Do(func() {
		tmpDir, childErr = os.MkdirTemp("", "uffd-test-")
		if childErr != nil {
			return
		}
		childBin = filepath.Join(tmpDir, "child")
		out, err := exec.Command("gcc", "-O2", "-Wall", "-o", childBin, "testdata/child.c").CombinedOutput()
		if err != nil {
			childErr = fmt.Errorf("gcc: %v\n%s", err, out)
		}
	})
	if childErr != nil {
		t.Fatal(childErr)
	}
	return childBin
}

// child is a target process driven by line commands (testdata/child.c).
type child struct {
	t     testing.TB
	cmd   *exec.Cmd
	in    *os.File
	lines chan string
	sock  int // our end of the SCM_RIGHTS socket, or -1
}

func startChild(t testing.TB, withSock bool) *child {
	t.Helper()
	bin := childPath(t)
	c := &child{t: t, sock: -1, lines: make(chan string, 16)}
	cmd := exec.Command(bin)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, pw, os.Stderr
	var theirs *os.File
	if withSock {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		c.sock = fds[0]
		theirs = os.NewFile(uintptr(fds[1]), "child-sock")
		cmd.ExtraFiles = []*os.File{theirs}
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c.cmd, c.in = cmd, inW
	inR.Close()
	pw.Close()
	if theirs != nil {
		theirs.Close()
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		inW.Close()
		pr.Close()
		if c.sock >= 0 {
			unix.Close(c.sock)
		}
	})
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
	}()
	return c
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// send writes a command without waiting for the answer.
func (c *child) send(format string, args ...any) {
	c.t.Helper()
	if _, err := fmt.Fprintf(c.in, format+"\n", args...); err != nil {
		c.t.Fatalf("child command %q: %v", format, err)
	}
}

// answer waits for the next line from the child.
func (c *child) answer() string {
	c.t.Helper()
	select {
	case l, ok := <-c.lines:
		if !ok {
			c.t.Fatalf("child exited")
		}
		return l
	case <-time.After(20 * time.Second):
		wchan, _ := os.ReadFile(fmt.Sprintf("/proc/%d/wchan", c.pid()))
		stack, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stack", c.pid()))
		c.t.Fatalf("child did not answer within 20s (wchan %s)\n%s", wchan, stack)
	}
	return ""
}

func (c *child) do(format string, args ...any) string {
	c.t.Helper()
	c.send(format, args...)
	return c.answer()
}

func (c *child) doInt(format string, args ...any) uint64 {
	c.t.Helper()
	s := c.do(format, args...)
	v, err := strconv.ParseUint(strings.Fields(s)[0], 10, 64)
	if err != nil {
		c.t.Fatalf("child answer %q to %q: %v", s, format, err)
	}
	return v
}

func (c *child) doHex(format string, args ...any) uint64 {
	c.t.Helper()
	s := c.do(format, args...)
	v, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		c.t.Fatalf("child answer %q to %q: %v", s, format, err)
	}
	return v
}

// remoteUffd makes the child create a userfaultfd and takes it, by SCM_RIGHTS
// if the child has a socket, else with pidfd_getfd; the child's copy is then
// closed so that only we hold it.
func (c *child) remoteUffd() *Uffd {
	c.t.Helper()
	f := strings.Fields(c.do("uffd"))
	if len(f) != 2 || f[0] == "err" {
		c.t.Fatalf("child uffd: %v", f)
	}
	childFd, _ := strconv.Atoi(f[0])
	var u *Uffd
	var err error
	if f[1] == "1" {
		fd, rerr := RecvFD(c.sock)
		if rerr != nil {
			c.t.Fatal(rerr)
		}
		u, err = FromFD(fd)
	} else {
		u, err = OpenRemote(c.pid(), childFd)
	}
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { u.Close() })
	if r := c.do("close %d", childFd); r != "0" {
		c.t.Fatalf("child close uffd: %s", r)
	}
	return u
}
