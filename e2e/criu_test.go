package e2e

import (
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"godwit/internal/images"
	"godwit/internal/model/criuimg"
)

// The fixtures in testdata/criu42: CRIU 4.2 (built from its v4.2 tag,
// outside this repository) dumped two libc-free static programs, each
// running from /tmp/godwit-criu42/NAME; testdata/criu42/gen.sh says how
// and regenerates them.
//   - tick (PID 31000): two worker threads bump counter[0] and [1], the
//     main thread bumps ticks every 50 ms;
//   - alarm (PID 31100 and its child): a SIGALRM handler counts alarms of
//     a 5 ms interval timer in each process, which wait in pause(2).

// godwit restores CRIU 4.2's images: the restored tasks and threads are
// the dumped ones, hold the dumped values, and run on (their counters, read
// from their memory, keep growing).
func TestRestoreCRIU42Images(t *testing.T) {
	needRoot(t)
	for _, c := range []struct {
		name string
		vars []string // globals that must keep growing in every task
	}{
		{"tick", []string{"ticks", "counter", "counter+8"}},
		{"alarm", []string{"alarms"}},
	} {
		t.Run(c.name, func(t *testing.T) { restoreFixture(t, c.name, c.vars) })
	}
}

func restoreFixture(t *testing.T, name string, vars []string) {
	src := filepath.Join("testdata/criu42", name+"-images")
	exe := filepath.Join("/tmp/godwit-criu42", name)
	sd, err := images.Open(src, false)
	if err != nil {
		t.Fatal(err)
	}
	tree, err := criuimg.Read(sd)
	sd.Close()
	if err != nil {
		t.Fatalf("read %s: %v", src, err)
	}
	for _, k := range tree.Tasks {
		if pidExists(k.Pid) {
			t.Fatalf("pid %d, the fixture's, is in use: the fixture restores only there", k.Pid)
		}
	}
	bin, err := os.ReadFile(filepath.Join("testdata/criu42", name))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(exe), 0o755); err != nil {
		t.Fatal(err)
	}
	// A fresh copy of the exact binary CRIU dumped (restore checks its
	// size and build-id).
	os.Remove(exe)
	if err := os.WriteFile(exe, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, k := range tree.Tasks {
			killAndForget(k.Pid)
		}
	})
	code, out := godwit(t, "restore", "-D", dir, "-d", "-v4", "-o", "restore.log")
	if code != 0 {
		t.Fatalf("restore: exit %d: %s\n%s", code, out, readFile(filepath.Join(dir, "restore.log")))
	}
	addrs := symbols(t, exe, vars)
	for _, k := range tree.Tasks {
		var want, got []string
		for _, th := range k.Threads {
			want = append(want, strconv.Itoa(th.Tid))
		}
		tasks, err := os.ReadDir("/proc/" + strconv.Itoa(k.Pid) + "/task")
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range tasks {
			got = append(got, e.Name())
		}
		sort.Strings(want)
		if !slices.Equal(got, want) {
			t.Fatalf("task %d: restored threads %v, want %v", k.Pid, got, want)
		}
		read := func() []uint64 {
			f, err := os.Open("/proc/" + strconv.Itoa(k.Pid) + "/mem")
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var vals []uint64
			for _, a := range addrs {
				var b [8]byte
				if _, err := f.ReadAt(b[:], int64(a)); err != nil {
					t.Fatal(err)
				}
				vals = append(vals, binary.LittleEndian.Uint64(b[:]))
			}
			return vals
		}
		v0 := read()
		for i, v := range v0 {
			if v == 0 {
				t.Fatalf("task %d: %s is 0 after the restore: the dumped memory is not there", k.Pid, vars[i])
			}
		}
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			v1 := read()
			grown := true
			for i := range v1 {
				grown = grown && v1[i] >= v0[i]+2
			}
			if grown {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("task %d: %v went from %v to %v only\n%s", k.Pid, vars, v0, v1, readFile(filepath.Join(dir, "restore.log")))
			}
		}
	}
}

// symbols returns the addresses of exe's globals names ("sym+N": N bytes
// into sym).
func symbols(t *testing.T, exe string, names []string) []uint64 {
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
	var out []uint64
	for _, n := range names {
		base, off, _ := strings.Cut(n, "+")
		o, _ := strconv.Atoi(off)
		var a uint64
		for _, s := range syms {
			if s.Name == base {
				a = s.Value + uint64(o)
			}
		}
		if a == 0 {
			t.Fatalf("%s: no symbol %s", exe, base)
		}
		out = append(out, a)
	}
	return out
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
