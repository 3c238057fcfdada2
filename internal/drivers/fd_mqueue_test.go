package drivers

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestCollectRefusesMqueue collects the fds of a program holding a POSIX
// message queue (mq_open): its link reads as "/name", a path it is not,
// so the fd must be refused by name, not dumped as a regular file.
func TestCollectRefusesMqueue(t *testing.T) {
	name := fmt.Sprintf("/godwit-mq-%d", os.Getpid())
	prog := `import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.mq_open(sys.argv[1].encode(), os.O_CREAT | os.O_RDWR, 0o600, None)
assert fd >= 0, ctypes.get_errno()
print(fd, flush=True)
time.sleep(300)
`
	cmd := exec.Command("python3", "-c", prog, name)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = exec.Command("python3", "-c", "import ctypes, sys; ctypes.CDLL(None).mq_unlink(sys.argv[1].encode())", name).Run()
	})
	fd, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("the program did not open its queue: %v", err)
	}
	_, err = CollectFDs(cmd.Process.Pid)
	want := "fd " + strings.TrimSpace(fd) + ": POSIX message queue " + name
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("collect: %v, want %q", err, want)
	}
}
