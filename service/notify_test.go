package service

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/rpc"
	"golang.org/x/sys/unix"
)

// startSleeper starts a sleep in a session of its own, killed and reaped
// at cleanup.
func startSleeper(t *testing.T, cred *syscall.Credential) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("/bin/sleep", "600")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// imagesDirFD opens a new images directory for a request to pass.
func imagesDirFD(t *testing.T) (string, int) {
	t.Helper()
	dir := t.TempDir()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return dir, int(f.Fd())
}

// A client whose notify callback is slow does not stop other clients: while
// client A has not answered its pre-dump notification, client B's dump runs
// to its end. A's dump then goes on, its notifications in order, its log
// its own.
func TestNotifyDoesNotBlockOthers(t *testing.T) {
	needRoot(t)
	s := serve(t, Config{Group: -1, Hooks: Hooks{Unsupported: func(string, string) bool { return false }}})
	dumpReq := func(pid int, notify bool) *rpc.CriuReq {
		return &rpc.CriuReq{Type: rpc.CriuReqType_DUMP.Enum(), Opts: &rpc.CriuOpts{ImagesDirFd: ptr(int32(0)),
			Pid: ptr(int32(pid)), LeaveRunning: ptr(true), NotifyScripts: ptr(notify), LogLevel: ptr(int32(4)), LogFile: ptr("dump.log")}}
	}
	sa, sb := startSleeper(t, nil), startSleeper(t, nil)
	dirA, fdA := imagesDirFD(t)
	dirB, fdB := imagesDirFD(t)

	a := dial(t, s.Addr())
	resp := call(t, a, dumpReq(sa.Process.Pid, true), fdA)
	if resp.GetType() != rpc.CriuReqType_NOTIFY || resp.GetNotify().GetScript() != "pre-dump" {
		t.Fatalf("client A: want the pre-dump notification, got %v", resp)
	}
	// A sits in its callback. B is served meanwhile (readResp waits 30 s:
	// without the lock let go, B waits for A, which never answers first).
	if resp := call(t, dial(t, s.Addr()), dumpReq(sb.Process.Pid, false), fdB); !resp.GetSuccess() || resp.GetType() != rpc.CriuReqType_DUMP {
		t.Fatalf("client B while A's callback runs: %v", resp)
	}
	if _, err := os.Stat(filepath.Join(dirB, "inventory.img")); err != nil {
		t.Errorf("client B's dump: %v", err)
	}
	var got []string
	for {
		b, _ := (&rpc.CriuReq{Type: rpc.CriuReqType_NOTIFY.Enum(), NotifySuccess: ptr(true)}).MarshalVT()
		if _, err := a.Write(b); err != nil {
			t.Fatal(err)
		}
		resp = readResp(t, a)
		if resp.GetType() != rpc.CriuReqType_NOTIFY {
			break
		}
		got = append(got, resp.GetNotify().GetScript())
	}
	if !resp.GetSuccess() || resp.GetType() != rpc.CriuReqType_DUMP {
		t.Fatalf("client A's dump after its callback: %v", resp)
	}
	if len(got) == 0 || got[len(got)-1] != "post-dump" {
		t.Errorf("client A's notifications after pre-dump: %v, want post-dump last", got)
	}
	if _, err := os.Stat(filepath.Join(dirA, "inventory.img")); err != nil {
		t.Errorf("client A's dump: %v", err)
	}
	// Each log has its own dump's lines only: A's the lines written after
	// its callback too.
	la, err := os.ReadFile(filepath.Join(dirA, "dump.log"))
	if err != nil {
		t.Fatal(err)
	}
	lb, err := os.ReadFile(filepath.Join(dirB, "dump.log"))
	if err != nil {
		t.Fatal(err)
	}
	pidA, pidB := "dump "+strconv.Itoa(sa.Process.Pid), "dump "+strconv.Itoa(sb.Process.Pid)
	if !strings.Contains(string(la), pidA) || strings.Contains(string(la), pidB) {
		t.Errorf("client A's log: want %q and not %q:\n%s", pidA, pidB, la)
	}
	if !strings.Contains(string(lb), pidB) || strings.Contains(string(lb), pidA) {
		t.Errorf("client B's log: want %q and not %q:\n%s", pidB, pidA, lb)
	}
}

