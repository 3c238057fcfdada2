package e2e

import (
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"godwit/internal/images"
	"godwit/internal/model"
	"godwit/internal/model/criuimg"
)

// The fixtures in testdata/criu42: CRIU 4.2 (built from its v4.2 tag,
// outside this repository) dumped two libc-free static programs, each
// running from /tmp/godwit-criu42/NAME; testdata/criu42/gen.sh says how
// and regenerates them.
//   - tick (PID 31000): two worker threads bump counter[0] and [1], the
//     main thread bumps ticks every 50 ms;
//   - alarm (PID 31100 and its child): a SIGALRM handler counts alarms of
//     a 5 ms interval timer in each process, which wait in pause(2);
//   - tree (PID 31200): a parent and a child counting ticks, and a zombie
//     child of the parent that exited with status 7; on SIGUSR1 the parent
//     reaps it and stores its wait status in reaped;
//   - fds (PID 31300): a regular file read to offset 1234 (fd 3), a pipe
//     with bytes queued (4, 5), a unix stream socketpair with bytes queued
//     (6, 7), an eventfd holding 42 (8), a small deleted file (9) and a
//     sparse one of 20000 bytes (10, in CRIU's chunks), an inotify with
//     two watches (11, written newest first) and a unix listener on a path
//     (12, its name with CRIU's trailing NUL); on SIGUSR1 it checks them
//     all and stores 1 in verdict (else the number of the failed check).

// godwit restores CRIU 4.2's images: the restored tasks and threads are
// the dumped ones, hold the dumped values, and run on (their counters, read
// from their memory, keep growing).
func TestRestoreCRIU42Images(t *testing.T) {
	needRoot(t)
	for _, c := range []struct {
		name string
		vars []string // globals that must keep growing in every live task
		// answer: after SIGUSR1 to the root task, this global must
		// become want.
		answer string
		want   uint64
	}{
		{"tick", []string{"ticks", "counter", "counter+8"}, "", 0},
		{"alarm", []string{"alarms"}, "", 0},
		{"tree", []string{"ticks"}, "reaped", 1<<31 | 7<<8}, // exited with status 7
		{"fds", []string{"ticks"}, "verdict", 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			tree, exe := restoreFixture(t, c.name, c.vars)
			if c.answer == "" {
				return
			}
			root := tree.Tasks[0].Pid
			if err := syscall.Kill(root, syscall.SIGUSR1); err != nil {
				t.Fatal(err)
			}
			addr := symbols(t, exe, []string{c.answer})[0]
			var got uint64
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				got = readWord(t, root, addr)
				if got != 0 || time.Now().After(deadline) {
					break
				}
			}
			if got != c.want {
				t.Fatalf("%s = %#x after SIGUSR1, want %#x", c.answer, got, c.want)
			}
		})
	}
}

// readWord reads the 8 bytes at addr in pid's memory.
func readWord(t *testing.T, pid int, addr uint64) uint64 {
	t.Helper()
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/mem")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [8]byte
	if _, err := f.ReadAt(b[:], int64(addr)); err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint64(b[:])
}

// fdsData is /tmp/godwit-criu42/fds.data as gen.sh writes it: the fds
// fixture's regular file must be there, at its dumped size.
var fdsData = strings.Repeat("g", 4096)

