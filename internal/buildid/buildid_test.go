package buildid

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestReadMatchesFile(t *testing.T) {
	f, err := os.Open("/bin/sh")
	if err != nil {
		t.Fatal(err) // Debian always has /bin/sh
	}
	defer f.Close()
	id, err := Read(f)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("readelf", "-n", "/bin/sh").Output()
	if err != nil {
		t.Fatalf("readelf (binutils, installed with gcc by scripts/setup): %v", err)
	}
	var want string
	for _, ln := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(ln), "Build ID: "); ok {
			want = v
		}
	}
	if want == "" {
		t.Fatal("readelf shows no build-id for /bin/sh: Debian builds it with one")
	}
	if got := bytesHex(id); got != want {
		t.Fatalf("build-id of /bin/sh = %s, readelf says %s", got, want)
	}
	// Not ELF: no id, no error.
	if id, err := Read(bytes.NewReader([]byte("#!/bin/sh\n"))); id != nil || err != nil {
		t.Fatalf("script: %x, %v", id, err)
	}
}

// A Go binary (this test) has its GNU build-id note outside its PT_NOTE
// segment, where CRIU finds it: it is read from the note sections.
func TestReadGoBinary(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	id, err := Read(f)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("readelf", "-n", exe).Output()
	if err != nil {
		t.Fatalf("readelf: %v", err)
	}
	var want string
	for _, ln := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(ln), "Build ID: "); ok {
			want = v
		}
	}
	if want == "" {
		t.Fatal("readelf shows no GNU build-id for the test binary: Go's linker writes one")
	}
	if got := bytesHex(id); got != want {
		t.Fatalf("build-id of %s = %q, readelf says %s", exe, got, want)
	}
}

func bytesHex(b []byte) string {
	const hx = "0123456789abcdef"
	s := make([]byte, 0, 2*len(b))
	for _, c := range b {
		s = append(s, hx[c>>4], hx[c&15])
	}
	return string(s)
}

func TestWords(t *testing.T) {
	w := Words([]byte{1, 2, 3, 4, 5})
	if len(w) != 2 || w[0] != 0x04030201 || w[1] != 5 {
		t.Fatalf("Words = %#x", w)
	}
	if !Equal([]byte{1, 2, 3, 4, 5}, w) || Equal([]byte{1, 2, 3, 4, 6}, w) {
		t.Fatal("Equal")
	}
}

func note(name string, typ uint32, desc []byte) []byte {
	var b []byte
	b = binary.LittleEndian.AppendUint32(b, uint32(len(name)+1))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(desc)))
	b = binary.LittleEndian.AppendUint32(b, typ)
	b = append(b, name...)
	b = append(b, 0)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	b = append(b, desc...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func TestFindNote(t *testing.T) {
	b := append(note("GNU", 1, []byte{9, 9, 9, 9}), note("GNU", ntGNUBuildID, []byte{0xaa, 0xbb, 0xcc})...)
	if got := FindNote(b, binary.LittleEndian, 4); !bytes.Equal(got, []byte{0xaa, 0xbb, 0xcc}) {
		t.Fatalf("FindNote = %x", got)
	}
	if got := FindNote(note("Go", ntGNUBuildID, []byte{1}), binary.LittleEndian, 4); got != nil {
		t.Fatalf("other owner: %x", got)
	}
}

func FuzzFindNote(f *testing.F) {
	f.Add(note("GNU", ntGNUBuildID, []byte{1, 2, 3, 4}), uint64(4))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 3, 0, 0, 0}, uint64(8))
	f.Fuzz(func(t *testing.T, b []byte, align uint64) {
		id := FindNote(b, binary.LittleEndian, align)
		if len(id) > len(b) {
			t.Fatalf("build-id longer than its notes")
		}
	})
}

func FuzzRead(f *testing.F) {
	f.Add([]byte(elf.ELFMAG))
	if b, err := os.ReadFile("/bin/true"); err == nil && len(b) < 1<<20 {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = Read(bytes.NewReader(b))
	})
}
