package criuimg

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fh"
	file_lock "github.com/checkpoint-restore/go-criu/v8/crit/images/file-lock"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fsnotify"
	ghost_file "github.com/checkpoint-restore/go-criu/v8/crit/images/ghost-file"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"godwit/internal/images"
	"godwit/internal/model"
)

// kindsTree is sampleTree holding one fd of every kind besides paths.
func kindsTree(t testing.TB) *model.Tree {
	tr := sampleTree(t)
	data := []byte("queued bytes")
	pipe := func(id model.ID, flags uint32) *model.File {
		return &model.File{ID: id, Kind: model.Pipe, Flags: flags, MntID: -1, Pipe: &model.PipeState{ID: 777, Size: 1 << 17, Data: data}}
	}
	ghost := &model.GhostState{Dev: unix.Mkdev(8, 16), Ino: 77, Mode: unix.S_IFREG | 0o640, UID: 1, GID: 2, Size: 5, Data: []byte("ghost"),
		Atime: unix.Timespec{Sec: 10, Nsec: 5000}, Mtime: unix.Timespec{Sec: 20, Nsec: 6000}}
	add := []*model.File{
		pipe(10, unix.O_RDONLY|unix.O_NONBLOCK),
		pipe(11, unix.O_WRONLY),
		{ID: 12, Kind: model.Pipe, Flags: unix.O_RDONLY, MntID: -1, Pipe: &model.PipeState{ID: 778, Size: 4096}},
		{ID: 13, Kind: model.EventFD, Flags: unix.O_RDWR | unix.O_NONBLOCK, MntID: -1, EventFD: &model.EventFDState{Counter: 1<<40 + 3, Semaphore: true}},
		{ID: 14, Kind: model.SignalFD, Flags: unix.O_RDWR, MntID: -1, SignalFD: &model.SignalFDState{Mask: 1 << 27}},
		{ID: 15, Kind: model.TimerFD, Flags: unix.O_RDWR, MntID: -1, TimerFD: &model.TimerFDState{Clock: 1, Ticks: 4, SettimeFlags: 3, ValueSec: 5, ValueNsec: 6, IntervalSec: 7, IntervalNsec: 8}},
		{ID: 17, Kind: model.Path, Path: "/tmp/fifo", Flags: unix.O_WRONLY, Mode: unix.S_IFIFO | 0o600, MntID: 30, Pipe: &model.PipeState{ID: 999, Size: 8192, Data: []byte("fifo bytes")}},
		{ID: 18, Kind: model.UnixSocket, Flags: unix.O_RDWR, MntID: -1, Unix: &model.UnixSocketState{
			Ino: 50, Type: unix.SOCK_DGRAM, State: 1, Peer: 51, Shutdown: 2, Queue: [][]byte{[]byte("a"), {}, []byte("ccc")},
			Opts: model.SocketOpts{SndBuf: 1000, RcvBuf: 2000, SndTimeoSec: 1, RcvTimeoUsec: 5, PassSec: true, Priority: 3, RcvLowat: 1, Mark: 9}}},
		{ID: 19, Kind: model.UnixSocket, Flags: unix.O_RDWR | unix.O_NONBLOCK, MntID: -1, Unix: &model.UnixSocketState{
			Ino: 51, Type: unix.SOCK_DGRAM, State: 1, Peer: 50, Shutdown: 1}},
		{ID: 20, Kind: model.UnixSocket, Flags: unix.O_RDWR, MntID: -1, Unix: &model.UnixSocketState{
			Ino: 52, Type: unix.SOCK_STREAM, State: 10, Backlog: 5, Name: []byte("/tmp/sock"), FileMode: unix.S_IFSOCK | 0o640}},
		{ID: 40, Kind: model.UnixSocket, Flags: unix.O_RDWR, MntID: -1, Unix: &model.UnixSocketState{
			Ino: 53, Type: unix.SOCK_DGRAM, State: 7, Name: []byte("/tmp/unlinked.sock"), Deleted: true}},
		{ID: 21, Kind: model.Ghost, Path: "/tmp/gone", Flags: unix.O_RDWR, Pos: 3, Mode: unix.S_IFREG | 0o640, MntID: 30, Ghost: ghost},
		{ID: 22, Kind: model.Ghost, Path: "/tmp/gone", Flags: unix.O_RDONLY, Mode: unix.S_IFREG | 0o640, MntID: 30, Ghost: ghost},
		{ID: 23, Kind: model.Inotify, Flags: unix.O_RDONLY | unix.O_NONBLOCK, MntID: -1, Inotify: &model.InotifyState{Watches: []model.InotifyWatch{
			{Wd: 2, Mask: unix.IN_CREATE, Ino: 99, Dev: 254 << 20, HandleType: 1, Handle: []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, Path: "/tmp/d"},
			{Wd: 5, Mask: unix.IN_MODIFY | unix.IN_ONESHOT, IgnoredMask: 0, Ino: 100, Dev: 254 << 20, HandleType: 1, Handle: []byte{8, 7, 6, 5, 4, 3, 2, 1}, Path: "/tmp/f"},
		}}},
		{ID: 16, Kind: model.Epoll, Flags: unix.O_RDWR, MntID: -1, Epoll: &model.EpollState{Targets: []model.EpollTarget{{FD: 10, Events: unix.EPOLLIN | unix.EPOLLET, Data: 0xdead}, {FD: 11, Events: unix.EPOLLOUT, Data: 1}}}},
	}
	k := tr.Root()
	for i, f := range add {
		tr.Files[f.ID] = f
		k.FDs = append(k.FDs, model.FD{Num: 10 + i, File: f.ID})
	}
	// A shared mapping of the deleted file (as a Python semaphore in
	// /dev/shm): the VMA names the ghost's REG entry.
	k.MM.VMAs = append(k.MM.VMAs, model.VMA{Start: 0x7f1000000000, End: 0x7f1000001000, Shmid: 21,
		Prot: unix.PROT_READ | unix.PROT_WRITE, Flags: unix.MAP_SHARED,
		Status: images.VmaAreaRegular | images.VmaFileShared, Fdflags: unix.O_RDWR})
	tr.Files[21].Locks = []model.FileLock{{Kind: model.LockFlock, Write: true}, {Kind: model.LockOFD, Start: 4, Len: 6}}
	tr.Files[22].Locks = []model.FileLock{{Kind: model.LockLease}}
	for i := range k.FDs {
		if k.FDs[i].File == 22 {
			k.FDs[i].Locks = []model.FileLock{{Kind: model.LockPOSIX, Write: true, Start: 1, Len: 0}}
		}
	}
	return tr
}

