package e2e

import (
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"godwit/internal/images"
	"godwit/internal/model/criuimg"
)

// The fixture in testdata/criu42: CRIU 4.2 (built from its v4.2 tag,
// outside this repository) dumped testdata/criu42/tick, a libc-free static
// program with two worker threads, running as PID 31000 from
// /tmp/godwit-criu42/tick; testdata/criu42/gen.sh regenerates it.
const (
	fixturePid = 31000
	fixtureExe = "/tmp/godwit-criu42/tick"
)

// godwit restores CRIU 4.2's images: the restored program's three threads
// run on (its tick count and both workers' counters, read from its
// memory, keep growing).
func TestRestoreCRIU42Images(t *testing.T) {
	needRoot(t)
	if pidExists(fixturePid) {
		t.Fatalf("pid %d, the fixture's, is in use: the fixture restores only there", fixturePid)
	}
	bin, err := os.ReadFile("testdata/criu42/tick")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(fixtureExe), 0o755); err != nil {
		t.Fatal(err)
	}
	// A fresh copy of the exact binary CRIU dumped (restore checks its
	// size and build-id).
	os.Remove(fixtureExe)
	if err := os.WriteFile(fixtureExe, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ents, err := os.ReadDir("testdata/criu42/images")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("testdata/criu42/images", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { killAndForget(fixturePid) })
	code, out := godwit(t, "restore", "-D", dir, "-d", "-v4", "-o", "restore.log")
	if code != 0 {
		t.Fatalf("restore: exit %d: %s\n%s", code, out, readFile(filepath.Join(dir, "restore.log")))
	}
	tasks, err := os.ReadDir("/proc/" + strconv.Itoa(fixturePid) + "/task")
	if err != nil {
		t.Fatal(err)
	}
	var tids []string
	for _, e := range tasks {
		tids = append(tids, e.Name())
	}
	if len(tids) != 3 || tids[0] != "31000" || tids[1] != "31002" || tids[2] != "31003" {
		t.Fatalf("restored threads %v, want 31000 31002 31003", tids)
	}
	ticks, counter := symbols(t, fixtureExe)
	read := func() (uint64, [2]uint64) {
		f, err := os.Open("/proc/" + strconv.Itoa(fixturePid) + "/mem")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var b [24]byte
		if _, err := f.ReadAt(b[:8], int64(ticks)); err != nil {
			t.Fatal(err)
		}
		if _, err := f.ReadAt(b[8:], int64(counter)); err != nil {
			t.Fatal(err)
		}
		le := binary.LittleEndian
		return le.Uint64(b[:]), [2]uint64{le.Uint64(b[8:]), le.Uint64(b[16:])}
	}
	t0, c0 := read()
	if t0 == 0 || c0[0] == 0 || c0[1] == 0 {
		t.Fatalf("restored memory: ticks %d, counters %v: the dumped values are not there", t0, c0)
	}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		t1, c1 := read()
		if t1 >= t0+2 && c1[0] > c0[0] && c1[1] > c0[1] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restored program stuck: ticks %d→%d, counters %v→%v", t0, t1, c0, c1)
		}
	}
}

// symbols returns the addresses of tick's globals ticks and counter.
func symbols(t *testing.T, exe string) (ticks, counter uint64) {
	t.Helper()
	f, err := elf.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range syms {
		switch s.Name {
		case "ticks":
			ticks = s.Value
		case "counter":
			counter = s.Value
		}
	}
	if ticks == 0 || counter == 0 {
		t.Fatalf("%s: no ticks/counter symbols", exe)
	}
	return ticks, counter
}

// godwit's images of a multi-threaded C program (dynamic and static) keep
// every invariant CRIU 4.x's restore checks.
func TestImagesPassCRIUChecks(t *testing.T) {
	needRoot(t)
	for _, static := range []bool{false, true} {
		w := startC(t, static, "-t", "2")
		dir := w.dump(t)
		w.reapKilled(t)
		d, err := images.Open(dir, false)
		if err != nil {
			t.Fatal(err)
		}
		err = criuimg.CheckCRIU(d)
		d.Close()
		if err != nil {
			t.Errorf("static=%v: %v", static, err)
		}
	}
}
