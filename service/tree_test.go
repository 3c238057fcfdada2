package service

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/rpc"
	"golang.org/x/sys/unix"
)

// forkThenDrop runs, as root, a process that forks a child which stays
// root, then becomes uid and gid 65534 and execs sleep: a process the
// group's client owns whose child it does not. It prints the child's pid.
const forkThenDrop = `
import os, sys, time
pid = os.fork()
if pid == 0:
    time.sleep(600); os._exit(0)
print(pid, flush=True)
os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
os.execv("/bin/sleep", ["sleep", "600"])
`

// A --service-group client may dump a tree only if it may dump every task
// of it: its own process with a child of root's is refused, naming the
// child, and neither task is left traced. PRE_DUMP is refused outright.
func TestGroupClientTree(t *testing.T) {
	needRoot(t)
	s := serve(t, Config{Group: 65534, Hooks: Hooks{Unsupported: func(string, string) bool { return false }}})
	openDirs(t, filepath.Dir(s.Addr()))
	own := filepath.Join(t.TempDir(), "own")
	if err := os.Mkdir(own, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(own, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	openDirs(t, filepath.Dir(own))
	cmd := exec.Command("/usr/bin/python3", "-c", forkThenDrop)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	parent := cmd.Process.Pid
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	child, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(child, syscall.SIGKILL) }) // reaped by its parent's end
	// Wait until the parent runs sleep as 65534.
	for {
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(parent) + "/comm"); err != nil || strings.TrimSpace(string(b)) == "sleep" {
			break
		}
		syscall.Nanosleep(&syscall.Timespec{Nsec: 1e6}, nil)
	}
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/"+strconv.Itoa(parent), &st); err != nil || st.Uid != 65534 {
		t.Fatalf("parent %d: %v, uid %d", parent, err, st.Uid)
	}
	req := func(typ rpc.CriuReqType) *rpc.CriuReq {
		return &rpc.CriuReq{Type: typ.Enum(), Opts: &rpc.CriuOpts{ImagesDirFd: ptr(int32(0)), Pid: ptr(int32(parent)), LeaveRunning: ptr(true)}}
	}
	resp, _ := runClient(t, nobody, s.Addr(), req(rpc.CriuReqType_DUMP), own)
	if want := "task " + strconv.Itoa(child) + ": uid 65534 may not dump it"; resp.GetSuccess() || !strings.Contains(resp.GetCrErrmsg(), want) {
		t.Errorf("group member dumping its process with root's child: %v, want %q", resp, want)
	}
	resp, _ = runClient(t, nobody, s.Addr(), req(rpc.CriuReqType_PRE_DUMP), own)
	if resp.GetSuccess() || !strings.Contains(resp.GetCrErrmsg(), "pre-dump: not allowed to clients admitted by --service-group") {
		t.Errorf("group member pre-dumping: %v", resp)
	}
	for _, pid := range []int{parent, child} {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		if err != nil || !strings.Contains(string(b), "TracerPid:\t0\n") || strings.Contains(string(b), "State:\tt") {
			t.Errorf("task %d after the refusals: %v\n%s", pid, err, b)
		}
	}
	if ents, _ := os.ReadDir(own); len(ents) != 0 {
		t.Errorf("images written for refused requests: %v", ents)
	}
}

// The check on the frozen tree: a task of another uid among the pids is
// refused, the client's own are not.
func TestMayDumpFrozen(t *testing.T) {
	needRoot(t)
	mine := startSleeper(t, nobody)
	roots := startSleeper(t, nil)
	p := peer{cred: unix.Ucred{Uid: 65534, Gid: 65534}, delegated: true}
	if err := p.mayDumpFrozen(mine.Process.Pid, []int{mine.Process.Pid}); err != nil {
		t.Errorf("its own task: %v", err)
	}
	err := p.mayDumpFrozen(mine.Process.Pid, []int{mine.Process.Pid, roots.Process.Pid})
	if want := "task " + strconv.Itoa(roots.Process.Pid) + ": uid 65534 may not dump it"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("root's task among them: %v, want %q", err, want)
	}
}