// Every kind's state survives Write then Read, and pipe bytes are written
// once per pipe.
func TestKindsRoundTrip(t *testing.T) {
	tr := kindsTree(t)
	dir, names := writeTree(t, tr)
	if all := strings.Join(names, " "); !strings.Contains(all, PipesDataImg) || !strings.Contains(all, FifoDataImg) ||
		!strings.Contains(all, SkQueuesImg) || strings.Count(all, "ghost-file-") != 1 {
		t.Fatalf("no %s among %v", PipesDataImg, names)
	}
	got := readTree(t, dir)
	vmas := got.Root().MM.VMAs
	if v := vmas[len(vmas)-1]; v.Start != 0x7f1000000000 || v.Shmid != 21 || got.Files[21].Kind != model.Ghost {
		t.Errorf("mapping of the deleted file read as %+v of %+v", v, got.Files[model.ID(v.Shmid)])
	}
	for _, id := range []model.ID{10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 40} {
		w, g := tr.Files[id], got.Files[id]
		if g == nil {
			t.Fatalf("file %d not read", id)
		}
		if w.Kind != model.Path && w.Kind != model.Ghost {
			w.Path = "" // kinds other than Path have none
		}
		w.MntID = -1 // not written: see fileEntry
		if !reflect.DeepEqual(w, g) {
			t.Errorf("file %d: read %+v, wrote %+v", id, g, w)
		}
	}
	if got.Files[21].Ghost != got.Files[22].Ghost {
		t.Error("two files of one deleted inode read as two inodes")
	}
	if !reflect.DeepEqual(got.Root().FDs, tr.Root().FDs) {
		t.Errorf("fds: read %+v, wrote %+v", got.Root().FDs, tr.Root().FDs)
	}
}