// No request runs inside another's freeze window: while client A's tree is
// frozen and its post-dump callback runs, client B's dump starts and stays
// inside the engine (its page server, a socket this test holds, never
// answers). A's dump still ends as soon as A answers its callback, with B
// still running: it does not wait for B's whole request before it resumes
// its tree.
func TestNotifyDoesNotWaitForOthers(t *testing.T) {
	needRoot(t)
	s := serve(t, Config{Group: -1, Hooks: Hooks{Unsupported: func(string, string) bool { return false }}})
	sa, sb := startSleeper(t, nil), startSleeper(t, nil)
	dirA, fdA := imagesDirFD(t)
	_, fdB := imagesDirFD(t)
	// B's page server: the test's end is never read, so B's dump blocks
	// in the engine on its first exchange with the server.
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	psServer, psClient := os.NewFile(uintptr(sp[0]), "ps-server"), os.NewFile(uintptr(sp[1]), "ps-client")
	defer psServer.Close()
	defer psClient.Close()

	a := dial(t, s.Addr())
	reqA := &rpc.CriuReq{Type: rpc.CriuReqType_DUMP.Enum(), Opts: &rpc.CriuOpts{ImagesDirFd: ptr(int32(0)),
		Pid: ptr(int32(sa.Process.Pid)), LeaveRunning: ptr(true), NotifyScripts: ptr(true), LogFile: ptr("dump.log")}}
	resp := call(t, a, reqA, fdA)
	answer := func() *rpc.CriuResp {
		b, _ := (&rpc.CriuReq{Type: rpc.CriuReqType_NOTIFY.Enum(), NotifySuccess: ptr(true)}).MarshalVT()
		if _, err := a.Write(b); err != nil {
			t.Fatal(err)
		}
		return readResp(t, a)
	}
	for resp.GetType() == rpc.CriuReqType_NOTIFY && resp.GetNotify().GetScript() != "post-dump" {
		resp = answer()
	}
	if resp.GetNotify().GetScript() != "post-dump" {
		t.Fatalf("client A: want the post-dump notification, got %v", resp)
	}
	if st := procState(t, sa.Process.Pid); st != "t" {
		t.Fatalf("client A's tree at post-dump: state %q, want t (frozen)", st)
	}

	b := dial(t, s.Addr())
	reqB := &rpc.CriuReq{Type: rpc.CriuReqType_DUMP.Enum(), Opts: &rpc.CriuOpts{ImagesDirFd: ptr(int32(0)),
		Pid: ptr(int32(sb.Process.Pid)), LeaveRunning: ptr(true), LogFile: ptr("dump.log"),
		Ps: &rpc.CriuPageServerInfo{Fd: ptr(int32(psClient.Fd()))}}}
	bm, _ := reqB.MarshalVT()
	if _, _, err := b.WriteMsgUnix(bm, unix.UnixRights(fdB), nil); err != nil {
		t.Fatal(err)
	}
	// B is inside the engine once its tree is frozen.
	deadline := time.Now().Add(time.Minute)
	for procState(t, sb.Process.Pid) != "t" {
		if time.Now().After(deadline) {
			t.Fatal("client B's dump did not freeze its tree")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A goes on at once; with a lock shared by both, it would wait for B,
	// which waits for this test: readResp gives up after 30 s.
	if resp = answer(); !resp.GetSuccess() || resp.GetType() != rpc.CriuReqType_DUMP {
		t.Fatalf("client A's dump after its callback: %v", resp)
	}
	if st := procState(t, sa.Process.Pid); st == "t" {
		t.Errorf("client A's tree after its dump: state %q, still stopped", st)
	}
	if _, err := os.Stat(filepath.Join(dirA, "inventory.img")); err != nil {
		t.Errorf("client A's dump: %v", err)
	}
	if st := procState(t, sb.Process.Pid); st != "t" {
		t.Errorf("client B's tree while A ended: state %q, want t (B still in its dump)", st)
	}
	// B's page server goes away: its dump fails and its tree runs on.
	psServer.Close()
	if resp := readResp(t, b); resp.GetSuccess() {
		t.Errorf("client B's dump without its page server: %v", resp)
	}
	if st := procState(t, sb.Process.Pid); st == "t" {
		t.Errorf("client B's tree after its failed dump: state %q, still stopped", st)
	}
}

// procState is the state letter of /proc/PID/stat.
func procState(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+3 > len(s) {
		t.Fatalf("/proc/%d/stat: %q", pid, s)
	}
	return s[i+2 : i+3]
}
