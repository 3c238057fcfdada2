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

func TestOpenLogFile(t *testing.T) {
	dir := t.TempDir()
	o := opts.New()
	o.ImagesDir = dir
	o.LogFile = "dump.log"
	o.LogPID = true
	l, closeFn, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	l.Errorf("boom %d", 7)
	if err := closeFn(); err != nil {
		t.Fatal(err)
	}
	matches, _ := filepath.Glob(filepath.Join(dir, "dump.log.*"))
	if len(matches) != 1 {
		t.Fatalf("want one dump.log.PID in %s, got %v", dir, matches)
	}
	data, _ := os.ReadFile(matches[0])
	if string(data) != "Error: boom 7\n" {
		t.Errorf("log file holds %q", data)
	}
}
