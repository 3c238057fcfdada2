package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// memtickerCheck waits for the "check ok|bad" line a memticker logs after
// off once sent SIGUSR1 (logLine's wait); when none comes in limit it
// fails with what the program at root PID pid is doing (procDiag), so that
// a migrated program that makes no progress names its cause.
func memtickerCheck(t *testing.T, log string, pid, off int, limit time.Duration) []string {
	t.Helper()
	re := regexp.MustCompile(`^check (ok|bad) .*`)
	deadline := time.Now().Add(limit)
	for {
		if m := matchFrom(log, re, off); m != nil {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("no line matching %q in %s after byte %d in %v:\n%s\nthe program (pid %d):\n%s", re, log, off, limit, readFile(log), pid, procDiag(pid, log))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// procDiag describes what process pid is doing: per thread its state,
// tracer, signal sets, wchan, syscall and kernel stack; whether it burns
// CPU; whether a VMA is still registered with a userfaultfd (smaps "um"
// or "uw": a fault there waits for a reader); and whether one of its fds
// is log (the file the test reads).
func procDiag(pid int, log string) string {
	var b strings.Builder
	dir := "/proc/" + strconv.Itoa(pid)
	cpu := func() string {
		st, err := os.ReadFile(dir + "/stat")
		if err != nil {
			return "?"
		}
		s := string(st)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if len(f) < 13 {
			return "?"
		}
		return f[11] + "+" + f[12] // utime+stime in ticks
	}
	c0 := cpu()
	tids, err := os.ReadDir(dir + "/task")
	if err != nil {
		return fmt.Sprintf("  gone: %v\n", err)
	}
	for _, e := range tids {
		td := dir + "/task/" + e.Name()
		fmt.Fprintf(&b, "  thread %s:", e.Name())
		if st, err := os.ReadFile(td + "/status"); err == nil {
			for _, ln := range strings.Split(string(st), "\n") {
				for _, k := range []string{"State:", "TracerPid:", "SigPnd:", "ShdPnd:", "SigBlk:", "SigIgn:", "SigCgt:"} {
					if strings.HasPrefix(ln, k) {
						fmt.Fprintf(&b, " %s", strings.Join(strings.Fields(ln), " "))
					}
				}
			}
		}
		for _, f := range []string{"wchan", "syscall"} {
			if v, err := os.ReadFile(td + "/" + f); err == nil {
				fmt.Fprintf(&b, " %s=%s", f, strings.TrimSpace(string(v)))
			}
		}
		b.WriteString("\n")
		if v, err := os.ReadFile(td + "/stack"); err == nil && len(v) > 0 {
			for _, ln := range strings.Split(strings.TrimSpace(string(v)), "\n") {
				fmt.Fprintf(&b, "    %s\n", ln)
			}
		}
	}
	time.Sleep(200 * time.Millisecond)
	fmt.Fprintf(&b, "  cpu ticks (utime+stime) %s, 200ms later %s\n", c0, cpu())
	if sm, err := os.ReadFile(dir + "/smaps"); err == nil {
		var head string
		for _, ln := range strings.Split(string(sm), "\n") {
			if f := strings.Fields(ln); len(f) > 0 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
				head = ln
				continue
			}
			if v, ok := strings.CutPrefix(ln, "VmFlags:"); ok {
				for _, fl := range strings.Fields(v) {
					if fl == "um" || fl == "uw" || fl == "ui" {
						fmt.Fprintf(&b, "  userfaultfd-registered (%s): %s\n", fl, head)
						break
					}
				}
			}
		}
	}
	var want syscall.Stat_t
	if err := syscall.Stat(log, &want); err == nil {
		fds, _ := os.ReadDir(dir + "/fd")
		found := false
		for _, e := range fds {
			var st syscall.Stat_t
			p := filepath.Join(dir, "fd", e.Name())
			if syscall.Stat(p, &st) == nil && st.Dev == want.Dev && st.Ino == want.Ino {
				found = true
			}
		}
		if !found {
			fmt.Fprintf(&b, "  no fd of it is %s (dev %d ino %d)\n", log, want.Dev, want.Ino)
			for _, e := range fds {
				l, _ := os.Readlink(filepath.Join(dir, "fd", e.Name()))
				fmt.Fprintf(&b, "    fd %s -> %s\n", e.Name(), l)
			}
		}
	}
	return b.String()
}

// The diagnosis reads a live program's state: a stopped child shows T, a
// sleeping one its wchan, and a log it does not hold is named.
func TestProcDiag(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	if err := os.WriteFile(log, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p, err := os.StartProcess("/bin/sleep", []string{"sleep", "60"}, &os.ProcAttr{Files: []*os.File{nil, nil, nil, f}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { p.Kill(); p.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(procDiag(p.Pid, log), "State: S") {
		if time.Now().After(deadline) {
			t.Fatalf("sleep never sleeping:\n%s", procDiag(p.Pid, log))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if d := procDiag(p.Pid, log); strings.Contains(d, "no fd of it is") {
		t.Errorf("the log is its fd 3, diagnosis says otherwise:\n%s", d)
	}
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(procDiag(p.Pid, log), "State: T") {
		if time.Now().After(deadline) {
			t.Fatalf("stopped sleep not seen stopped:\n%s", procDiag(p.Pid, log))
		}
		time.Sleep(10 * time.Millisecond)
	}
	other := filepath.Join(dir, "other")
	if err := os.WriteFile(other, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	d := procDiag(p.Pid, other)
	if !strings.Contains(d, "no fd of it is "+other) {
		t.Errorf("a file it does not hold not named:\n%s", d)
	}
	t.Logf("diagnosis of a stopped sleep(1):\n%s", d)
}

// A line written after the offset is found however long the log was
// before it (a loaded machine makes memticker log thousands of bytes of
// gaps; with the offset taken from readFile's capped tail the check line
// was never seen), and a line before the offset is not.
func TestLogLineAfterLongLog(t *testing.T) {
	p := filepath.Join(t.TempDir(), "log")
	var long strings.Builder
	long.WriteString("check ok pages=1 writes=0 ticks=1 maxgap_us=1\n")
	for i := 0; long.Len() < 3*4000; i++ {
		fmt.Fprintf(&long, "gap us=%d ticks=%d\n", 5000+i, i)
	}
	if err := os.WriteFile(p, []byte(long.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	off := logSize(p)
	if off != long.Len() {
		t.Fatalf("logSize %d, wrote %d bytes", off, long.Len())
	}
	re := regexp.MustCompile(`^check (ok|bad) (.*)`)
	if m := matchFrom(p, re, off); m != nil {
		t.Fatalf("a line before the offset matched: %q", m[0])
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "gap us=9999 ticks=99999\ncheck ok pages=2 writes=3 ticks=4 maxgap_us=5\n")
	f.Close()
	m := logLine(t, p, re, off, 5*time.Second)
	if m[2] != "pages=2 writes=3 ticks=4 maxgap_us=5" {
		t.Errorf("matched %q, want the line written after the offset", m[0])
	}
}
