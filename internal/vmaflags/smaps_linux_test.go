package vmaflags

import (
	"bufio"
	"errors"
	"math/bits"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"godwit/internal/procfs"
)

// startFlags starts testdata/flags.c stopped (SIGSTOP) once its regions
// are made; it is killed at cleanup.
func startFlags(t *testing.T) int {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "flags")
	if out, err := exec.Command("gcc", "-O2", "-Wall", "-o", bin, "testdata/flags.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	cmd := exec.Command(bin)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		_ = cmd.Wait()
	})
	if l, err := bufio.NewReader(out).ReadString('\n'); err != nil || l != "ready\n" {
		t.Fatalf("flags: %q, %v", l, err)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	for {
		st, err := procfs.ReadStatus(pid)
		if err != nil {
			t.Fatal(err)
		}
		if st.State == 'T' {
			return pid
		}
	}
}

// TestSmapsMatchesSmaps: on a stopped process whose VMAs carry every flag
// a dump reads, Smaps gives the mappings and VmFlags smaps gives.
func TestSmapsMatchesSmaps(t *testing.T) {
	n, err := Calibrate()
	if err != nil {
		t.Fatal(err)
	}
	pid := startFlags(t)
	got, err := Smaps(pid, n)
	if err != nil {
		t.Fatal(err)
	}
	want, err := procfs.ReadSmaps(pid)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d entries, smaps has %d", len(got), len(want))
	}
	seen := map[string]bool{}
	for i := range want {
		g, w := &got[i], &want[i]
		if g.Mapping != w.Mapping {
			t.Errorf("entry %d: %+v, smaps %+v", i, g.Mapping, w.Mapping)
		}
		if w.Path == "[vsyscall]" {
			continue
		}
		if !slices.Equal(g.VmFlags, w.VmFlags) {
			t.Errorf("%#x-%#x: VmFlags %v, smaps %v", w.Start, w.End, g.VmFlags, w.VmFlags)
		}
		for _, f := range w.VmFlags {
			seen[f] = true
		}
	}
	// The workload's flags were really there (else this proves little).
	for _, f := range []string{"dc", "wf", "dd", "hg", "nh", "sr", "rr", "lo", "gd", "sh", "ex", "nr"} {
		if !seen[f] {
			t.Errorf("no VMA with %q: the workload did not make it", f)
		}
	}
}

// TestSmapsRefusesUnknownBits: a flag the calibration did not learn is
// never named (the dump reads smaps instead).
func TestSmapsRefusesUnknownBits(t *testing.T) {
	n, err := Calibrate()
	if err != nil {
		t.Fatal(err)
	}
	pid := startFlags(t)
	// Forget "rd": every readable VMA now has an unknown bit.
	less := *n
	less.known &^= 1
	if _, err := Smaps(pid, &less); !errors.Is(err, ErrUnnamed) {
		t.Fatalf("Smaps with a bit unknown: %v, want ErrUnnamed", err)
	}
	unknown := uint64(1) << bits.TrailingZeros64(^n.Known())
	if _, ok := n.Mnemonics(0x1 | unknown); ok {
		t.Fatalf("flags with the unknown bit %#x were named", unknown)
	}
}

func TestParse(t *testing.T) {
	rec := func(s, e, f uint64) []byte {
		var b []byte
		for _, v := range []uint64{s, e, f} {
			for i := range 8 {
				b = append(b, byte(v>>(8*i)))
			}
		}
		return b
	}
	ok := append(rec(0x1000, 0x3000, 0x73), rec(0x3000, 0x4000, 0x71)...)
	vs, err := parse(ok)
	if err != nil || len(vs) != 2 || vs[1] != (VMA{0x3000, 0x4000, 0x71}) {
		t.Fatalf("parse: %v %+v", err, vs)
	}
	for name, b := range map[string][]byte{
		"short":     ok[:30],
		"empty vma": rec(0x1000, 0x1000, 0),
		"unordered": append(rec(0x3000, 0x4000, 0), rec(0x1000, 0x2000, 0)...),
	} {
		if _, err := parse(b); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}
