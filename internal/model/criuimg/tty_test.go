package criuimg

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"golang.org/x/sys/unix"

	"godwit/internal/images"
	"godwit/internal/model"
)

// ttyTree is sampleTree holding both ends of pty 300 (the slave twice).
func ttyTree(t testing.TB) *model.Tree {
	tr := sampleTree(t)
	p := &model.PtyState{Index: 300, Winsize: unix.Winsize{Row: 33, Col: 77, Xpixel: 5, Ypixel: 6},
		Locked: true, Exclusive: true, Packet: true, Sid: 4242, Pgrp: 4242, UID: 1000, GID: 5, Mode: 0o600, ModeKnown: true, HasMaster: true, Slave: true}
	p.Termios.Lflag, p.Termios.Cc[4], p.Termios.Ispeed = unix.ICANON, 2, 9600
	p.LockedTermios.Cflag = unix.CS8
	add := []*model.File{
		{ID: 40, Kind: model.Tty, Path: "/dev/ptmx", Flags: unix.O_RDWR | unix.O_NONBLOCK, MntID: -1, Tty: &model.TtyFile{Master: true, Pty: p}},
		{ID: 41, Kind: model.Tty, Path: "/dev/pts/300", Flags: unix.O_RDWR, MntID: -1, Tty: &model.TtyFile{Pty: p}},
		{ID: 42, Kind: model.Tty, Path: "/dev/pts/300", Flags: unix.O_RDONLY, MntID: -1, Tty: &model.TtyFile{Pty: p}},
		{ID: 43, Kind: model.Tty, Path: "/dev/tty", Flags: unix.O_RDWR, MntID: -1, Tty: &model.TtyFile{Other: &model.TtyOther{
			Kind: model.TtyCtty, Rdev: unix.Mkdev(5, 0), Dev: 6, Real: unix.Mkdev(136, 44)}}},
		{ID: 44, Kind: model.Tty, Path: "/dev/console", Flags: unix.O_WRONLY | unix.O_NONBLOCK, MntID: -1, Tty: &model.TtyFile{Other: &model.TtyOther{
			Kind: model.TtyConsole, Rdev: unix.Mkdev(5, 1), Dev: 6, Real: unix.Mkdev(4, 64), Termios: p.Termios, Winsize: p.Winsize}}},
		{ID: 45, Kind: model.Tty, Path: "/dev/ttyS1", Flags: unix.O_RDWR, MntID: -1, Tty: &model.TtyFile{Other: &model.TtyOther{
			Kind: model.TtySerial, Rdev: unix.Mkdev(4, 65), Dev: 6, Termios: p.LockedTermios, Winsize: unix.Winsize{Row: 1}}}},
		{ID: 46, Kind: model.Tty, Path: "/dev/pts/7", Flags: unix.O_RDWR, MntID: -1, Tty: &model.TtyFile{Other: &model.TtyOther{
			Kind: model.TtyExternal, Rdev: unix.Mkdev(136, 7), Dev: 0x1a}}},
		{ID: 47, Kind: model.Tun, Path: "/dev/net/tun", Flags: unix.O_RDWR | unix.O_NONBLOCK, MntID: -1, Tun: &model.TunState{
			Name: "tun7", Flags: unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_PERSIST, Owner: 1000, Group: -1, SndBuf: 1 << 20, VnetHdr: 12,
			Up: true, MTU: 1400, Addrs: []model.TunAddr{{Family: unix.AF_INET, Prefixlen: 24, Flags: 0x80, Local: []byte{10, 9, 0, 1}, Address: []byte{10, 9, 0, 1}}}}},
		{ID: 48, Kind: model.Tun, Path: "/dev/net/tun", Flags: unix.O_RDWR, MntID: -1, Tun: &model.TunState{Owner: -1, Group: -1}},
	}
	k := tr.Root()
	for i, f := range add {
		tr.Files[f.ID] = f
		k.FDs = append(k.FDs, model.FD{Num: 50 + i, File: f.ID})
	}
	return tr
}

// A pty's index, termios, locked termios, window, lock, packet and
// exclusive modes, session and group, owner and mode survive Write then
// Read; its ends share one state; the images pass CRIU's checks.
func TestTtyRoundTrip(t *testing.T) {
	tr := ttyTree(t)
	dir, names := writeTree(t, tr)
	if !slices.Contains(names, TtyInfoImg) || !slices.Contains(names, GodwitTtyImg) || !slices.Contains(names, GodwitTunImg) {
		t.Fatalf("images written: %v", names)
	}
	got := readTree(t, dir)
	m, s, s2 := got.Files[40], got.Files[41], got.Files[42]
	if m.Tty == nil || s.Tty == nil || s2.Tty == nil || !m.Tty.Master || s.Tty.Master || m.Tty.Pty != s.Tty.Pty || s.Tty.Pty != s2.Tty.Pty {
		t.Fatalf("tty files read as %+v, %+v, %+v", m, s, s2)
	}
	if m.Flags != unix.O_RDWR|unix.O_NONBLOCK || s2.Flags != unix.O_RDONLY || s.Path != "/dev/pts/300" || m.Path != "/dev/ptmx" {
		t.Errorf("descriptions: %+v, %+v", m, s2)
	}
	want, have := *tr.Files[40].Tty.Pty, *m.Tty.Pty
	if want != have {
		t.Errorf("pty read as\n%+v, want\n%+v", have, want)
	}
	for id := model.ID(43); id <= 48; id++ {
		w, g := tr.Files[id], got.Files[id]
		if g == nil || g.Kind != w.Kind || g.Path != w.Path || g.Flags != w.Flags || !reflect.DeepEqual(g.Tty, w.Tty) || !reflect.DeepEqual(g.Tun, w.Tun) {
			t.Errorf("file %d read as %+v, want %+v", id, g, w)
		}
	}
	d, err := images.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := CheckCRIU(d); err != nil {
		t.Error(err)
	}
}

