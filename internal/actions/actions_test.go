package actions

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRunSetsEnvironment(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	s := &Scripts{
		Commands:  []string{`echo "$CRTOOLS_SCRIPT_ACTION $CRTOOLS_IMAGE_DIR $CRTOOLS_INIT_PID" >> ` + out},
		ImagesDir: dir,
	}
	if err := s.Run(PostDump, 42); err != nil {
		t.Fatal(err)
	}
	if err := s.Run(PreRestore, 0); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(out)
	want := "post-dump " + dir + " 42\npre-restore " + dir + " \n"
	if string(got) != want {
		t.Errorf("script saw %q, want %q", got, want)
	}
}

func TestFailingScriptFails(t *testing.T) {
	s := &Scripts{Commands: []string{"true", "exit 3"}}
	err := s.Run(PreDump, 0)
	if err == nil || !strings.Contains(err.Error(), "pre-dump") {
		t.Errorf("want an error naming the action, got %v", err)
	}
	var none *Scripts
	if err := none.Run(PreDump, 0); err != nil {
		t.Errorf("nil Scripts: %v", err)
	}
}
