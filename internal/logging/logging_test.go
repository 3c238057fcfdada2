package logging

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"godwit/internal/opts"
)

func TestLevels(t *testing.T) {
	for level := 0; level <= 4; level++ {
		var b bytes.Buffer
		l := New(&b, level)
		l.Errorf("e")
		l.Warnf("w")
		l.Infof("i")
		l.Debugf("d")
		lines := strings.Split(strings.TrimSpace(b.String()), "\n")
		if b.Len() == 0 {
			lines = nil
		}
		if len(lines) != level {
			t.Errorf("level %d wrote %d lines: %q", level, len(lines), b.String())
		}
		stamped := regexp.MustCompile(`^\(\d\d\.\d{6}\) `)
		for _, ln := range lines {
			if stamped.MatchString(ln) != (level >= 3) {
				t.Errorf("level %d: timestamp presence wrong in %q", level, ln)
			}
		}
	}
}

// With --log-pid the run's lines stay in FILE and each task's go to
// FILE.PID, as CRIU splits them; without it, tasks share FILE.
func TestOpenLogFile(t *testing.T) {
	for _, perPid := range []bool{false, true} {
		dir := t.TempDir()
		o := opts.New()
		o.ImagesDir = dir
		o.LogFile = "dump.log"
		o.LogPID = perPid
		l, closeFn, err := Open(o)
		if err != nil {
			t.Fatal(err)
		}
		l.Task(42).Warnf("task %d", 42)
		l.Task(43).Warnf("task %d", 43)
		l.Task(42).Warnf("again")
		l.Errorf("boom %d", 7)
		if err := closeFn(); err != nil {
			t.Fatal(err)
		}
		want := map[string]string{
			"dump.log": "Warn: task 42\nWarn: task 43\nWarn: again\nError: boom 7\n",
		}
		if perPid {
			want = map[string]string{
				"dump.log":    "Error: boom 7\n",
				"dump.log.42": "Warn: task 42\nWarn: again\n",
				"dump.log.43": "Warn: task 43\n",
			}
		}
		ents, _ := os.ReadDir(dir)
		if len(ents) != len(want) {
			t.Errorf("perPid=%v: files %v, want %d", perPid, ents, len(want))
		}
		for name, w := range want {
			data, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil || string(data) != w {
				t.Errorf("perPid=%v: %s holds %q (%v), want %q", perPid, name, data, err, w)
			}
			if st, err := os.Stat(filepath.Join(dir, name)); err == nil && st.Mode().Perm() != 0o600 {
				t.Errorf("%s: mode %v", name, st.Mode())
			}
		}
	}
}

// A log name that is a symlink or a second hard link is refused, and its
// target is left as it was: the log is often in a directory a client owns.
func TestOpenFileRefusesLinks(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	sym := filepath.Join(dir, "sym.log")
	if err := os.Symlink(victim, sym); err != nil {
		t.Fatal(err)
	}
	hard := filepath.Join(dir, "hard.log")
	if err := os.Link(victim, hard); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{sym, hard} {
		if f, err := openFile(name); err == nil {
			f.Close()
			t.Errorf("%s: opened", name)
		}
	}
	if b, _ := os.ReadFile(victim); string(b) != "keep" {
		t.Fatalf("victim changed: %q", b)
	}
	f, err := openFile(filepath.Join(dir, "ok.log"))
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if f, err := openFile(os.DevNull); err != nil {
		t.Errorf("%s: %v", os.DevNull, err)
	} else {
		f.Close()
	}
}
