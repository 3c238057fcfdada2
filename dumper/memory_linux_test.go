package dumper

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/mm"

	"godwit/internal/images"
	"godwit/internal/pagexfer"
	"godwit/internal/procfs"
)

// TestDumpMemoryLayout checks which pages are saved, and their bytes:
// written private pages yes, zero-page and untouched pages no, PROT_NONE
// pages yes, a written page of a private file mapping yes (its clean pages
// no), shared anonymous memory once in pagemap-shmem-INODE at object
// offsets, whichever view wrote it. Both transfer methods.
func TestDumpMemoryLayout(t *testing.T) {
	needRoot(t)
	bin := filepath.Join(t.TempDir(), "mem")
	if out, err := exec.Command("gcc", "-O1", "-o", bin, "testdata/mem.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	for _, method := range []string{"vmsplice", "readv"} {
		t.Run(method, func(t *testing.T) {
			tmp := t.TempDir()
			log := filepath.Join(tmp, "log")
			p := start(t, "", "", bin, filepath.Join(tmp, "file"), log)
			waitFile(t, log, "ready")
			var priv, shared, none, file uint64
			b, _ := os.ReadFile(log)
			if _, err := fmt.Sscanf(string(b), "priv=%v shared=%v none=%v file=%v", &priv, &shared, &none, &file); err != nil {
				t.Fatalf("parse %q: %v", b, err)
			}
			dir := t.TempDir()
			o := dumpOpts(p.Pid, dir)
			o.LeaveRunning = true
			o.Method, _ = ParseMethod(method)
			res, err := Dump(o, nil)
			if err != nil {
				t.Fatal(err)
			}
			if res.Method.String() != method {
				t.Errorf("method %v, want %s", res.Method, method)
			}
			assertRunningUntraced(t, p.Pid)
			d, err := images.Open(dir, false)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			pr, err := images.OpenPages(d, images.PagemapImg(p.Pid))
			if err != nil {
				t.Fatal(err)
			}
			defer pr.Close()
			page := func(r *images.PageReader, addr uint64) ([]byte, bool) {
				rg, ok := r.Find(addr)
				if !ok || !rg.Present() {
					return nil, false
				}
				buf := make([]byte, pageSize)
				if _, err := r.ReadAt(buf, addr); err != nil {
					t.Fatalf("read page %#x: %v", addr, err)
				}
				return buf, true
			}
			expect := func(r *images.PageReader, what string, addr uint64, tag int, present bool) {
				t.Helper()
				got, ok := page(r, addr)
				if ok != present {
					t.Errorf("%s page %#x: present %v, want %v", what, addr, ok, present)
					return
				}
				if ok && !bytes.Equal(got, bytes.Repeat([]byte{byte(tag)}, pageSize)) {
					t.Errorf("%s page %#x: bytes %d…, want %d", what, addr, got[0], byte(tag))
				}
			}
			for i := 0; i < 64; i++ {
				expect(pr, "private", priv+uint64(i)*pageSize, 1+i, i < 32)
			}
			for i := 0; i < 4; i++ {
				expect(pr, "PROT_NONE", none+uint64(i)*pageSize, 80+i, true)
			}
			expect(pr, "file", file, 'f', false)
			expect(pr, "file", file+pageSize, 101, true)
			expect(pr, "file", file+2*pageSize, 'f', false)
			for i := 0; i < 16; i++ {
				if _, ok := pr.Find(shared + uint64(i)*pageSize); ok {
					t.Errorf("shared page %d in the private pagemap", i)
				}
			}
			// Shared memory: once, at object offsets.
			maps, err := procfs.ReadMaps(p.Pid)
			if err != nil {
				t.Fatal(err)
			}
			var ino uint64
			for _, m := range maps {
				if m.Start == shared {
					ino = m.Inode
				}
			}
			sr, err := images.OpenPages(d, images.PagemapShmemImg(ino))
			if err != nil {
				t.Fatal(err)
			}
			defer sr.Close()
			// Pages 8..11 were written through the second view only:
			// the object's data is the union of its views.
			for i := 0; i < 16; i++ {
				expect(sr, "shared", uint64(i)*pageSize, 40+i, i < 12)
			}
			// VMAs.
			mme, err := images.ReadOne[*mm.MmEntry](d, images.MmImg(p.Pid))
			if err != nil {
				t.Fatal(err)
			}
			found := 0
			for _, v := range mme.Vmas {
				switch v.GetStart() {
				case priv:
					found++
					if v.GetStatus() != images.VmaAreaRegular|images.VmaAnonPrivate || v.GetMadv() != 1<<10 {
						t.Errorf("private vma status %#x madv %#x", v.GetStatus(), v.GetMadv())
					}
				case shared:
					found++
					if v.GetStatus() != images.VmaAreaRegular|images.VmaAnonShared || v.GetShmid() != ino {
						t.Errorf("shared vma status %#x shmid %d (inode %d)", v.GetStatus(), v.GetShmid(), ino)
					}
				case none:
					found++
					if v.GetProt() != 0 {
						t.Errorf("PROT_NONE vma prot %#x", v.GetProt())
					}
				case file:
					found++
					if v.GetStatus() != images.VmaAreaRegular|images.VmaFilePrivate {
						t.Errorf("file vma status %#x", v.GetStatus())
					}
				}
			}
			if found != 4 {
				t.Errorf("found %d of the 4 VMAs in mm", found)
			}
			if res.Mem.Zero < 16 {
				t.Errorf("zero pages skipped %d, want >= 16", res.Mem.Zero)
			}
			mems := crit(t, "x", dir, "mems")
			if !strings.Contains(mems, "shmem") {
				t.Errorf("crit x mems shows no shmem: %s", mems)
			}
		})
	}
}

