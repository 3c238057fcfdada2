package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"godwit/internal/buildid"
)

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
}

// flipBuildID changes one byte of path's ELF build-id, keeping its size:
// a rebuilt file that only validation by build-id tells apart. It returns
// a function that puts the byte back.
func flipBuildID(t *testing.T, path string) func() {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	id, err := buildid.Read(bytes.NewReader(b))
	if err != nil || id == nil {
		t.Fatalf("%s has no build-id (%v)", path, err)
	}
	at := bytes.Index(b, id)
	if at < 0 {
		t.Fatalf("build-id of %s not found in it", path)
	}
	b[at] ^= 0xff
	if err := os.WriteFile(path, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return func() {
		b[at] ^= 0xff
		if err := os.WriteFile(path, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// restoreRefused runs a restore that must refuse before starting anything,
// with one line naming every want.
func restoreRefused(t *testing.T, w *workload, dir string, want ...string) {
	t.Helper()
	code, out := godwit(t, "restore", "-D", dir)
	if code == 0 {
		t.Fatalf("restore succeeded, want a refusal naming %v", want)
	}
	for _, s := range want {
		if !strings.Contains(out, s) {
			t.Errorf("refusal %q does not name %q", out, s)
		}
	}
	if strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("refusal is not one line: %q", out)
	}
	if pidExists(w.pid) {
		t.Fatalf("a refused restore left pid %d", w.pid)
	}
}

// TestRestoreRefusesChangedFiles dumps a program that runs from a copied
// executable with a copied libc, then changes them: a library rebuilt to
// the same size (another build-id), an executable of another size, and
// other permissions; restore must refuse each, naming the file, and
// restore once they are as dumped.
func TestRestoreRefusesChangedFiles(t *testing.T) {
	needRoot(t)
	bin := t.TempDir()
	exe := filepath.Join(bin, "counter")
	copyFile(t, workloads["counter"], exe, 0o755)
	out, err := exec.Command("ldd", exe).Output()
	if err != nil {
		t.Fatalf("ldd: %v", err)
	}
	var libc string
	for _, ln := range strings.Split(string(out), "\n") {
		if f := strings.Fields(ln); len(f) >= 3 && f[0] == "libc.so.6" {
			libc = f[2]
		}
	}
	if libc == "" {
		t.Fatalf("no libc in ldd output:\n%s", out)
	}
	lib := filepath.Join(bin, "libc.so.6")
	copyFile(t, libc, lib, 0o755)

	w := startWorkload(t, "/usr/bin/env", "LD_LIBRARY_PATH="+bin, exe, "-t", "2")
	maps, _ := os.ReadFile("/proc/" + itoa(w.pid) + "/maps")
	if !strings.Contains(string(maps), lib) {
		t.Fatalf("the program does not map %s:\n%s", lib, maps)
	}
	dir := w.dump(t)
	w.reapKilled(t)

	// Same size, another build-id.
	undo := flipBuildID(t, lib)
	restoreRefused(t, w, dir, lib, "build-id")
	// A mode godwit does not know is a usage error.
	code, out2 := godwit(t, "restore", "-D", dir, "--file-validation", "bogus")
	if code == 0 || !strings.Contains(out2, "file-validation") {
		t.Fatalf("bad --file-validation accepted: %d %s", code, out2)
	}
	undo()

	// Another size.
	f, err := os.OpenFile(exe, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte{0})
	f.Close()
	restoreRefused(t, w, dir, exe, "changed since the dump")
	if err := os.Truncate(exe, int64(len(mustRead(t, workloads["counter"])))); err != nil {
		t.Fatal(err)
	}

	// Other permissions.
	if err := os.Chmod(exe, 0o700); err != nil {
		t.Fatal(err)
	}
	restoreRefused(t, w, dir, exe, "mode")
	if err := os.Chmod(exe, 0o755); err != nil {
		t.Fatal(err)
	}

	// As dumped: the restore passes and the program's own checks hold.
	r := restore(t, w, dir)
	w.waitTicks(3)
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("restored program exited %d\n%s", code, w.tail())
	}
	w.checkLog(0)
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func itoa(n int) string { return strconv.Itoa(n) }