// installFixture puts a fresh copy of the exact binary CRIU dumped at
// /tmp/godwit-criu42/NAME (restore checks its size and build-id), and the
// fds fixture's data file, and returns the binary's path.
func installFixture(t *testing.T, name string) string {
	t.Helper()
	exe := filepath.Join("/tmp/godwit-criu42", name)
	bin, err := os.ReadFile(filepath.Join("testdata/criu42", name))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(exe), 0o755); err != nil {
		t.Fatal(err)
	}
	// A new inode: a running copy of the old one would make the write
	// fail (ETXTBSY).
	os.Remove(exe)
	if err := os.WriteFile(exe, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if name == "fds" {
		// The regular file at its dumped size, and what the inotify
		// watches (the deleted files come from the images).
		os.Remove("/tmp/godwit-criu42/fds.d/new")
		if err := os.WriteFile("/tmp/godwit-criu42/fds.data", []byte(fdsData), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll("/tmp/godwit-criu42/fds.d", 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile("/tmp/godwit-criu42/fds.d/f", nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return exe
}

func restoreFixture(t *testing.T, name string, vars []string) (*model.Tree, string) {
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
	// Another test's short-lived process may hold a fixture's PID for
	// a moment on a busy machine: wait for it to go.
	for _, k := range tree.Tasks {
		for deadline := time.Now().Add(30 * time.Second); pidExists(k.Pid); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("pid %d, the fixture's, is in use: the fixture restores only there", k.Pid)
			}
		}
	}
	installFixture(t, name)
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
		if k.State == model.Dead || k.State == model.Zombie { // CRIU writes a zombie as TASK_DEAD
			if st, ok := statOf(k.Pid); !ok || st.State != 'Z' || st.Ppid != k.Ppid || st.Sid != k.Sid {
				t.Fatalf("task %d: %+v after the restore: want a zombie of %d in session %d", k.Pid, st, k.Ppid, k.Sid)
			}
			continue
		}
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
			var vals []uint64
			for _, a := range addrs {
				vals = append(vals, readWord(t, k.Pid, a))
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
	return tree, exe
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

// godwit's images of a multi-threaded C program (dynamic and static), and
// of the tree and fds fixture programs (a zombie; a regular file with an
// offset, a pipe and a socketpair with queued bytes, an eventfd), keep
// every invariant CRIU 4.x's restore checks.
func TestImagesPassCRIUChecks(t *testing.T) {
	needRoot(t)
	check := func(what, dir string) {
		d, err := images.Open(dir, false)
		if err != nil {
			t.Fatal(err)
		}
		err = criuimg.CheckCRIU(d)
		d.Close()
		if err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}
	for _, static := range []bool{false, true} {
		w := startC(t, static, "-t", "2")
		dir := w.dump(t)
		w.reapKilled(t)
		check(fmt.Sprintf("counter static=%v", static), dir)
	}
	for _, name := range []string{"tree", "fds"} {
		exe := installFixture(t, name)
		cmd := exec.Command(exe)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pid := cmd.Process.Pid
		waited := make(chan error, 1)
		go func() { waited <- cmd.Wait() }()
		t.Cleanup(func() {
			// tree's running child too, if the dump did not kill
			// the tree (its zombie goes with the parent).
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
			syscall.Kill(pid, syscall.SIGKILL) // first: its children are then reaped by init
			for _, c := range strings.Fields(string(b)) {
				if cpid, err := strconv.Atoi(c); err == nil {
					killAndForget(cpid)
				}
			}
			killAndForget(pid)
			<-waited
		})
		// Until the program holds its files (and the tree's zombie
		// exists).
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			addr := symbols(t, exe, []string{"ticks"})[0]
			if readWord(t, pid, addr) > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s did not start", name)
			}
		}
		dir := t.TempDir()
		if code, out := godwit(t, "dump", "-t", strconv.Itoa(pid), "-D", dir, "-v4", "-o", "dump.log"); code != 0 {
			t.Fatalf("dump %s: exit %d: %s\n%s", name, code, out, readFile(filepath.Join(dir, "dump.log")))
		}
		check(name, dir)
	}
}

// CRIU 4.2's own images pass CheckCRIU: it checks CRIU's invariants, not
// godwit's layout.
func TestCRIU42ImagesPassCRIUChecks(t *testing.T) {
	dirs, err := filepath.Glob("testdata/criu42/*-images")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	for _, dir := range dirs {
		d, err := images.Open(dir, false)
		if err != nil {
			t.Fatal(err)
		}
		err = criuimg.CheckCRIU(d)
		d.Close()
		if err != nil {
			t.Errorf("%s: %v", dir, err)
		}
	}
}
