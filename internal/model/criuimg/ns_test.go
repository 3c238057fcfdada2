package criuimg

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	ipc_shm "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-shm"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"godwit/internal/images"
	"godwit/internal/model"
)

func sampleNamespaces(tr *model.Tree) {
	root := tr.Root()
	root.IDs.NS.UTS, root.IDs.NS.IPC = 4026532101, 4026532102
	tr.UTS = &model.UTSNamespace{ID: root.IDs.NS.UTS, Nodename: "box", Domainname: "(none)"}
	shm := make([]byte, 4099) // not a multiple of the padding
	for i := range shm {
		shm[i] = byte(i)
	}
	tr.IPC = &model.IPCNamespace{
		ID: root.IDs.NS.IPC,
		Var: model.IPCVar{SemCtls: [4]uint32{32000, 1024000000, 500, 32000}, MsgCtlmax: 8192, MsgCtlmnb: 16384, MsgCtlmni: 32000,
			AutoMsgmni: 0, ShmCtlmax: 1 << 40, ShmCtlall: 1 << 30, ShmCtlmni: 4096, MqQueuesMax: 256, MqMsgMax: 10,
			MqMsgsizeMax: 8192, MqMsgDefault: 10, MqMsgsizeDefault: 8192, MsgNextID: -1, SemNextID: 7, ShmNextID: -1},
		Shm: []model.SysVShm{{Desc: model.IPCDesc{Key: -2, UID: 1, GID: 2, CUID: 3, CGID: 4, Mode: 0600, ID: 32768}, Size: 4099, Pages: []model.SysVShmPages{{Off: 0, Data: shm}}}},
		Sem: []model.SysVSem{{Desc: model.IPCDesc{Key: 5, Mode: 0666, ID: 1}, Values: []uint16{1, 2, 3}, Operated: true}, {Desc: model.IPCDesc{ID: 2}, Values: []uint16{9, 8, 7, 6}}},
		Msg: []model.SysVMsgQueue{
			{Desc: model.IPCDesc{Key: 9, Mode: 0640, ID: 0}, QBytes: 16384, Msgs: []model.SysVMsg{{Type: 2, Data: []byte("12345678")}, {Type: 1, Data: []byte{}}, {Type: 1 << 40, Data: []byte("abc")}}},
			{Desc: model.IPCDesc{ID: 3}, QBytes: 100},
		},
	}
}

// The namespaces survive model → images → model, and the images are
// CRIU's: Debian's crit decodes each, payloads included.
func TestNamespacesRoundTrip(t *testing.T) {
	want := sampleTree(t)
	sampleNamespaces(want)
	dir, names := writeTree(t, want)
	got := readTree(t, dir)
	if !reflect.DeepEqual(got.UTS, want.UTS) {
		t.Errorf("uts: got %+v, want %+v", got.UTS, want.UTS)
	}
	if !reflect.DeepEqual(got.IPC, want.IPC) {
		t.Errorf("ipc: got %+v\nwant %+v", got.IPC, want.IPC)
	}
	dir2, _ := writeTree(t, got)
	sameFiles(t, dir, dir2)
	// CRIU's restore makes new UTS and IPC namespaces for the root (and
	// reads their images) only when root_ids' differ from the root's.
	d, err := images.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := images.ReadInventory(d)
	d.Close()
	if err != nil {
		t.Fatal(err)
	}
	ri := inv.GetRootIds()
	if ri.GetUtsNsId() == want.UTS.ID || ri.GetUtsNsId() == 0 || ri.GetIpcNsId() == want.IPC.ID || ri.GetIpcNsId() == 0 ||
		ri.GetNetNsId() != want.Root().IDs.NS.Net {
		t.Errorf("inventory root_ids %v: the root's UTS and IPC namespaces (%d, %d) must differ, the others not", ri, want.UTS.ID, want.IPC.ID)
	}
	crit := critPath(t)
	n := 0
	for _, name := range names {
		if !strings.HasPrefix(name, "utsns-") && !strings.HasPrefix(name, "ipcns-") {
			continue
		}
		n++
		out, err := exec.Command(crit, "decode", "-i", filepath.Join(dir, name)).CombinedOutput()
		if err != nil {
			t.Errorf("crit decode %s: %v\n%s", name, err, out)
			continue
		}
		if name == ipcMsgImg(want.IPC.ID) && !strings.Contains(string(out), "YWJj") { // base64 of "abc", the last message
			t.Errorf("crit decode %s: last message missing:\n%s", name, out)
		}
	}
	if n != 5 {
		t.Errorf("%d namespace images written: %v", n, names)
	}
}

