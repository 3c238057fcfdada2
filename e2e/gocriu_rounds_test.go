package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/rpc"
)

// pagesBytes is the size of the page data a round wrote into dir.
func pagesBytes(t *testing.T, dir string) int64 {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "pages-") {
			fi, err := e.Info()
			if err != nil {
				t.Fatal(err)
			}
			n += fi.Size()
		}
	}
	return n
}

// go-criu drives pre-dump rounds of a running program through godwit,
// each round naming its parent, then the final dump with track_mem and
// parent_img, then the restore: later rounds carry fewer pages than the
// first, and the restored program's memory and counter are intact.
func TestGoCriuPreDumpRounds(t *testing.T) {
	needRoot(t)
	w := startC(t, false, "-m", "32")
	root := t.TempDir()
	var holder int
	t.Cleanup(func() {
		if holder > 0 {
			if b, err := os.ReadFile("/proc/" + strconv.Itoa(holder) + "/comm"); err == nil && strings.TrimSpace(string(b)) == "godwit-track" {
				killAndForget(holder)
			}
		}
	})
	findHolder := func() {
		for _, p := range []string{"pre1", "pre2", "pre3"} {
			if b, err := os.ReadFile(filepath.Join(root, p, "godwit-track.json")); err == nil {
				if i := strings.Index(string(b), `"holder_pid":`); i >= 0 {
					s := strings.TrimLeft(string(b[i+len(`"holder_pid":`):]), " ")
					end := strings.IndexAny(s, ",}\n ")
					if end > 0 {
						holder, _ = strconv.Atoi(s[:end])
					}
				}
			}
		}
	}
	var sizes []int64
	rounds := []string{"pre1", "pre2", "pre3", "final"}
	for i, name := range rounds {
		dir := filepath.Join(root, name)
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		d := openDir(t, dir)
		o := &rpc.CriuOpts{Pid: ptr(int32(w.pid)), ImagesDirFd: ptr(int32(d.Fd())), LogLevel: ptr(int32(4)), LogFile: ptr("log"), TrackMem: ptr(true)}
		if i > 0 {
			o.ParentImg = ptr("../" + rounds[i-1])
		}
		var err error
		if name == "final" {
			err = goCriu().Dump(o, nil)
		} else {
			err = goCriu().PreDump(o, nil)
			findHolder()
		}
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, readFile(filepath.Join(dir, "log")))
		}
		sizes = append(sizes, pagesBytes(t, dir))
		if name != "final" {
			if st, tracer := procState(t, w.pid); tracer != 0 || st == "T" || st == "t" {
				t.Fatalf("after %s pid %d is %s, traced by %d", name, w.pid, st, tracer)
			}
			w.waitTicks(2)
		}
	}
	w.reapKilled(t)
	t.Logf("page bytes per round: %v", sizes)
	if sizes[0] < 32<<20 {
		t.Fatalf("first round wrote %d bytes, want the whole 32 MiB", sizes[0])
	}
	for i := 1; i < len(sizes); i++ {
		if sizes[i]*4 > sizes[0] {
			t.Errorf("round %s wrote %d bytes, not much less than the first's %d", rounds[i], sizes[i], sizes[0])
		}
	}
	d := openDir(t, filepath.Join(root, "final"))
	if err := goCriu().Restore(&rpc.CriuOpts{ImagesDirFd: ptr(int32(d.Fd())), LogLevel: ptr(int32(4)), LogFile: ptr("restore.log")}, nil); err != nil {
		t.Fatalf("Restore: %v\n%s", err, readFile(filepath.Join(root, "final", "restore.log")))
	}
	w.waitTicks(3)
	w.finishDetached(t)
	w.checkLog(0)
}
