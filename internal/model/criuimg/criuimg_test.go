package criuimg

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	core_x86 "github.com/checkpoint-restore/go-criu/v8/crit/images/core-x86"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/timer"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"godwit/internal/images"
	"godwit/internal/model"
	"godwit/internal/ptrace"
	"godwit/internal/xstate"
)

func u32p(v uint32) *uint32 { return &v }
func i32p(v int32) *int32   { return &v }
func u64p(v uint64) *uint64 { return &v }

// xsave builds a raw XSAVE buffer with x87, SSE and AVX state.
func xsave(t testing.TB, seed uint32) []byte {
	t.Helper()
	pad := make([]uint32, 24)
	pad[12] = 0x7 // XCR0 for ptrace: x87 | SSE | AVX
	fp := &core_x86.UserX86FpregsEntry{
		Cwd: proto.Uint32(0x37f), Swd: proto.Uint32(0), Twd: proto.Uint32(0), Fop: proto.Uint32(0),
		Rip: proto.Uint64(0), Rdp: proto.Uint64(0), Mxcsr: proto.Uint32(0x1f80), MxcsrMask: proto.Uint32(0xffff),
		StSpace: make([]uint32, 32), XmmSpace: make([]uint32, 64), Padding: pad,
		Xsave: &core_x86.UserX86XsaveEntry{XstateBv: proto.Uint64(7), YmmhSpace: make([]uint32, 64)},
	}
	for i := range fp.XmmSpace {
		fp.XmmSpace[i] = seed + uint32(i)
		fp.Xsave.YmmhSpace[i] = seed ^ uint32(i)
	}
	x, err := xstate.Standalone(fp)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// sampleTree is a tree with every field set to something distinct.
func sampleTree(t testing.TB) *model.Tree {
	files := map[model.ID]*model.File{
		1: {ID: 1, Kind: model.Path, Path: "/usr/bin/prog", Flags: unix.O_RDONLY, Mode: unix.S_IFREG | 0o755, Size: u64p(12345), MntID: -1},
		2: {ID: 2, Kind: model.Path, Path: "/home", Flags: unix.O_RDONLY | unix.O_DIRECTORY, Mode: unix.S_IFDIR | 0o755, MntID: -1},
		3: {ID: 3, Kind: model.Path, Path: "/", Flags: unix.O_RDONLY | unix.O_DIRECTORY, Mode: unix.S_IFDIR | 0o755, MntID: -1},
		4: {ID: 4, Kind: model.Path, Path: "/dev/null", Flags: unix.O_RDWR, Pos: 0, Mode: unix.S_IFCHR | 0o666, MntID: 25},
		5: {ID: 5, Kind: model.Path, Path: "/tmp/log", Flags: unix.O_WRONLY | unix.O_APPEND, Pos: 77, Mode: unix.S_IFREG | 0o644, Size: u64p(77), MntID: 30},
	}
	thread := func(tid int, seed uint32) *model.Thread {
		return &model.Thread{
			Tid:         tid,
			Regs:        unix.PtraceRegs{Rip: 0x401000 + uint64(seed), Rsp: 0x7ffc0000, Rax: ^uint64(511), Orig_rax: 202, Cs: 0x33, Ss: 0x2b, Fs_base: 0x7f0000 + uint64(seed)},
			XState:      xsave(t, seed),
			Sigmask:     1 << 9,
			Pending:     []model.Siginfo{{10, 0, 0, 0, byte(seed)}},
			ClearTid:    0x7f1000,
			Sigaltstack: model.Sigaltstack{SP: 0x7f2000, Flags: 0, Size: 8192},
			RobustList:  0x7f3000, RobustLen: 24,
			Rseq:      model.Rseq{Pointer: 0x7f4000, Size: 32, Signature: 0x53053053},
			PdeathSig: 9,
			Creds: model.Creds{UID: 1000, EUID: 1000, SUID: 1000, FSUID: 1000, GID: 100, EGID: 100, SGID: 100, FSGID: 100,
				CapBnd: 0x1ffffffffff, Groups: []uint32{100, 27}, Secbits: 0, NoNewPrivs: true},
			Comm: "prog", Nice: 5, Policy: 0, RtPrio: 0,
		}
	}
	var sas []model.Sigaction
	for s := 1; s <= 64; s++ {
		if s == int(unix.SIGKILL) || s == int(unix.SIGSTOP) {
			continue
		}
		sas = append(sas, model.Sigaction{Sig: s, Handler: uint64(s) * 0x10, Flags: 0x4000000, Restorer: 0x400500, Mask: uint64(s)})
	}
	var rl []unix.Rlimit
	for r := 0; r < 16; r++ {
		rl = append(rl, unix.Rlimit{Cur: uint64(r), Max: ^uint64(0)})
	}
	task := &model.Task{
		Pid: 4242, Ppid: 0, Pgid: 4242, Sid: 4000, State: model.Stopped, StopSignal: int(unix.SIGTSTP),
		Threads: []*model.Thread{thread(4242, 1), thread(4250, 2)},
		IDs: model.KobjIDs{VM: 1, Files: 1, FS: 1, Sighand: 1,
			NS: model.Namespaces{Pid: 4026531836, Net: 4026531840, IPC: 4026531839, UTS: 4026531838, Mnt: 4026531841, User: 4026531837, Cgroup: 4026531835}},
		Personality: 0x400000, Comm: "prog", Sigactions: sas,
		Itimers: [3]model.Itimer{{IntervalSec: 1, ValueSec: 2}, {}, {IntervalUsec: 5, ValueUsec: 6}},
		PosixTimers: []model.PosixTimer{
			{ID: 1, Clock: 1, Signal: 14, Notify: 0, Value: 99, IntervalSec: 1, ValueNsec: 500},
			{ID: 0, Clock: 0, Signal: 10, Notify: 4, NotifyThread: 4250, Overrun: 3},
		},
		Rlimits: rl, SharedSignals: []model.Siginfo{{12}}, Loginuid: u32p(1000), OomScoreAdj: i32p(-100), ChildSubreaper: true,
		MM: &model.MM{
			StartCode: 0x400000, EndCode: 0x401000, StartData: 0x402000, EndData: 0x403000, StartStack: 0x7ffc1000,
			StartBrk: 0x404000, Brk: 0x425000, ArgStart: 1, ArgEnd: 2, EnvStart: 3, EnvEnd: 4, Exe: 1,
			Auxv: []uint64{6, 4096, 0, 0}, Dumpable: i32p(1), THPDisabled: true,
			VMAs: []model.VMA{
				{Start: 0x400000, End: 0x401000, Shmid: 1, Prot: unix.PROT_READ | unix.PROT_EXEC, Flags: unix.MAP_PRIVATE,
					Status: images.VmaAreaRegular | images.VmaFilePrivate, Fdflags: unix.O_RDONLY},
				{Start: 0x404000, End: 0x425000, Prot: unix.PROT_READ | unix.PROT_WRITE, Flags: unix.MAP_PRIVATE | unix.MAP_ANONYMOUS,
					Status: images.VmaAreaRegular | images.VmaAnonPrivate | images.VmaAreaHeap, Madv: 1 << unix.MADV_HUGEPAGE},
				{Start: 0x7f0000000000, End: 0x7f0000100000, Shmid: 777, Prot: unix.PROT_READ | unix.PROT_WRITE, Flags: unix.MAP_SHARED | unix.MAP_ANONYMOUS,
					Status: images.VmaAreaRegular | images.VmaAnonShared},
			},
		},
		FS:  &model.FS{Cwd: 2, Root: 3, Umask: u32p(0o022)},
		FDs: []model.FD{{Num: 0, File: 4}, {Num: 1, File: 5, Cloexec: true}, {Num: 2, File: 5}},
	}
	return &model.Tree{Tasks: []*model.Task{task}, Files: files}
}

func writeTree(t *testing.T, tr *model.Tree) (string, []string) {
	t.Helper()
	dir := t.TempDir()
	d, err := images.Open(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var names []string
	if err := Write(d, tr, func(n string) { names = append(names, n) }); err != nil {
		t.Fatal(err)
	}
	return dir, names
}

func readTree(t *testing.T, dir string) *model.Tree {
	t.Helper()
	d, err := images.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	tr, err := Read(d)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// sameFiles checks that every image of a is in b with the same bytes.
func sameFiles(t *testing.T, a, b string) {
	t.Helper()
	ents, err := os.ReadDir(a)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		x, err := os.ReadFile(filepath.Join(a, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		y, err := os.ReadFile(filepath.Join(b, e.Name()))
		if err != nil {
			t.Errorf("%s: %v", e.Name(), err)
			continue
		}
		if !bytes.Equal(x, y) {
			t.Errorf("%s differs after a round trip", e.Name())
		}
	}
}

// The model survives model → images → model whole (XState compared in
// the form the images keep), and images → model → images is byte for
// byte the identity.
func TestRoundTrip(t *testing.T) {
	want := sampleTree(t)
	dir, names := writeTree(t, want)
	if names[len(names)-1] != images.InventoryImg {
		t.Errorf("inventory written before %v", names)
	}
	got := readTree(t, dir)
	for i, k := range got.Tasks {
		for j, th := range k.Threads {
			w := want.Tasks[i].Threads[j]
			a, err := xstate.ToCRIU(th.XState)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := xstate.ToCRIU(w.XState)
			if !proto.Equal(a, b) {
				t.Errorf("thread %d: xstate differs after a round trip", th.Tid)
			}
			th.XState = w.XState
		}
	}
	for _, f := range want.Files {
		f.MntID = -1 // not written: see fileEntry
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("round trip changed the tree:\ngot  %+v\nwant %+v", got.Tasks[0], want.Tasks[0])
	}
	dir2, _ := writeTree(t, got)
	sameFiles(t, dir, dir2)
}

// Images godwit's dumper wrote (a python with two threads and an open
// file, pages left out) are read and written back unchanged.
func TestDumperImagesRoundTrip(t *testing.T) {
	src := "testdata/python"
	tr := readTree(t, src)
	if len(tr.Tasks) != 1 || len(tr.Root().Threads) != 2 || len(tr.Root().FDs) < 4 {
		t.Fatalf("read %d tasks, root %+v", len(tr.Tasks), tr.Root())
	}
	dir, _ := writeTree(t, tr)
	ents, _ := os.ReadDir(src)
	for _, e := range ents {
		if e.Name() == images.InventoryImg {
			continue // the LSM is the host's
		}
		x, _ := os.ReadFile(filepath.Join(src, e.Name()))
		y, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil || !bytes.Equal(x, y) {
			t.Errorf("%s: not written back the same (%v)", e.Name(), err)
		}
	}
}

// Broken cross-references are refused with the image and the id named.
func TestReadRefusesDanglingIDs(t *testing.T) {
	for _, c := range []struct {
		name string
		mod  func(*model.Tree)
		want string
	}{
		{"exe", func(tr *model.Tree) { tr.Root().MM.Exe = 99 }, "exe refers to file id 99"},
		{"cwd", func(tr *model.Tree) { tr.Root().FS.Cwd = 98 }, "cwd refers to file id 98"},
		{"fd", func(tr *model.Tree) { tr.Root().FDs[0].File = 97 }, "fd 0 refers to file id 97"},
		{"vma", func(tr *model.Tree) { tr.Root().MM.VMAs[0].Shmid = 96 }, "refers to file id 96"},
		{"memfd vma", func(tr *model.Tree) {
			v := &tr.Root().MM.VMAs[0]
			v.Shmid, v.Status = 95, v.Status|images.VmaAreaMemfd
		}, "memfd mapping and file 95 disagree"},
		{"session", func(tr *model.Tree) { tr.Root().Sid = tr.Root().Pid; tr.Root().Pgid = 7 }, "session leader in a group"},
		{"overlap", func(tr *model.Tree) { tr.Root().MM.VMAs[1].Start = 0x400000 }, "overlaps"},
	} {
		t.Run(c.name, func(t *testing.T) {
			tr := sampleTree(t)
			c.mod(tr)
			dir, _ := writeTree(t, tr)
			d, err := images.Open(dir, false)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			_, err = Read(d)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Read: %v, want an error naming %q", err, c.want)
			}
		})
	}
}

// A dead task is read from its core alone (CRIU writes no mm or fs for
// it), and a session outside the dump's pid namespace (0) is kept.
func TestReadZombieAndOutsideSession(t *testing.T) {
	tr := sampleTree(t)
	tr.Root().State, tr.Root().ExitCode = model.Zombie, 3
	dir, _ := writeTree(t, tr)
	for _, n := range []string{images.MmImg(4242), images.FsImg(4242), images.IdsImg(4242), images.FdinfoImg(1)} {
		if err := os.Remove(filepath.Join(dir, n)); err != nil {
			t.Fatal(err)
		}
	}
	got := readTree(t, dir)
	if k := got.Root(); k.State != model.Zombie || k.ExitCode != 3 || k.MM != nil {
		t.Fatalf("read %+v", k)
	}
	tr = sampleTree(t)
	tr.Root().Sid = 0
	dir, _ = writeTree(t, tr)
	if got := readTree(t, dir); got.Root().Sid != 0 {
		t.Fatalf("session %d, want 0", got.Root().Sid)
	}
}

// CheckCRIU names the invariants of CRIU's restore that images break.
func TestCheckCRIU(t *testing.T) {
	tr := readTree(t, "testdata/python")
	dir, _ := writeTree(t, tr)
	d, err := images.Open(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	err = CheckCRIU(d)
	// The fixture keeps no pages: the vDSO's pagemap is missing, nothing else.
	if err == nil || !strings.Contains(err.Error(), images.PagemapImg(tr.Root().Pid)) || strings.Contains(err.Error(), "kIDs") {
		t.Fatalf("CheckCRIU = %v, want only the vDSO's pagemap missing", err)
	}
	// The inventory of godwit before CRIU interop: root_ids = the root's.
	if err := images.WriteInventory(d, images.InventoryOptions{RootIDs: kobjIDs(&tr.Root().IDs)}); err != nil {
		t.Fatal(err)
	}
	if err := CheckCRIU(d); err == nil || !strings.Contains(err.Error(), "Image corruption on kIDs data") {
		t.Fatalf("CheckCRIU = %v, want the kIDs corruption", err)
	}
	// godwit before it left mnt_id out: without dumped mounts CRIU
	// cannot remap a deleted file.
	files, err := images.ReadAll[*fdinfo.FileEntry](d, images.FilesImg)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if f.GetReg() != nil {
			f.GetReg().MntId = proto.Int32(27)
			break
		}
	}
	d.Remove(images.FilesImg)
	if err := images.Write(d, images.FilesImg, files...); err != nil {
		t.Fatal(err)
	}
	if err := CheckCRIU(d); err == nil || !strings.Contains(err.Error(), "mnt_id 27 without dumped mounts") {
		t.Fatalf("CheckCRIU = %v, want the mnt_id without mounts", err)
	}
}

// An itimer with an interval and value 0 is armed in CRIU's images (its
// remaining time read as 0); only all zeros is disarmed.
func TestItimerValueZero(t *testing.T) {
	u := proto.Uint64
	armed := modelItimer(&timer.ItimerEntry{Isec: u(0), Iusec: u(5000), Vsec: u(0), Vusec: u(0)})
	if armed.ValueSec != 0 || armed.ValueUsec != 5000 || armed.IntervalUsec != 5000 {
		t.Errorf("interval 5 ms, value 0: %+v, want armed for one interval", armed)
	}
	if off := modelItimer(&timer.ItimerEntry{Isec: u(0), Iusec: u(0), Vsec: u(0), Vusec: u(0)}); off != (model.Itimer{}) {
		t.Errorf("all zeros: %+v, want disarmed", off)
	}
	if one := modelItimer(&timer.ItimerEntry{Isec: u(0), Iusec: u(0), Vsec: u(2), Vusec: u(1)}); one.ValueSec != 2 || one.ValueUsec != 1 {
		t.Errorf("one-shot: %+v", one)
	}
}

// A thread frozen in an interrupted syscall is written as CRIU's dump
// writes it: the restart applied (rip on the syscall instruction, rax the
// call; inside restart_syscall, the call the dump read from the code),
// and -EINTR for a restart block when a signal is pending.
func TestGpregsRestart(t *testing.T) {
	const ip = 0x401000
	neg := func(e int64) uint64 { return uint64(-e) }
	for _, c := range []struct {
		ax, orig, nr uint64
		signals      bool
		wantAx       uint64
		wantIP       uint64
		applied      bool
	}{
		{neg(512), unix.SYS_FUTEX, 0, false, unix.SYS_FUTEX, ip - 2, true},                                            // ERESTARTSYS
		{neg(512), unix.SYS_READ, 0, false, unix.SYS_READ, ip - 2, true},                                              // ERESTARTSYS, call 0
		{neg(514), unix.SYS_PAUSE, 0, false, unix.SYS_PAUSE, ip - 2, true},                                            // ERESTARTNOHAND
		{neg(516), unix.SYS_CLOCK_NANOSLEEP, 0, false, unix.SYS_CLOCK_NANOSLEEP, ip - 2, true},                        // restart block
		{neg(516), unix.SYS_RESTART_SYSCALL, unix.SYS_CLOCK_NANOSLEEP, false, unix.SYS_CLOCK_NANOSLEEP, ip - 2, true}, // again
		{neg(516), unix.SYS_RESTART_SYSCALL, 0, false, neg(516), ip, false},                                           // call unknown
		{neg(516), unix.SYS_RESTART_SYSCALL, unix.SYS_NANOSLEEP, true, neg(4), ip, true},                              // a handler: EINTR
		{neg(516), unix.SYS_NANOSLEEP, 0, true, neg(4), ip, true},                                                     // a handler: EINTR
		{neg(514), unix.SYS_PAUSE, 0, true, unix.SYS_PAUSE, ip - 2, true},                                             // a handler: restart, as CRIU
		{neg(4), unix.SYS_READ, 0, false, neg(4), ip, false},                                                          // EINTR: done
		{0, ^uint64(0), 0, false, 0, ip, false},                                                                       // not in a syscall
	} {
		r := unix.PtraceRegs{Rax: c.ax, Orig_rax: c.orig, Rip: ip, Rdi: 7}
		g, applied := gpregs(&r, c.signals, c.nr)
		if applied != c.applied {
			t.Errorf("ax %#x orig %d signals %v: applied %v", c.ax, c.orig, c.signals, applied)
		}
		if g.GetAx() != c.wantAx || g.GetIp() != c.wantIP || g.GetOrigAx() != c.orig || g.GetDi() != 7 {
			t.Errorf("ax %#x orig %d signals %v: wrote ax %#x ip %#x orig %d", c.ax, c.orig, c.signals, g.GetAx(), g.GetIp(), g.GetOrigAx())
		}
		if r.Rax != c.ax || r.Rip != ip {
			t.Errorf("gpregs changed the model's registers")
		}
	}
}

// godwit-restart.img gives godwit's restore the registers as frozen; an
// entry that the core's registers were not made from is refused.
func TestRestartImage(t *testing.T) {
	tr := readTree(t, "testdata/python")
	for _, th := range tr.Root().Threads {
		if ptrace.Restart(&th.Regs) == ptrace.NoRestart {
			t.Fatalf("thread %d: frozen registers not read back: rax %#x", th.Tid, th.Regs.Rax)
		}
	}
	for name, corrupt := range map[string]func([]byte){
		"rax":   func(b []byte) { b[16] = 0xff },  // -ERESTARTNOINTR
		"rip":   func(b []byte) { b[24] ^= 0x10 }, // not the instruction before
		"tid":   func(b []byte) { b[8] ^= 0x01 },  // no such thread
		"magic": func(b []byte) { b[0] = 'X' },
		"size":  nil,
	} {
		dir := t.TempDir()
		ents, _ := os.ReadDir("testdata/python")
		for _, e := range ents {
			b, _ := os.ReadFile(filepath.Join("testdata/python", e.Name()))
			if e.Name() == RestartImg {
				if corrupt == nil {
					b = b[:len(b)-1]
				} else {
					corrupt(b)
				}
			}
			os.WriteFile(filepath.Join(dir, e.Name()), b, 0o600)
		}
		d, err := images.Open(dir, false)
		if err != nil {
			t.Fatal(err)
		}
		_, err = Read(d)
		d.Close()
		if name == "rax" {
			// -ERESTARTNOINTR for -ERESTARTNOHAND: the same restart,
			// accepted.
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), RestartImg) {
			t.Errorf("%s corrupted: Read = %v, want it refused naming %s", name, err, RestartImg)
		}
	}
}
