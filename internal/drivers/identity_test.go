package drivers

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// A file replaced at its path after validation is caught once reopened:
// VerifyOpened compares the opened fd with the validated identity.
func TestVerifyOpened(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "lib.so")
	if err := os.WriteFile(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	want := FileIdentity{Dev: st.Dev, Ino: st.Ino}
	open := func() uint64 {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return uint64(f.Fd())
	}
	if err := VerifyOpened(os.Getpid(), open(), path, want); err != nil {
		t.Fatalf("the validated file: %v", err)
	}
	// Same size and contents, another inode: an upgrade's rename.
	tmp := filepath.Join(dir, "lib.so.new")
	if err := os.WriteFile(tmp, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	err := VerifyOpened(os.Getpid(), open(), path, want)
	if err == nil || !strings.Contains(err.Error(), "replaced during the restore") {
		t.Fatalf("a replaced file: %v", err)
	}
}