// FuzzReadTty replaces tty-info.img, godwit-tty.json, godwit-tun.json or files.img of a
// dump with a pty, the other ttys, tun fds, a pidfd, a namespace fd, a fanotify group and a unix
// socket with an outside peer by arbitrary bytes: Read returns a tree or
// an error, never panics.
func FuzzReadTty(f *testing.F) {
	src := f.TempDir()
	d, err := images.Open(src, true)
	if err != nil {
		f.Fatal(err)
	}
	// The seed's files.img also holds the other new kinds' entries.
	tr := ttyTree(f)
	k := tr.Root()
	for i, nf := range []*model.File{
		{ID: 80, Kind: model.Pidfd, Flags: unix.O_RDWR, MntID: -1, Pidfd: &model.PidfdState{Pid: -1, Ino: 6}},
		{ID: 81, Kind: model.Namespace, Flags: unix.O_RDONLY, MntID: -1, NS: &model.NamespaceState{Link: "uts"}},
		{ID: 82, Kind: model.Fanotify, Flags: unix.O_RDONLY, MntID: -1, Fanotify: &model.FanotifyState{Flags: 3, Marks: []model.FanotifyMark{
			{Mask: 2, Ino: 9, Dev: 1, HandleType: 1, Handle: []byte{1, 2, 3, 4, 5, 6, 7, 8}, Path: "/tmp/x"}, {Mount: true, MntID: 3, Mask: 0x10, Path: "/"}}}},
		{ID: 83, Kind: model.UnixSocket, Flags: unix.O_RDWR, MntID: -1, Unix: &model.UnixSocketState{
			Ino: 700, Type: unix.SOCK_DGRAM, State: 1, Peer: 701, PeerName: []byte("/dev/log"), External: true}},
	} {
		tr.Files[nf.ID] = nf
		k.FDs = append(k.FDs, model.FD{Num: 80 + i, File: nf.ID})
	}
	if err := Write(d, tr, nil); err != nil {
		f.Fatal(err)
	}
	d.Close()
	targets := []string{TtyInfoImg, GodwitTtyImg, images.FilesImg, GodwitTunImg}
	for i, n := range targets {
		b, err := os.ReadFile(filepath.Join(src, n))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), b)
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		dir := t.TempDir()
		for _, e := range ents {
			b, err := os.ReadFile(filepath.Join(src, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			if e.Name() == targets[int(which)%len(targets)] {
				b = data
			}
			if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		d, err := images.Open(dir, false)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		got, err := Read(d)
		if err != nil {
			return
		}
		for _, f := range got.Files {
			if f.Kind == model.Tty && (f.Tty == nil || (f.Tty.Pty == nil) == (f.Tty.Other == nil)) {
				t.Fatalf("file %d: tty without its state", f.ID)
			}
			if f.Kind == model.Tun && f.Tun == nil {
				t.Fatalf("file %d: tun without its state", f.ID)
			}
		}
	})
}

