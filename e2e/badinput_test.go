package e2e

import (
	"golang.org/x/sys/unix"

	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// oneLineError asserts a failed godwit run: non-zero exit, one error line
// (a usage hint may follow), no panic.
func oneLineError(t *testing.T, code int, out, want string) {
	t.Helper()
	if code == 0 {
		t.Fatalf("exit 0, want a failure (%q)\n%s", want, out)
	}
	if strings.Contains(out, "panic") || strings.Contains(out, "goroutine ") {
		t.Fatalf("godwit panicked:\n%s", out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if !strings.HasPrefix(lines[0], "godwit: ") || !strings.Contains(lines[0], want) {
		t.Fatalf("first line %q, want godwit: ...%s...", lines[0], want)
	}
	if len(lines) > 2 || (len(lines) == 2 && !strings.HasPrefix(lines[1], "Run 'godwit")) {
		t.Fatalf("want one error line, got:\n%s", out)
	}
}

func TestDumpBadPID(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	code, out := godwit(t, "dump", "-t", "4194303", "-D", dir)
	oneLineError(t, code, out, "4194303")
	code, out = godwit(t, "dump", "-t", "1", "-D", dir)
	oneLineError(t, code, out, "1")
	if !alive(1) {
		t.Fatal("init is gone")
	}
	// godwit itself: the shell's pid becomes godwit's at exec.
	cmd := exec.Command("/bin/sh", "-c", `exec "$0" dump -t $$ -D "$1"`, godwitBin, dir)
	b, err := cmd.CombinedOutput()
	code = 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	}
	oneLineError(t, code, string(b), "")
	if _, err := os.Stat(filepath.Join(dir, "inventory.img")); err == nil {
		t.Error("a refused dump wrote inventory.img")
	}
}

// A file descriptor of a type godwit cannot dump yet fails the dump with the
// fd named, and the program runs on, untraced.
func TestDumpUnsupportedFDResumes(t *testing.T) {
	needRoot(t)
	for _, c := range []struct {
		name, want string
		open       func() (*os.File, error)
	}{
		// A shut-down raw socket: refused.
		{"raw", "fd 3: socket socket:[", func() (*os.File, error) {
			s, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
			if err != nil {
				return nil, err
			}
			_ = unix.Shutdown(s, unix.SHUT_RD) // ENOTCONN, but shut down all the same
			return os.NewFile(uintptr(s), "raw"), nil
		}},
		// A character device with per-open state: reopening its path
		// would give another object.
		{"kmsg", "fd 3: character device /dev/kmsg", func() (*os.File, error) { return os.Open("/dev/kmsg") }},
	} {
		t.Run(c.name, func(t *testing.T) {
			f, err := c.open()
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			dir := t.TempDir()
			log := filepath.Join(dir, "log")
			cmd := exec.Command(workloads["counter"], log)
			cmd.ExtraFiles = []*os.File{f} // fd 3
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			w := &workload{t: t, cmd: cmd, pid: cmd.Process.Pid, log: log, output: os.DevNull, waited: make(chan error, 1)}
			go func() { w.waited <- cmd.Wait() }()
			t.Cleanup(func() { killAndForget(w.pid); <-w.waited })
			w.waitTicks(3)

			code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir())
			oneLineError(t, code, out, c.want)
			if state, tracer := procState(t, w.pid); tracer != 0 || state == "t" || state == "T" {
				t.Fatalf("after a failed dump: state %s, tracer %d", state, tracer)
			}
			w.waitTicks(3)
			w.finishOriginal(t, "after a failed dump")
		})
	}
}

// TestDumpTreeRefusedResumes fails a dump on a shut-down raw socket held
// by a child (refused): the one-line error names the task and the fd, and
// every task of the tree runs on untraced.
func TestDumpTreeRefusedResumes(t *testing.T) {
	needRoot(t)
	prog := "import os, socket, time\n" +
		"if os.fork() == 0:\n" +
		"    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)\n" +
		"    try: s.shutdown(socket.SHUT_RD)\n" +
		"    except OSError: pass\n" +
		"    time.sleep(60); os._exit(0)\n" +
		"time.sleep(60)\n"
	cmd := exec.Command("/usr/bin/python3", "-c", prog)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() })
	var kid int
	waitFor(t, "the child's socket", func() bool {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
		kid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/3", kid))
		return strings.HasPrefix(l, "socket:")
	})
	code, out := godwit(t, "dump", "-t", strconv.Itoa(cmd.Process.Pid), "-D", t.TempDir())
	oneLineError(t, code, out, fmt.Sprintf("task %d: fd 3: socket", kid))
	for _, p := range []int{cmd.Process.Pid, kid} {
		if state, tracer := procState(t, p); tracer != 0 || state == "t" || state == "T" {
			t.Fatalf("after a refused dump: %d state %s, tracer %d", p, state, tracer)
		}
	}
}

// Bad images: missing, truncated, corrupt; and a PID already in use.
func TestRestoreBadImages(t *testing.T) {
	needRoot(t)
	w := startC(t, false)
	dir := w.dump(t, "-R")

	code, out := godwit(t, "restore", "-D", dir)
	oneLineError(t, code, out, "in use")
	if len(tids(t, w.pid)) != 1 {
		t.Fatal("a refused restore touched the running program")
	}

	syscall.Kill(w.pid, syscall.SIGUSR1)
	<-w.waited
	w.waited <- nil
	for i := 0; i < 300 && pidExists(w.pid); i++ {
		time.Sleep(10 * time.Millisecond)
	}

	code, out = godwit(t, "restore", "-D", filepath.Join(dir, "no-such-dir"))
	oneLineError(t, code, out, "no-such-dir")
	code, out = godwit(t, "restore", "-D", t.TempDir())
	oneLineError(t, code, out, "")

	core := "core-" + strconv.Itoa(w.pid) + ".img"
	for _, c := range []struct {
		name string
		mod  func([]byte) []byte
		want string
	}{
		{"truncated", func(b []byte) []byte { return b[:len(b)/2] }, core},
		{"bad magic", func(b []byte) []byte { b[4] ^= 0xff; return b }, core},
		{"empty", func(b []byte) []byte { return nil }, core},
	} {
		t.Run(c.name, func(t *testing.T) {
			bad := t.TempDir()
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				b, err := os.ReadFile(filepath.Join(dir, e.Name()))
				if err != nil {
					continue
				}
				if e.Name() == core {
					b = c.mod(b)
				}
				os.WriteFile(filepath.Join(bad, e.Name()), b, 0o600)
			}
			code, out := godwit(t, "restore", "-D", bad)
			oneLineError(t, code, out, c.want)
			if pidExists(w.pid) {
				t.Fatalf("a failed restore left pid %d behind", w.pid)
			}
		})
	}
	os.Remove(filepath.Join(dir, core))
	code, out = godwit(t, "restore", "-D", dir)
	oneLineError(t, code, out, core)
}
