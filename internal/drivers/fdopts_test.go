package drivers

import (
	"bytes"
	"testing"
)

func TestInheritKeyFile(t *testing.T) {
	for in, want := range map[string]string{
		"file[1b:acc2b0]": "file[1b:acc2b0]",
		"file[001B:0AB]":  "file[1b:ab]",
	} {
		if got, err := InheritKey(in); err != nil || got != want {
			t.Errorf("InheritKey(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"file[]", "file[1b]", "file[x:1]", "file[1:2", "file[1:2]x"} {
		if got, err := InheritKey(in); err == nil {
			t.Errorf("InheritKey(%q) = %q, want an error", in, got)
		}
	}
}

// A watch line without a handle (the filesystem cannot encode one) parses,
// with no handle; a full line keeps its handle.
func TestParseInotifyWatchHandle(t *testing.T) {
	w, err := parseInotifyWatch("1 ino:2a sdev:800001 mask:2 ignored_mask:0")
	if err != nil || w.Wd != 1 || w.Ino != 0x2a || w.Dev != 0x800001 || w.Mask != 2 || w.Handle != nil {
		t.Fatalf("no handle: %+v, %v", w, err)
	}
	w, err = parseInotifyWatch("1 ino:2a sdev:800001 mask:2 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:2a00000000000000")
	if err != nil || w.HandleType != 1 || !bytes.Equal(w.Handle, []byte{0x2a, 0, 0, 0, 0, 0, 0, 0}) {
		t.Fatalf("handle: %+v, %v", w, err)
	}
	if _, err := parseInotifyWatch("1 ino:zz sdev:800001 mask:2 ignored_mask:0"); err == nil {
		t.Fatal("a bad inode number parsed")
	}
}
