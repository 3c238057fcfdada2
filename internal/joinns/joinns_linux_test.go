package joinns

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		in, path, err string
	}{
		{"net:/run/netns/y", "/run/netns/y", ""},
		{"net:123", "/proc/123/ns/net", ""},
		{"uts:7", "/proc/7/ns/uts", ""},
		{"ipc:/proc/9/ns/ipc", "/proc/9/ns/ipc", ""},
		{"mnt:/proc/1/ns/mnt", "", "--join-ns mnt: a multi-threaded process cannot join"},
		{"user:1,uid=0", "", "--join-ns user:"},
		{"pid:1", "", "--join-ns pid: not supported yet"},
		{"net:1,x", "", "extra options"},
		{"net", "", "want NS:PID"},
		{"net:", "", "want NS:PID"},
		{"bogus:1", "", "unknown namespace"},
		{"net:relative/path", "", "absolute path"},
		{"net:-3", "", "pid -3"},
	} {
		s, err := Parse(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: %v, want an error with %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || s.Path != c.path {
			t.Errorf("%q: %+v %v, want path %s", c.in, s, err, c.path)
		}
	}
}

// Namespaces godwit is in already: nothing to do. A file of another
// namespace type, twice the same kind, or a missing file: one error.
func TestEnterRefuses(t *testing.T) {
	if err := Enter(nil); err != nil {
		t.Fatal(err)
	}
	if err := Enter([]string{"net:/proc/self/ns/net", "uts:" + strconv.Itoa(os.Getpid())}); err != nil {
		t.Fatalf("own namespaces: %v", err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"net:/proc/self/ns/uts"}, "not a net namespace"},
		{[]string{"net:/etc/passwd"}, "not a net namespace"},
		{[]string{"net:/nonexistent/ns"}, "no such file"},
		{[]string{"net:1", "net:2"}, "given twice"},
	} {
		if err := Enter(c.args); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.args, err, c.want)
		}
	}
}

// Enter re-executes the process in place (same PID) in the namespaces,
// and the new process goes on: a child test process joins the network
// and UTS namespaces of a holder.
func TestEnterReexecs(t *testing.T) {
	if os.Getenv("GODWIT_JOINNS_CHILD") != "" {
		fmt.Printf("pid %d before\n", os.Getpid())
		if err := Enter(strings.Split(os.Getenv("GODWIT_JOINNS_CHILD"), " ")); err != nil {
			fmt.Printf("error %v\n", err)
			os.Exit(1)
		}
		var n, u unix.Stat_t
		unix.Stat("/proc/thread-self/ns/net", &n)
		unix.Stat("/proc/thread-self/ns/uts", &u)
		fmt.Printf("pid %d after net %d uts %d\n", os.Getpid(), n.Ino, u.Ino)
		os.Exit(0)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	holder := exec.Command("sleep", "60")
	holder.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET | syscall.CLONE_NEWUTS, Pdeathsig: syscall.SIGKILL}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	hp := strconv.Itoa(holder.Process.Pid)
	var n, u unix.Stat_t
	if err := unix.Stat("/proc/"+hp+"/ns/net", &n); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat("/proc/"+hp+"/ns/uts", &u); err != nil {
		t.Fatal(err)
	}
	c := exec.Command(os.Args[0], "-test.run=^TestEnterReexecs$", "-test.count=1")
	c.Env = append(os.Environ(), "GODWIT_JOINNS_CHILD=net:/proc/"+hp+"/ns/net uts:"+hp)
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	pid := c.Process.Pid
	// "before" twice: once before the exec, once in the new program.
	want := fmt.Sprintf("pid %d before\npid %d before\npid %d after net %d uts %d\n", pid, pid, pid, n.Ino, u.Ino)
	if string(out) != want {
		t.Fatalf("child said\n%s\nwant\n%s", out, want)
	}
}