// pidfds (of a task, of a gone process), namespace fds and fanotify
// groups with inode and mount marks survive Write
// then Read; a namespace fd names its task's namespace id.
func TestPidfdNsRoundTrip(t *testing.T) {
	tr := sampleTree(t)
	k := tr.Root()
	k.IDs.NS.Net = 77
	add := []*model.File{
		{ID: 60, Kind: model.Pidfd, Flags: unix.O_RDWR | unix.O_NONBLOCK, MntID: -1, Pidfd: &model.PidfdState{Pid: k.Pid, Ino: 5}},
		{ID: 61, Kind: model.Pidfd, Flags: unix.O_RDWR, MntID: -1, Pidfd: &model.PidfdState{Pid: -1, Ino: 6}},
		{ID: 62, Kind: model.Namespace, Flags: unix.O_RDONLY, MntID: -1, NS: &model.NamespaceState{Link: "net"}},
		{ID: 63, Kind: model.Fanotify, Flags: unix.O_RDONLY | unix.O_NONBLOCK, MntID: -1, Fanotify: &model.FanotifyState{Flags: 3, EventFlags: unix.O_LARGEFILE, Marks: []model.FanotifyMark{
			{Mflags: unix.FAN_MARK_IGNORED_SURV_MODIFY, Mask: 0xa, IgnoredMask: 0x20, Ino: 99, Dev: 254 << 20, HandleType: 1, Handle: []byte{1, 2, 3, 4, 5, 6, 7, 8, 9}, Path: "/tmp/w"},
			{Mount: true, MntID: 27, Mask: 0x10, Path: "/mnt"},
		}}},
	}
	for i, f := range add {
		tr.Files[f.ID] = f
		k.FDs = append(k.FDs, model.FD{Num: 60 + i, File: f.ID})
	}
	dir, _ := writeTree(t, tr)
	got := readTree(t, dir)
	for _, f := range add[:2] {
		g := got.Files[f.ID]
		if g.Kind != model.Pidfd || g.Flags != f.Flags || g.Pidfd == nil || *g.Pidfd != *f.Pidfd {
			t.Errorf("pidfd %d read as %+v", f.ID, g)
		}
	}
	if g := got.Files[62]; g.Kind != model.Namespace || g.NS == nil || g.NS.Link != "net" {
		t.Errorf("namespace fd read as %+v", g)
	}
	if g := got.Files[63]; g.Kind != model.Fanotify || g.Flags != add[3].Flags || !reflect.DeepEqual(g.Fanotify, add[3].Fanotify) {
		t.Errorf("fanotify read as %+v, want %+v", g.Fanotify, add[3].Fanotify)
	}
	d, err := images.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	fes, err := images.ReadAll[*fdinfo.FileEntry](d, images.FilesImg)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range fes {
		if e.GetId() == 62 && (e.GetNsf().GetNsId() != 77 || e.GetNsf().GetNsCflag() != unix.CLONE_NEWNET) {
			t.Errorf("namespace entry %v", e.GetNsf())
		}
	}
}

// Unix sockets whose peer is outside the dump keep that (External) and the
// peer's name through Write then Read, the peer as an entry of its own.
func TestUnixExternalRoundTrip(t *testing.T) {
	tr := sampleTree(t)
	k := tr.Root()
	add := []*model.File{
		{ID: 70, Kind: model.UnixSocket, Flags: unix.O_RDWR, MntID: -1, Unix: &model.UnixSocketState{
			Ino: 500, Type: unix.SOCK_DGRAM, State: 1, Peer: 900, PeerName: []byte("/dev/log"), External: true}},
		{ID: 71, Kind: model.UnixSocket, Flags: unix.O_RDWR, MntID: -1, Unix: &model.UnixSocketState{
			Ino: 501, Type: unix.SOCK_STREAM, State: 1, Peer: 901, External: true, Queue: [][]byte{[]byte("queued")}}},
	}
	for i, f := range add {
		tr.Files[f.ID] = f
		k.FDs = append(k.FDs, model.FD{Num: 70 + i, File: f.ID})
	}
	dir, _ := writeTree(t, tr)
	got := readTree(t, dir)
	a, b := got.Files[70].Unix, got.Files[71].Unix
	if a == nil || !a.External || string(a.PeerName) != "/dev/log" || a.Peer != 900 {
		t.Errorf("datagram socket read as %+v", a)
	}
	if b == nil || !b.External || b.PeerName != nil || len(b.Queue) != 1 || string(b.Queue[0]) != "queued" {
		t.Errorf("pair end read as %+v", b)
	}
	for _, f := range got.Files {
		if f.Unix != nil && (f.Unix.Ino == 900 || f.Unix.Ino == 901) {
			t.Errorf("the outside peer %d is a file of the dump", f.Unix.Ino)
		}
	}
}

// A CRIU-written dump has no godwit-tty.json, so no /dev/pts/N mode: the
// pty reads back with its mode unknown (the restore then leaves the new
// node's mode instead of setting 0000); with the image it is known.
func TestPtyModeWithoutGodwitImage(t *testing.T) {
	tr := ttyTree(t)
	// only the pty files (the other ttys need the godwit image and refuse)
	for id := model.ID(43); id <= 48; id++ {
		delete(tr.Files, id)
	}
	k := tr.Root()
	var fds []model.FD
	for _, e := range k.FDs {
		if tr.Files[e.File] != nil {
			fds = append(fds, e)
		}
	}
	k.FDs = fds
	dir, _ := writeTree(t, tr)
	if p := readTree(t, dir).Files[40].Tty.Pty; !p.ModeKnown || p.Mode != 0o600 {
		t.Fatalf("with %s: mode %#o known %v, want 0600 known", GodwitTtyImg, p.Mode, p.ModeKnown)
	}
	if err := os.Remove(filepath.Join(dir, GodwitTtyImg)); err != nil {
		t.Fatal(err)
	}
	if p := readTree(t, dir).Files[40].Tty.Pty; p.ModeKnown {
		t.Fatalf("without %s the pty's mode reads back as known (%#o)", GodwitTtyImg, p.Mode)
	}
}
