package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/rpc"
)

// Pre-dump rounds through the CLI (each a separate godwit process; the
// tracking survives in its godwit-track holder), then the final dump on
// top of them: the restored program's memory and files check out, and
// the holder is gone.
func TestPreDumpDumpRestore(t *testing.T) {
	needRoot(t)
	w := startC(t, false, "-m", "64", "-t", "4")
	root := t.TempDir()
	pid := strconv.Itoa(w.pid)
	var holder int
	t.Cleanup(func() {
		if holder > 0 {
			if b, err := os.ReadFile("/proc/" + strconv.Itoa(holder) + "/comm"); err == nil && strings.TrimSpace(string(b)) == "godwit-track" {
				killAndForget(holder)
			}
		}
	})
	prev := ""
	for i := 1; i <= 3; i++ {
		dir := filepath.Join(root, "pre"+strconv.Itoa(i))
		args := []string{"pre-dump", "-t", pid, "-D", dir, "--display-stats"}
		if prev != "" {
			args = append(args, "--prev-images-dir", prev)
		}
		code, out := godwit(t, args...)
		if code != 0 {
			t.Fatalf("pre-dump %d: exit %d: %s", i, code, out)
		}
		if i > 1 && (!strings.Contains(out, "Memory pages skipped from parent: ") || strings.Contains(out, "skipped from parent: 0 ")) {
			t.Errorf("pre-dump %d left nothing to its parent:\n%s", i, out)
		}
		var rec struct {
			HolderPid int `json:"holder_pid"`
		}
		b, err := os.ReadFile(filepath.Join(dir, "godwit-track.json"))
		if err != nil || json.Unmarshal(b, &rec) != nil || rec.HolderPid <= 0 {
			t.Fatalf("round %d: tracking record %q: %v", i, b, err)
		}
		if holder != 0 && rec.HolderPid != holder {
			t.Fatalf("round %d: holder %d, round 1's was %d", i, rec.HolderPid, holder)
		}
		holder = rec.HolderPid
		prev = "../pre" + strconv.Itoa(i)
		w.waitTicks(3)
	}
	final := filepath.Join(root, "final")
	if err := os.Mkdir(final, 0o700); err != nil { // the log goes there
		t.Fatal(err)
	}
	code, out := godwit(t, "dump", "-t", pid, "-D", final, "--prev-images-dir", prev, "--track-mem", "-v4", "-o", "dump.log")
	if code != 0 {
		t.Fatalf("dump: exit %d: %s\n%s", code, out, readFile(filepath.Join(final, "dump.log")))
	}
	w.reapKilled(t)
	for i := 0; alive(holder); i++ { // a zombie is gone: its reaper may be a pid 1 that does not reap
		if i > 2000 {
			t.Fatalf("holder %d survived the final dump", holder)
		}
		time.Sleep(10 * time.Millisecond)
	}
	r := restore(t, w, final)
	w.waitTicks(5)
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("restored program exited %d\n%s", code, w.tail())
	}
	w.checkLog(0)
}

// PRE_DUMP runs the CLI's pre-dump round: the program keeps running, the
// images hold its pages and the tracking record; a second round with
// parent_img leaves unchanged pages to the first.
func TestRPCPreDump(t *testing.T) {
	needRoot(t)
	w := startC(t, false, "-m", "16")
	root := t.TempDir()
	var holder int
	t.Cleanup(func() {
		if holder > 0 {
			if b, err := os.ReadFile("/proc/" + strconv.Itoa(holder) + "/comm"); err == nil && strings.TrimSpace(string(b)) == "godwit-track" {
				killAndForget(holder)
			}
		}
	})
	for i, parent := range []string{"", "../pre1"} {
		dir := filepath.Join(root, "pre"+strconv.Itoa(i+1))
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		d := openDir(t, dir)
		o := &rpc.CriuOpts{Pid: ptr(int32(w.pid)), ImagesDirFd: ptr(int32(d.Fd()))}
		if parent != "" {
			o.ParentImg = ptr(parent)
		}
		s := startSwrk(t)
		resp := s.call(t, &rpc.CriuReq{Type: rpc.CriuReqType_PRE_DUMP.Enum(), Opts: o})
		if !resp.GetSuccess() {
			t.Fatalf("PRE_DUMP %d: %q", i+1, resp.GetCrErrmsg())
		}
		for _, n := range []string{"inventory.img", "pagemap-" + strconv.Itoa(w.pid) + ".img", "godwit-track.json"} {
			if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
				t.Fatalf("PRE_DUMP %d: %v", i+1, err)
			}
		}
		var rec struct {
			HolderPid int `json:"holder_pid"`
		}
		b, _ := os.ReadFile(filepath.Join(dir, "godwit-track.json"))
		if json.Unmarshal(b, &rec) == nil {
			holder = rec.HolderPid
		}
		if st, tracer := procState(t, w.pid); tracer != 0 || st == "T" || st == "t" {
			t.Fatalf("after PRE_DUMP pid %d is %s, traced by %d", w.pid, st, tracer)
		}
		w.waitTicks(2)
	}
	if _, err := os.Readlink(filepath.Join(root, "pre2", "parent")); err != nil {
		t.Fatalf("second round: %v", err)
	}
}

