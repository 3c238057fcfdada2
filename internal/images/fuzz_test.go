package images

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pstree"
	"google.golang.org/protobuf/proto"
)

// fuzzNames are the image names the fuzzer reads its input as; the last
// is unknown, so the magic decides.
var fuzzNames = []string{"core-1.img", "mm-1.img", "pstree.img", "inventory.img", "pagemap-1.img",
	"stats-dump", "files.img", "fdinfo-2.img", "pipes-data.img", "cpuinfo.img", "unknown.bin"}

// seedImage returns the bytes of an image written by this package.
func seedImage(f *testing.F, name string, entries ...proto.Message) []byte {
	var buf bytes.Buffer
	k, err := KindOf(name)
	if err != nil {
		f.Fatal(err)
	}
	w, err := NewEntryWriter(&buf, name, k)
	if err != nil {
		f.Fatal(err)
	}
	for _, e := range entries {
		if err := w.Write(e); err != nil {
			f.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		f.Fatal(err)
	}
	return buf.Bytes()
}

func FuzzReadImage(f *testing.F) {
	f.Add(uint8(0), seedImage(f, "core-1.img", x86Core("seed", true)))
	f.Add(uint8(1), seedImage(f, "mm-1.img", testMM()))
	f.Add(uint8(2), seedImage(f, "pstree.img", &pstree.PstreeEntry{Pid: u32(1), Ppid: u32(0), Pgid: u32(1), Sid: u32(1), Threads: []uint32{1, 2}}))
	f.Add(uint8(3), seedImage(f, "inventory.img", NewInventory(InventoryOptions{})))
	f.Add(uint8(6), seedImage(f, "files.img", regFile(1, "/x")))
	f.Add(uint8(7), seedImage(f, "fdinfo-2.img", &fdinfo.FdinfoEntry{Id: u32(1), Flags: u32(0), Type: fdinfo.FdTypes_REG.Enum(), Fd: u32(0)}))
	f.Add(uint8(10), seedImage(f, "mm-1.img", testMM()))
	f.Add(uint8(0), []byte{})
	f.Add(uint8(0), le(magicCommon, 0x55053847, 0xffffffff))
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		name := fuzzNames[int(which)%len(fuzzNames)]
		for _, size := range []int64{int64(len(data)), -1} {
			r, err := NewEntryReader(bytes.NewReader(data), name, size)
			if err != nil {
				if !errors.Is(err, ErrFormat) {
					t.Fatalf("header error is not ErrFormat: %v", err)
				}
				continue
			}
			for i := 0; ; i++ {
				m, err := newFor[proto.Message](r, i)
				if err != nil {
					break
				}
				before := r.Offset()
				err = r.Next(m)
				if err == io.EOF {
					break
				}
				if err != nil {
					if !errors.Is(err, ErrFormat) && !isTypeErr(err) {
						t.Fatalf("entry error is not ErrFormat: %v", err)
					}
					break
				}
				if r.Offset() <= before || r.Offset() > int64(len(data)) {
					t.Fatalf("offset %d after %d (len %d)", r.Offset(), before, len(data))
				}
				// Anything decoded must encode again.
				if _, err := proto.Marshal(m); err != nil {
					t.Fatalf("decoded entry does not marshal: %v", err)
				}
				if name == "pipes-data.img" && r.SkipPayload(int64(i)) != nil {
					break
				}
			}
		}
	})
}

func isTypeErr(err error) bool { return bytes.Contains([]byte(err.Error()), []byte("no message type")) }

func FuzzReadPagemap(f *testing.F) {
	var buf bytes.Buffer
	k, _ := KindOf("pagemap-1.img")
	w, _ := NewEntryWriter(&buf, "pagemap-1.img", k)
	d := f.TempDir()
	dir, err := Open(d, false)
	if err != nil {
		f.Fatal(err)
	}
	pw, err := CreatePages(dir, "pagemap-1.img", 1)
	if err != nil {
		f.Fatal(err)
	}
	pw.Add(0x1000, 2, PagePresent|PageLazy)
	pw.Write(make([]byte, 2*PageSize))
	pw.Add(0x5000, 1, PageInParent)
	pw.Add(0x7000, 1, PagePresent)
	pw.Write(make([]byte, PageSize))
	if err := pw.Close(); err != nil {
		f.Fatal(err)
	}
	r, _ := dir.OpenRead("pagemap-1.img")
	seed, _ := io.ReadAll(r)
	r.Close()
	dir.Close()
	f.Add(seed)
	_ = w
	f.Add(le(magicCommon, 0x56084025))
	f.Add(append(le(magicCommon, 0x56084025, 2), 0x08, 0x01))
	f.Fuzz(func(t *testing.T, data []byte) {
		id, ranges, err := ReadPagemap(bytes.NewReader(data), "pagemap-1.img", int64(len(data)))
		if err != nil {
			return
		}
		_ = id
		var end uint64
		var off int64
		for i, p := range ranges {
			if p.Vaddr%PageSize != 0 || p.NrPages == 0 || (i > 0 && p.Vaddr < end) {
				t.Fatalf("accepted bad range %d: %+v", i, p)
			}
			if p.Present() {
				if p.Offset != off {
					t.Fatalf("range %d offset %d, want %d", i, p.Offset, off)
				}
				off += int64(p.NrPages * PageSize)
			} else if p.Offset != -1 {
				t.Fatalf("non-present range %d has offset %d", i, p.Offset)
			}
			end = p.End()
		}
	})
}