// An fd whose type disagrees with its file, and bad pipe data, are refused.
func TestKindsRefused(t *testing.T) {
	tr := kindsTree(t)
	tr.Files[13].EventFD.Counter = ^uint64(0)
	dir, _ := writeTree(t, tr)
	d, err := images.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := Read(d); err == nil || !strings.Contains(err.Error(), "eventfd counter") {
		t.Fatalf("Read: %v, want the counter refused", err)
	}

	dir, _ = writeTree(t, kindsTree(t))
	p := filepath.Join(dir, PipesDataImg)
	b, _ := os.ReadFile(p)
	if err := os.WriteFile(p, b[:len(b)-3], 0o600); err != nil {
		t.Fatal(err)
	}
	d2, err := images.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if _, err := Read(d2); err == nil || !strings.Contains(err.Error(), PipesDataImg) {
		t.Fatalf("Read of truncated pipe data: %v", err)
	}
}

// FuzzReadKinds replaces one image of a dump holding every fd kind with
// arbitrary bytes: Read returns a tree or an error, never panics, and
// every file of a kind carries that kind's state.
func FuzzReadKinds(f *testing.F) {
	src := f.TempDir()
	d, err := images.Open(src, true)
	if err != nil {
		f.Fatal(err)
	}
	if err := Write(d, kindsTree(f), nil); err != nil {
		f.Fatal(err)
	}
	d.Close()
	ents, _ := os.ReadDir(src)
	var names []string
	for i, e := range ents {
		names = append(names, e.Name())
		b, _ := os.ReadFile(filepath.Join(src, e.Name()))
		f.Add(uint8(i), b)
	}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		dir := t.TempDir()
		for i, n := range names {
			b, _ := os.ReadFile(filepath.Join(src, n))
			if i == int(which)%len(names) {
				b = data
			}
			if err := os.WriteFile(filepath.Join(dir, n), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		d, err := images.Open(dir, false)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		tr, err := Read(d)
		if err != nil {
			return
		}
		for id, fl := range tr.Files {
			ok := map[model.FileKind]bool{
				model.Path: true, model.Pipe: fl.Pipe != nil, model.EventFD: fl.EventFD != nil,
				model.SignalFD: fl.SignalFD != nil, model.TimerFD: fl.TimerFD != nil, model.Epoll: fl.Epoll != nil,
				model.UnixSocket: fl.Unix != nil, model.Ghost: fl.Ghost != nil, model.Inotify: fl.Inotify != nil,
			}[fl.Kind]
			if !ok {
				t.Fatalf("file %d of kind %d without its state", id, fl.Kind)
			}
		}
	})
}