// TestPreDumpTree: pre-dump rounds of a tree whose every task keeps
// writing private and shared memory (workloads/treemem.c); between rounds
// one task exits and a new one appears. The final dump writes only what
// changed, and the restored tree's memory is byte for byte what the
// frozen tree held. Locally, and with every round's pages sent to a page
// server whose images chain the same way.
func TestPreDumpTree(t *testing.T) {
	t.Run("local", func(t *testing.T) { testPreDumpTree(t, false) })
	t.Run("page-server", func(t *testing.T) { testPreDumpTree(t, true) })
}

func testPreDumpTree(t *testing.T, viaServer bool) {
	needRoot(t)
	w := startTree(t, cWorkload(t, "treemem"))
	var rootPid = strconv.Itoa(w.pid)
	var privAddr, shmAddr uint64
	var grandchild, bPid int
	waitFor(t, "the tree", func() bool {
		log := readFile(w.log)
		for _, l := range strings.Split(log, "\n") {
			f := strings.Fields(l)
			if len(f) == 2 && f[0] == "grandchild" {
				grandchild, _ = strconv.Atoi(f[1])
			}
			if len(f) >= 6 && f[0] == "ready" {
				bPid, _ = strconv.Atoi(f[5])
				privAddr, _ = strconv.ParseUint(f[1], 16, 64)
				shmAddr, _ = strconv.ParseUint(f[2], 16, 64)
			}
		}
		return grandchild > 0 && privAddr > 0
	})
	holders := map[int]bool{}
	t.Cleanup(func() {
		for h := range holders {
			if b, err := os.ReadFile("/proc/" + strconv.Itoa(h) + "/comm"); err == nil && strings.TrimSpace(string(b)) == "godwit-track" {
				killAndForget(h)
			}
		}
	})
	var all map[int]taskInfo
	t.Cleanup(func() {
		for p := range all {
			killAndForget(p)
		}
	})
	record := func(dir string) map[int]int {
		var rec struct {
			TargetPid int `json:"target_pid"`
			HolderPid int `json:"holder_pid"`
			Tasks     []struct {
				TargetPid int `json:"target_pid"`
				HolderPid int `json:"holder_pid"`
			} `json:"tasks"`
		}
		b, err := os.ReadFile(filepath.Join(dir, "godwit-track.json"))
		if err != nil || json.Unmarshal(b, &rec) != nil {
			t.Fatalf("tracking record %q: %v", b, err)
		}
		out := map[int]int{rec.TargetPid: rec.HolderPid}
		for _, k := range rec.Tasks {
			out[k.TargetPid] = k.HolderPid
		}
		for _, h := range out {
			holders[h] = true
		}
		return out
	}
	skipped := regexp.MustCompile(`Memory pages skipped from parent: (\d+)`)
	root := t.TempDir()
	prev := ""
	var newChild int
	for i := 1; i <= 3; i++ {
		before := subtree(t, w.pid)
		all = before
		dir := filepath.Join(root, "pre"+strconv.Itoa(i))
		args := []string{"pre-dump", "-t", rootPid, "-D", dir, "--display-stats"}
		if prev != "" {
			args = append(args, "--prev-images-dir", prev)
		}
		pagesDir := dir
		if viaServer {
			pagesDir = filepath.Join(root, "srv"+strconv.Itoa(i))
			var sargs []string
			if i > 1 {
				sargs = []string{"--prev-images-dir", "../srv" + strconv.Itoa(i-1)}
			}
			args = append(args, "--page-server", "--address", "127.0.0.1", "--port", pageServer(t, pagesDir, sargs...))
		}
		code, out := godwit(t, args...)
		if code != 0 {
			t.Fatalf("pre-dump %d: exit %d: %s", i, code, out)
		}
		rec := record(dir)
		for p := range before {
			if _, ok := rec[p]; !ok && p != grandchild {
				t.Fatalf("round %d: task %d is not tracked (record %v)", i, p, rec)
			}
			if _, err := os.Stat(filepath.Join(pagesDir, "pagemap-"+strconv.Itoa(p)+".img")); err != nil && rec[p] != 0 {
				t.Fatalf("round %d: %v", i, err)
			}
		}
		if i > 1 {
			m := skipped.FindStringSubmatch(out)
			if m == nil || m[1] == "0" {
				t.Errorf("round %d left nothing to its parent:\n%s", i, out)
			}
		}
		if i == 2 && !strings.Contains(out, fmt.Sprintf("task %d is new since the parent round", newChild)) {
			t.Errorf("round 2 did not take the new task %d whole:\n%s", newChild, out)
		}
		if i == 1 {
			// One task exits, another appears.
			killAndForget(grandchild)
			waitFor(t, "the grandchild to go", func() bool { return !pidExists(grandchild) })
			if err := syscall.Kill(w.pid, syscall.SIGUSR2); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "a new child", func() bool {
				m := regexp.MustCompile(`(?m)^child (\d+)$`).FindStringSubmatch(readFile(w.log))
				if m != nil {
					newChild, _ = strconv.Atoi(m[1])
				}
				return newChild > 0
			})
		}
		if i == 2 && !strings.Contains(out, "taken whole: its mapping") {
			t.Errorf("round 2 did not take the shared memory of the exited task whole:\n%s", out)
		}
		if i == 3 && !strings.Contains(out, "forked since the parent round") {
			t.Errorf("round 3 did not take the shared memory a short-lived child wrote whole:\n%s", out)
		}
		if i == 2 {
			// A child forks a task that writes shared memory and
			// exits before the next round sees it.
			syscall.Kill(bPid, syscall.SIGHUP)
			waitFor(t, "the short-lived child", func() bool { return strings.Contains(readFile(w.log), "ephemeral done") })
			if _, ok := rec[grandchild]; ok {
				t.Errorf("round 2 still tracks the exited task %d", grandchild)
			}
			if _, ok := rec[newChild]; !ok {
				t.Errorf("round 2 does not track the new task %d", newChild)
			}
		}
		prev = "../pre" + strconv.Itoa(i)
		w.waitTicks(3)
	}
	tasks := subtree(t, w.pid)
	all = tasks
	final := filepath.Join(root, "final")
	if err := os.Mkdir(final, 0o700); err != nil {
		t.Fatal(err)
	}
	dargs := []string{"dump", "-t", rootPid, "-D", final, "--prev-images-dir", prev, "--track-mem", "--leave-stopped",
		"--display-stats", "-v4", "-o", "dump.log"}
	restoreDir := final
	if viaServer {
		restoreDir = filepath.Join(root, "srvfinal")
		dargs = append(dargs, "--page-server", "--address", "127.0.0.1", "--port", pageServer(t, restoreDir, "--prev-images-dir", "../srv3"))
	}
	code, out := godwit(t, dargs...)
	if code != 0 {
		t.Fatalf("dump: exit %d: %s\n%s", code, out, readFile(filepath.Join(final, "dump.log")))
	}
	if m := skipped.FindStringSubmatch(out); m == nil || m[1] == "0" {
		t.Errorf("the final dump left nothing to its parent:\n%s", out)
	}
	if log := readFile(filepath.Join(final, "dump.log")); strings.Contains(log, "taken whole") {
		t.Errorf("the final dump took shared memory whole:\n%s", log)
	}
	for h := range holders {
		waitFor(t, fmt.Sprintf("holder %d to go", h), func() bool {
			b, err := os.ReadFile("/proc/" + strconv.Itoa(h) + "/comm")
			return err != nil || strings.TrimSpace(string(b)) != "godwit-track" || !alive(h)
		})
	}
	// Every task is stopped where it was dumped: its memory is the
	// reference.
	want := treeMemory(t, tasks, privAddr, shmAddr)
	for p := range tasks {
		syscall.Kill(p, syscall.SIGKILL)
	}
	for p := range tasks {
		waitFor(t, fmt.Sprintf("pid %d to go", p), func() bool { return !pidExists(p) })
	}
	if viaServer {
		// The pages are in the server's chain; the other images
		// beside them, as an operator gathers such a dump.
		waitFor(t, "the page server's images", func() bool {
			_, err := os.Stat(filepath.Join(restoreDir, "pagemap-"+rootPid+".img"))
			return err == nil
		})
		copyMissing(t, final, restoreDir)
	}
	code, out = godwit(t, "restore", "-D", restoreDir, "-d", "--leave-stopped", "-v4", "-o", "restore.log")
	if code != 0 {
		t.Fatalf("restore: exit %d: %s\n%s", code, out, readFile(filepath.Join(restoreDir, "restore.log")))
	}
	got := treeMemory(t, tasks, privAddr, shmAddr)
	for p, h := range want {
		if got[p] != h {
			t.Errorf("task %d: memory after restore differs: %s, dumped %s", p, got[p], h)
		}
	}
}

// treeMemory hashes the private and shared memory of each task.
func treeMemory(t *testing.T, tasks map[int]taskInfo, priv, shm uint64) map[int]string {
	t.Helper()
	out := map[int]string{}
	for p := range tasks {
		f, err := os.Open(fmt.Sprintf("/proc/%d/mem", p))
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		for _, r := range [][2]uint64{{priv, 1024 * 4096}, {shm, 512 * 4096}} {
			b := make([]byte, r[1])
			if _, err := f.ReadAt(b, int64(r[0])); err != nil {
				f.Close()
				t.Fatalf("read memory of %d at %#x: %v", p, r[0], err)
			}
			h.Write(b)
		}
		f.Close()
		out[p] = hex.EncodeToString(h.Sum(nil))[:16]
	}
	return out
}