// TestMemoryDumperRunning reads memory without the rest of a dump and
// without stopping the target (the shape pre-dump rounds use), into a
// page server's local sink.
func TestMemoryDumperRunning(t *testing.T) {
	needRoot(t)
	bin := filepath.Join(t.TempDir(), "mem")
	if out, err := exec.Command("gcc", "-O1", "-o", bin, "testdata/mem.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	tmp := t.TempDir()
	log := filepath.Join(tmp, "log")
	p := start(t, "", "", bin, filepath.Join(tmp, "file"), log)
	waitFile(t, log, "ready")
	var priv uint64
	b, _ := os.ReadFile(log)
	if _, err := fmt.Sscanf(string(b), "priv=%v", &priv); err != nil {
		t.Fatal(err)
	}
	vmas, err := CollectVMAs(p.Pid, nil)
	if err != nil {
		t.Fatal(err)
	}
	md, err := NewMemoryDumper(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer md.Close()
	dir := t.TempDir()
	d, err := images.Open(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	sink, err := pagexfer.NewImageSink(d, images.PagemapImg(p.Pid), 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := md.DumpPrivate(vmas, sink); err != nil {
		t.Fatal(err)
	}
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	if st, tracer := status(t, p.Pid); st == 'T' || tracer != 0 {
		t.Errorf("target state %c tracer %d", st, tracer)
	}
	pr, err := images.OpenPages(d, images.PagemapImg(p.Pid))
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	buf := make([]byte, pageSize)
	for i := 0; i < 32; i++ {
		if _, err := pr.ReadAt(buf, priv+uint64(i)*pageSize); err != nil || buf[0] != byte(1+i) || buf[pageSize-1] != byte(1+i) {
			t.Fatalf("page %d: %v %d", i, err, buf[0])
		}
	}
	if _, ok := pr.Find(priv + 40*pageSize); ok {
		t.Error("zero page dumped")
	}
	if s := md.Stats(); s.Written < 37 || s.Zero < 16 { // 32 private + 4 PROT_NONE + 1 file page; 16 zero
		t.Errorf("stats %+v", s)
	}
}