// A connected unix socket whose peer is not in its task is refused at
// write, naming the task, fd and socket.
func TestWriteRefusesLoneUnixPeer(t *testing.T) {
	tr := kindsTree(t)
	k := tr.Root()
	for i, fd := range k.FDs {
		if fd.File == 19 {
			k.FDs = append(k.FDs[:i], k.FDs[i+1:]...)
			break
		}
	}
	d, err := images.Open(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	err = Write(d, tr, nil)
	if err == nil || !strings.Contains(err.Error(), "peer (socket 51) is not in the dump") {
		t.Fatalf("Write: %v", err)
	}
}

// CRIU writes inotify watches newest first (as fdinfo lists them): they
// are read by rising wd; a wd twice is refused.
func TestInotifyWatchOrder(t *testing.T) {
	watch := func(wd uint32, path string) *fsnotify.InotifyWdEntry {
		return &fsnotify.InotifyWdEntry{Id: proto.Uint32(0), IIno: proto.Uint64(uint64(wd)), Mask: proto.Uint32(unix.IN_MODIFY), IgnoredMask: proto.Uint32(0),
			SDev: proto.Uint32(1), Wd: proto.Uint32(wd), FHandle: &fh.FhEntry{Bytes: proto.Uint32(8), Type: proto.Uint32(1), Handle: []uint64{uint64(wd)}, Path: proto.String(path)}}
	}
	entry := func(wds ...*fsnotify.InotifyWdEntry) *fdinfo.FileEntry {
		return &fdinfo.FileEntry{Type: fdinfo.FdTypes_INOTIFY.Enum(), Id: proto.Uint32(11),
			Ify: &fsnotify.InotifyFileEntry{Id: proto.Uint32(11), Flags: proto.Uint32(unix.O_NONBLOCK), Fown: noFown(), Wd: wds}}
	}
	f, known, err := readKind(entry(watch(3, "/b"), watch(2, "/a")))
	if err != nil || !known {
		t.Fatalf("readKind: %v, %v", known, err)
	}
	if w := f.Inotify.Watches; len(w) != 2 || w[0].Wd != 2 || w[0].Path != "/a" || w[1].Wd != 3 || w[1].Path != "/b" {
		t.Fatalf("watches %+v, want wd 2 (/a) then 3 (/b)", w)
	}
	if _, _, err := readKind(entry(watch(3, "/b"), watch(3, "/a"))); err == nil || !strings.Contains(err.Error(), "inotify watch 3 twice") {
		t.Fatalf("two watches 3: %v", err)
	}
}

// A deleted file's contents in CRIU's two layouts: under 12 KiB, no size
// and the contents to the end of the image; larger, chunks with holes.
func TestReadCRIUGhostLayouts(t *testing.T) {
	head := func(size *uint64, chunks bool) *ghost_file.GhostFileEntry {
		e := &ghost_file.GhostFileEntry{Uid: proto.Uint32(0), Gid: proto.Uint32(0), Mode: proto.Uint32(unix.S_IFREG | 0o604),
			Dev: proto.Uint32(1), Ino: proto.Uint64(2), Size: size}
		if chunks {
			e.Chunks = proto.Bool(true)
		}
		return e
	}
	write := func(t *testing.T, d *images.Dir, e *ghost_file.GhostFileEntry, body func(w *images.EntryWriter) error) {
		w, err := d.CreateImage(GhostFileImg(8))
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Write(e); err != nil {
			t.Fatal(err)
		}
		if err := body(w); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	chunk := func(w *images.EntryWriter, off uint64, data string) error {
		if err := w.Write(&ghost_file.GhostChunkEntry{Off: proto.Uint64(off), Len: proto.Uint64(uint64(len(data)))}); err != nil {
			return err
		}
		return w.WritePayload([]byte(data))
	}
	for _, c := range []struct {
		name    string
		head    *ghost_file.GhostFileEntry
		body    func(w *images.EntryWriter) error
		want    string
		wantErr string
	}{
		{"small", head(nil, false), func(w *images.EntryWriter) error { return w.WritePayload([]byte("ghost-data")) }, "ghost-data", ""},
		{"empty", head(nil, false), func(*images.EntryWriter) error { return nil }, "", ""},
		{"chunks", head(proto.Uint64(20000), true), func(w *images.EntryWriter) error {
			if err := chunk(w, 0, "abc"); err != nil {
				return err
			}
			return chunk(w, 16384, "xyz")
		}, "abc" + strings.Repeat("\x00", 16381) + "xyz" + strings.Repeat("\x00", 20000-16387), ""},
		{"chunk past size", head(proto.Uint64(10), true), func(w *images.EntryWriter) error { return chunk(w, 8, "abc") }, "", "past the size"},
		{"chunks backwards", head(proto.Uint64(100), true), func(w *images.EntryWriter) error {
			if err := chunk(w, 50, "a"); err != nil {
				return err
			}
			return chunk(w, 10, "b")
		}, "", "out of order"},
		{"chunk longer than the image", head(proto.Uint64(1<<20), true), func(w *images.EntryWriter) error {
			if err := w.Write(&ghost_file.GhostChunkEntry{Off: proto.Uint64(0), Len: proto.Uint64(1 << 19)}); err != nil {
				return err
			}
			return w.WritePayload([]byte("short"))
		}, "", "left in the image"},
		{"chunks without size", head(nil, true), func(*images.EntryWriter) error { return nil }, "", "chunks without a size"},
		// ftruncate only: a size and no data at all.
		{"no chunk", head(proto.Uint64(1<<20), true), func(*images.EntryWriter) error { return nil }, strings.Repeat("\x00", 1<<20), ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, err := images.Open(t.TempDir(), true)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			write(t, d, c.head, c.body)
			g, err := readGhost(d, 8)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("readGhost = %v, want %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := ghostContents(g); got != c.want || g.Size != uint64(len(c.want)) {
				t.Fatalf("read %d bytes (size %d), want %d", len(got), g.Size, len(c.want))
			}
			// godwit writes it back in the same layout.
			d2, err := images.Open(t.TempDir(), true)
			if err != nil {
				t.Fatal(err)
			}
			defer d2.Close()
			if err := writeGhost(d2, 9, g, nil); err != nil {
				t.Fatal(err)
			}
			g2, err := readGhost(d2, 9)
			if err != nil {
				t.Fatal(err)
			}
			if ghostContents(g2) != c.want || !reflect.DeepEqual(g2.Chunks, g.Chunks) || g2.Holes != g.Holes {
				t.Fatalf("written again: chunks %v (holes %v), want %v (holes %v)", g2.Chunks, g2.Holes, g.Chunks, g.Holes)
			}
		})
	}
}

// A deleted file as the dump saves it (a nil or empty chunk list, a
// file of holes only or of no hole) reads back as the same file: the
// header never announces bytes the image does not hold.
func TestGhostRoundTrip(t *testing.T) {
	for _, c := range []struct {
		name string
		g    model.GhostState
		want string
	}{
		{"holes only, nil chunks", model.GhostState{Size: 1 << 20, Holes: true}, strings.Repeat("\x00", 1<<20)},
		{"holes only, no chunk", model.GhostState{Size: 4096, Holes: true, Chunks: []model.GhostChunk{}, Data: []byte{}}, strings.Repeat("\x00", 4096)},
		{"hole then data", model.GhostState{Size: 8, Holes: true, Chunks: []model.GhostChunk{{Off: 6, Len: 2}}, Data: []byte("ab")}, "\x00\x00\x00\x00\x00\x00ab"},
		{"no hole", model.GhostState{Size: 5, Data: []byte("ghost")}, "ghost"},
		{"empty file", model.GhostState{}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, err := images.Open(t.TempDir(), true)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			g := c.g
			g.Mode = unix.S_IFREG | 0o600
			if err := writeGhost(d, 3, &g, nil); err != nil {
				t.Fatal(err)
			}
			g2, err := readGhost(d, 3)
			if err != nil {
				t.Fatal(err)
			}
			if got := ghostContents(g2); g2.Size != g.Size || g2.Holes != g.Holes || got != c.want {
				t.Fatalf("read size %d holes %v %d bytes, want size %d holes %v %d bytes", g2.Size, g2.Holes, len(got), g.Size, g.Holes, len(c.want))
			}
		})
	}
	// A plain layout whose bytes are not the whole file is refused at
	// the dump, not found truncated at the restore.
	d, err := images.Open(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := writeGhost(d, 4, &model.GhostState{Mode: unix.S_IFREG | 0o600, Size: 1 << 20}, nil); err == nil || !strings.Contains(err.Error(), "0 bytes saved of 1048576") {
		t.Fatalf("plain ghost without its bytes: %v", err)
	}
}

// ghostContents is the whole file g describes, holes as zeros.
func ghostContents(g *model.GhostState) string {
	if !g.Holes {
		return string(g.Data)
	}
	b := make([]byte, g.Size)
	data := g.Data
	for _, c := range g.Chunks {
		copy(b[c.Off:c.Off+c.Len], data[:c.Len])
		data = data[c.Len:]
	}
	return string(b)
}

// OFD locks are CRIU's flag 4 in filelocks.img (its restore refuses the
// kernel's FL_OFDLCK, 1024, which godwit wrote before); both are read.
func TestOFDLockFlag(t *testing.T) {
	tr := kindsTree(t)
	dir, _ := writeTree(t, tr)
	d, err := images.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	es, err := images.ReadAll[*file_lock.FileLockEntry](d, FileLocksImg)
	if err != nil {
		t.Fatal(err)
	}
	var ofd *file_lock.FileLockEntry
	for _, e := range es {
		if e.GetFlag() != model.LockPOSIX && e.GetFlag() != model.LockFlock && e.GetFlag() != model.LockLease {
			if e.GetFlag() != criuFlOFD {
				t.Fatalf("lock flag %d written, want CRIU's OFD %d", e.GetFlag(), criuFlOFD)
			}
			ofd = e
		}
	}
	if ofd == nil {
		t.Fatal("no OFD lock written")
	}
	ofd.Flag = proto.Uint32(kernelFlOFDLK)
	d.Remove(FileLocksImg)
	if err := images.Write(d, FileLocksImg, es...); err != nil {
		t.Fatal(err)
	}
	got := readTree(t, dir)
	if l := got.Files[21].Locks; len(l) != 2 || l[1].Kind != model.LockOFD {
		t.Fatalf("locks read back as %+v, want the OFD lock", l)
	}
}