// A SysV shm attach (a part of a segment of the tree's IPC namespace, read
// only) survives the round trip; one of a segment the dump does not hold,
// or reaching past its end, is refused on read.
func TestSysVMappings(t *testing.T) {
	attach := model.VMA{Start: 0x7f1000000000, End: 0x7f1000001000, Pgoff: 4096, Shmid: 32768, Prot: unix.PROT_READ,
		Flags: unix.MAP_SHARED, Status: images.VmaAreaRegular | images.VmaAreaSysvipc, Fdflags: unix.O_RDONLY}
	for _, c := range []struct {
		name string
		edit func(v *model.VMA, tr *model.Tree)
		want string
	}{
		{"ok", func(*model.VMA, *model.Tree) {}, ""},
		{"no segment", func(v *model.VMA, _ *model.Tree) { v.Shmid = 5 }, "not in the dump's IPC namespace"},
		{"past the end", func(v *model.VMA, _ *model.Tree) { v.Pgoff = 8192 }, "past the end"},
		{"no namespace", func(_ *model.VMA, tr *model.Tree) { tr.IPC = nil }, "not in the dump's IPC namespace"},
		{"private", func(v *model.VMA, _ *model.Tree) { v.Flags = unix.MAP_PRIVATE }, "bad sysv shm mapping"},
	} {
		t.Run(c.name, func(t *testing.T) {
			tr := sampleTree(t)
			sampleNamespaces(tr)
			v := attach
			c.edit(&v, tr)
			tr.Root().MM.VMAs = append(tr.Root().MM.VMAs, v)
			dir, _ := writeTree(t, tr)
			d, err := images.Open(dir, false)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			got, err := Read(d)
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				vs := got.Root().MM.VMAs
				if !reflect.DeepEqual(vs[len(vs)-1], v) {
					t.Fatalf("read %+v, wrote %+v", vs[len(vs)-1], v)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Read: %v, want %q", err, c.want)
			}
		})
	}
}

// Without namespaces of its own a tree writes none, and reads none.
func TestNoNamespaceImages(t *testing.T) {
	tr := sampleTree(t)
	dir, names := writeTree(t, tr)
	for _, n := range names {
		if strings.HasPrefix(n, "utsns-") || strings.HasPrefix(n, "ipcns-") {
			t.Errorf("wrote %s", n)
		}
	}
	if got := readTree(t, dir); got.UTS != nil || got.IPC != nil {
		t.Errorf("read namespaces %+v %+v", got.UTS, got.IPC)
	}
}

// FuzzReadIPC: a corrupt ipcns image is an error, never a panic or an
// allocation its bytes do not back.
func FuzzReadIPC(f *testing.F) {
	tr := sampleTree(f)
	sampleNamespaces(tr)
	id := tr.IPC.ID
	src := f.TempDir()
	{
		d, err := openDir(src)
		if err != nil {
			f.Fatal(err)
		}
		if err := Write(d, tr, nil); err != nil {
			f.Fatal(err)
		}
		d.Close()
	}
	pages, _ := filepath.Glob(filepath.Join(src, "pages-*.img"))
	if len(pages) != 1 {
		f.Fatalf("pages files %v, want the segment's", pages)
	}
	files := []string{ipcVarImg(id), ipcShmImg(id), ipcSemImg(id), ipcMsgImg(id), utsnsImg(tr.UTS.ID), images.PagemapShmemImg(32768), filepath.Base(pages[0]), GodwitIPCImg(id)}
	for i, n := range files {
		b, err := os.ReadFile(filepath.Join(src, n))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), b)
	}
	// A segment claiming 64 GiB, in both layouts.
	for _, inPagemaps := range []bool{false, true} {
		f.Add(uint8(1), hugeShmImage(f, inPagemaps))
	}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		dir := t.TempDir()
		for i, n := range files {
			b, err := os.ReadFile(filepath.Join(src, n))
			if err != nil {
				t.Fatal(err)
			}
			if i == int(which)%len(files) {
				b = data
			}
			if err := os.WriteFile(filepath.Join(dir, n), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		d, err := openDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		k := &model.Task{}
		k.IDs.NS.IPC, k.IDs.NS.UTS = id, tr.UTS.ID
		got := &model.Tree{Tasks: []*model.Task{k}}
		if err := readNamespaces(d, got); err != nil {
			return
		}
		for _, s := range got.IPC.Shm {
			if err := s.CheckPages(pageSize); err != nil {
				t.Fatal(err)
			}
		}
	})
}

