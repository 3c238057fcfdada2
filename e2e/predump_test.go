package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
	for i := 0; pidExists(holder); i++ {
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
