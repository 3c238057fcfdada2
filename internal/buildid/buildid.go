// Package buildid reads the GNU build-id note of an ELF file, the identity
// CRIU's --file-validation=buildid compares between dump and restore.
package buildid

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"io"
)

// ntGNUBuildID is NT_GNU_BUILD_ID of include/uapi/linux/elf.h.
const ntGNUBuildID = 3

// maxNotes bounds how much of one PT_NOTE segment is read.
const maxNotes = 64 << 10

// Read returns the build-id of the ELF file r, or nil when r is not ELF or
// has no build-id note. Errors are for files that claim to be ELF but are
// malformed.
func Read(r io.ReaderAt) ([]byte, error) {
	var magic [4]byte
	if _, err := r.ReadAt(magic[:], 0); err != nil || string(magic[:]) != elf.ELFMAG {
		return nil, nil
	}
	f, err := elf.NewFile(r)
	if err != nil {
		return nil, err
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE || p.Filesz == 0 {
			continue
		}
		n := min(p.Filesz, maxNotes)
		b := make([]byte, n)
		if _, err := p.ReadAt(b, 0); err != nil && err != io.EOF {
			return nil, err
		}
		if id := FindNote(b, f.ByteOrder, p.Align); id != nil {
			return id, nil
		}
	}
	// Go's linker emits a PT_NOTE segment that covers only its own
	// .note.go.buildid and puts .note.gnu.build-id right after it. CRIU's
	// reader finds the GNU note there (it reads a note starting at the
	// segment's end), so it records a build-id for every Go program: read
	// the note sections too, to compute the same identity.
	for _, s := range f.Sections {
		if s.Type != elf.SHT_NOTE || s.Size == 0 {
			continue
		}
		b := make([]byte, min(s.Size, maxNotes))
		if _, err := s.ReadAt(b, 0); err != nil && err != io.EOF {
			return nil, err
		}
		if id := FindNote(b, f.ByteOrder, s.Addralign); id != nil {
			return id, nil
		}
	}
	return nil, nil
}

// FindNote returns the descriptor of the first NT_GNU_BUILD_ID note named
// "GNU" in the notes b, laid out with the given alignment (4 or 8), or nil.
func FindNote(b []byte, bo binary.ByteOrder, align uint64) []byte {
	if align != 8 {
		align = 4
	}
	pad := func(n uint64) uint64 { return (n + align - 1) &^ (align - 1) }
	for len(b) >= 12 {
		namesz, descsz, typ := uint64(bo.Uint32(b)), uint64(bo.Uint32(b[4:])), bo.Uint32(b[8:])
		b = b[12:]
		nameEnd := pad(namesz)
		if namesz > uint64(len(b)) || nameEnd > uint64(len(b)) {
			return nil
		}
		name := b[:namesz]
		b = b[nameEnd:]
		if descsz > uint64(len(b)) {
			return nil
		}
		desc := b[:descsz]
		if typ == ntGNUBuildID && bytes.Equal(bytes.TrimRight(name, "\x00"), []byte("GNU")) && descsz > 0 {
			return bytes.Clone(desc)
		}
		if next := pad(descsz); next <= uint64(len(b)) {
			b = b[next:]
		} else {
			return nil
		}
	}
	return nil
}

// Words packs a build-id into the little-endian 32-bit words of CRIU's
// RegFileEntry.build_id (zero-padded to a whole word).
func Words(id []byte) []uint32 {
	w := make([]uint32, (len(id)+3)/4)
	var b [4]byte
	for i := range w {
		b = [4]byte{}
		copy(b[:], id[4*i:])
		w[i] = binary.LittleEndian.Uint32(b[:])
	}
	return w
}

// Bytes unpacks the words of an image into a build-id (a whole number of
// words: GNU build-ids are 8, 16 or 20 bytes long).
func Bytes(words []uint32) []byte {
	b := make([]byte, 0, 4*len(words))
	for _, w := range words {
		b = binary.LittleEndian.AppendUint32(b, w)
	}
	return b
}

// Equal compares a build-id with the words of an image.
func Equal(id []byte, words []uint32) bool {
	got := Words(id)
	if len(got) != len(words) {
		return false
	}
	for i := range got {
		if got[i] != words[i] {
			return false
		}
	}
	return true
}
