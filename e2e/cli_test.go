package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// The foundation's promise: cpuinfo dump, then check, and crit decodes it.
func TestCpuinfoDumpCheckCrit(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	if code, out := godwit(t, "cpuinfo", "dump", "-D", dir); code != 0 {
		t.Fatalf("cpuinfo dump: %d %s", code, out)
	}
	for _, caps := range []string{"", "--cpu-cap=all", "--cpu-cap=ins", "--cpu-cap=none"} {
		args := []string{"cpuinfo", "check", "-D", dir}
		if caps != "" {
			args = append(args, caps)
		}
		if code, out := godwit(t, args...); code != 0 {
			t.Errorf("cpuinfo check %s: %d %s", caps, code, out)
		}
	}
	out, err := exec.Command("crit", "show", filepath.Join(dir, "cpuinfo.img")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"vendor_id"`) {
		t.Fatalf("crit show cpuinfo.img: %v\n%s", err, out)
	}
}

// check tells the truth about godwit on this kernel: pre-dump and lazy
// restore are built, so their features are reported from the kernel;
// soft-dirty is off here, so --all never looks good.
func TestCheckAll(t *testing.T) {
	needRoot(t)
	code, out := godwit(t, "check", "--all")
	if code != 1 || !strings.Contains(out, "Looks good but") || !strings.Contains(out, "soft_dirty") {
		t.Errorf("check --all: exit %d\n%s", code, out)
	}
	if code, out := godwit(t, "check"); code != 0 || strings.TrimSpace(out) != "Looks good." {
		t.Errorf("check: exit %d\n%s", code, out)
	}
	if code, out := godwit(t, "check", "--feature", "clone3_set_tid"); code != 0 || !strings.Contains(out, "clone3_set_tid is supported") {
		t.Errorf("check --feature clone3_set_tid: exit %d %s", code, out)
	}
	for _, f := range []string{"uffd-noncoop", "lazy_pages", "mem_dirty_track"} {
		if code, out := godwit(t, "check", "--feature", f); code != 0 || !strings.Contains(out, f+" is supported") {
			t.Errorf("check --feature %s: exit %d %s", f, code, out)
		}
	}
	for _, f := range []string{"soft_dirty"} {
		if code, out := godwit(t, "check", "--feature", f); code != 1 || !strings.Contains(out, f+" is not supported") {
			t.Errorf("check --feature %s: exit %d %s", f, code, out)
		}
	}
}

// Debian's crit reads what godwit dump writes.
func TestCritReadsDump(t *testing.T) {
	needRoot(t)
	w := startC(t, false, "-t", "2")
	dir := w.dump(t, "-R")
	pid := strconv.Itoa(w.pid)
	for _, img := range []string{"inventory.img", "pstree.img", "core-" + pid + ".img", "mm-" + pid + ".img",
		"pagemap-" + pid + ".img", "files.img", "fs-" + pid + ".img", "stats-dump"} {
		if out, err := exec.Command("crit", "show", filepath.Join(dir, img)).CombinedOutput(); err != nil {
			t.Errorf("crit show %s: %v\n%s", img, err, out)
		}
	}
	ps, err := exec.Command("crit", "x", dir, "ps").CombinedOutput()
	if err != nil || !strings.Contains(string(ps), pid) {
		t.Errorf("crit x ps: %v\n%s", err, ps)
	}
	fds, err := exec.Command("crit", "x", dir, "fds").CombinedOutput()
	if err != nil || !strings.Contains(string(fds), filepath.Base(w.log)) {
		t.Errorf("crit x fds: %v\n%s", err, fds)
	}
	mems, err := exec.Command("crit", "x", dir, "mems").CombinedOutput()
	if err != nil || !strings.Contains(string(mems), "counter") {
		t.Errorf("crit x mems: %v\n%s", err, mems)
	}
	syscall.Kill(w.pid, syscall.SIGUSR1)
}

// Statistics go to the work dir (-W), as criu(8) says, and --display-stats
// prints them.
func TestStatsInWorkDir(t *testing.T) {
	needRoot(t)
	w := startC(t, false)
	work := t.TempDir()
	code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir(), "-R", "-W", work, "--display-stats")
	if code != 0 {
		t.Fatalf("dump: %d %s", code, out)
	}
	if !strings.Contains(out, "Memory pages written: ") {
		t.Errorf("--display-stats printed %q", out)
	}
	if out, err := exec.Command("crit", "show", filepath.Join(work, "stats-dump")).CombinedOutput(); err != nil {
		t.Errorf("no stats-dump in -W: %v\n%s", err, out)
	}
	syscall.Kill(w.pid, syscall.SIGUSR1)
}

// Images hold the program's memory: the images directory godwit creates,
// every file in it and the log are readable by their owner only, even
// under umask 000.
func TestDumpImagesPrivate(t *testing.T) {
	needRoot(t)
	w := startC(t, false)
	work := t.TempDir()
	dir := filepath.Join(work, "new", "images")
	// The umask is set in a shell: it is process-wide, and other tests run.
	cmd := exec.Command("sh", "-c", `umask 000 && exec "$@"`, "sh",
		godwitBin, "dump", "-t", strconv.Itoa(w.pid), "-D", dir, "-R", "-W", work, "-o", "dump.log", "--display-stats")
	out, err := cmd.CombinedOutput()
	syscall.Kill(w.pid, syscall.SIGUSR1)
	if err != nil {
		t.Fatalf("dump: %v\n%s", err, out)
	}
	n := 0
	err = filepath.Walk(filepath.Join(work, "new"), func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		n++
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v: group or world can access it", p, fi.Mode().Perm())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 5 {
		t.Errorf("only %d entries under the images directory", n)
	}
	for _, name := range []string{"dump.log", "stats-dump"} {
		fi, err := os.Stat(filepath.Join(work, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v: group or world can access it", name, fi.Mode().Perm())
		}
	}
}