func openDir(path string) (*images.Dir, error) { return images.Open(path, true) }

// A segment whose contents CRIU put in a pagemap (in_pagemaps, CRIU 4's
// layout) is read from pagemap-shmem-ID.img; pages it does not list are
// zero, and a listed page past the segment's end is refused.
func TestSysVShmInPagemaps(t *testing.T) {
	for _, c := range []struct {
		name  string
		vaddr uint64
		want  string
	}{{"second page", 4096, ""}, {"past the end", 8192, "past the end"}} {
		t.Run(c.name, func(t *testing.T) {
			tr := sampleTree(t)
			sampleNamespaces(tr)
			tr.IPC.Shm = nil
			dir, _ := writeTree(t, tr)
			d, err := images.Open(dir, true)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			id := tr.IPC.ID
			d.Remove(ipcShmImg(id))
			desc := &model.IPCDesc{Key: 7, Mode: 0600, ID: 98304}
			e := &ipc_shm.IpcShmEntry{Desc: descEntry(desc), Size: proto.Uint64(5000), InPagemaps: proto.Bool(true)}
			if err := images.Write(d, ipcShmImg(id), e); err != nil {
				t.Fatal(err)
			}
			pw, err := images.CreatePages(d, images.PagemapShmemImg(98304), d.NextPagesID())
			if err != nil {
				t.Fatal(err)
			}
			page := bytes.Repeat([]byte{0xab}, 4096)
			if err := pw.Add(c.vaddr, 1, images.PagePresent); err != nil {
				t.Fatal(err)
			}
			if _, err := pw.Write(page); err != nil {
				t.Fatal(err)
			}
			if err := pw.Close(); err != nil {
				t.Fatal(err)
			}
			got, err := Read(d)
			if c.want != "" {
				if err == nil || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("Read: %v, want %q", err, c.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := []model.SysVShmPages{{Off: 4096, Data: page[:5000-4096]}}
			if len(got.IPC.Shm) != 1 || !reflect.DeepEqual(got.IPC.Shm[0].Pages, want) || got.IPC.Shm[0].Desc != *desc {
				t.Fatalf("segments %+v", got.IPC.Shm)
			}
		})
	}
}

// hugeShmImage is an ipcns-shm image of one segment of 64 GiB (segment
// 32768, as the sample's), with no contents after it.
func hugeShmImage(tb testing.TB, inPagemaps bool) []byte {
	d, err := openDir(tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	defer d.Close()
	desc := &model.IPCDesc{Key: 7, Mode: 0600, ID: 32768}
	e := &ipc_shm.IpcShmEntry{Desc: descEntry(desc), Size: proto.Uint64(64 << 30), InPagemaps: proto.Bool(inPagemaps)}
	if err := images.Write(d, ipcShmImg(1), e); err != nil {
		tb.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(d.Path(), ipcShmImg(1)))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// TestReadHugeShmAllocatesNothing reads a corrupt segment that claims
// 64 GiB, inline (no bytes follow) and in a pagemap (one page listed):
// the read fails, or holds the listed page, without allocating the size.
func TestReadHugeShmAllocatesNothing(t *testing.T) {
	for _, inPagemaps := range []bool{false, true} {
		tr := sampleTree(t)
		sampleNamespaces(tr)
		dir, _ := writeTree(t, tr)
		d, err := images.Open(dir, true)
		if err != nil {
			t.Fatal(err)
		}
		id := tr.IPC.ID
		if err := os.WriteFile(filepath.Join(dir, ipcShmImg(id)), hugeShmImage(t, inPagemaps), 0o600); err != nil {
			t.Fatal(err)
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		got, err := Read(d)
		runtime.ReadMemStats(&after)
		d.Close()
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<20 {
			t.Errorf("in_pagemaps %v: reading allocated %d bytes", inPagemaps, alloc)
		}
		if !inPagemaps {
			if err == nil || !strings.Contains(err.Error(), "left in the image") {
				t.Errorf("inline: Read: %v, want the missing bytes named", err)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if s := got.IPC.Shm; len(s) != 1 || s[0].Size != 64<<30 || len(s[0].Pages) != 1 || len(s[0].Pages[0].Data) != 2*pageSize {
			t.Errorf("in a pagemap: segments %+v", s)
		}
	}
}
