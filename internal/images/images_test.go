package images

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	core_x86 "github.com/checkpoint-restore/go-criu/v8/crit/images/core-x86"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/creds"
	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	criu_sa "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-sa"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fown"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fs"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/inventory"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mm"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pstree"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/regfile"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/rlimit"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/rseq"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/seccomp"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/siginfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/stats"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/timer"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/vma"
	"google.golang.org/protobuf/proto"
)

var (
	u32 = proto.Uint32
	u64 = proto.Uint64
)

// critPath finds Debian's crit, the test oracle. As root it must exist
// (scripts/setup installs it); only a non-root run, which cannot have run
// the setup, may go without.
func critPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("crit")
	if err != nil {
		if os.Geteuid() == 0 {
			t.Fatalf("crit not found (scripts/setup installs Debian's criu package): %v", err)
		}
		t.Skipf("not root and crit not installed (scripts/setup, as root, installs it): %v", err)
	}
	return p
}

func crit(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(critPath(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("crit %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// critShow decodes one image with crit and returns its JSON.
func critShow(t *testing.T, path string) map[string]any {
	t.Helper()
	out := crit(t, "show", path)
	var img map[string]any
	if err := json.Unmarshal([]byte(out), &img); err != nil {
		t.Fatalf("crit show %s: %v\n%s", path, err, out)
	}
	return img
}

func tempDir(t *testing.T) *Dir {
	t.Helper()
	d, err := Open(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func x86Core(comm string, withTask bool) *criu_core.CoreEntry {
	regs := &core_x86.UserX86RegsEntry{
		R15: u64(15), R14: u64(14), R13: u64(13), R12: u64(12), Bp: u64(0x7ffc0000), Bx: u64(1),
		R11: u64(0x246), R10: u64(10), R9: u64(9), R8: u64(8), Ax: u64(0xfffffffffffffdfc), Cx: u64(2),
		Dx: u64(3), Si: u64(4), Di: u64(5), OrigAx: u64(35), Ip: u64(0x401000), Cs: u64(0x33),
		Flags: u64(0x246), Sp: u64(0x7ffc1000), Ss: u64(0x2b), FsBase: u64(0x7f0000001000),
		GsBase: u64(0), Ds: u64(0), Es: u64(0), Fs: u64(0), Gs: u64(0),
		Mode: core_x86.UserX86RegsMode_NATIVE.Enum(),
	}
	fp := &core_x86.UserX86FpregsEntry{
		Cwd: u32(0x37f), Swd: u32(0), Twd: u32(0), Fop: u32(0), Rip: u64(0), Rdp: u64(0),
		Mxcsr: u32(0x1f80), MxcsrMask: u32(0xffff),
		StSpace: make([]uint32, 32), XmmSpace: make([]uint32, 64), Padding: make([]uint32, 24),
		Xsave: &core_x86.UserX86XsaveEntry{XstateBv: u64(7), YmmhSpace: make([]uint32, 64)},
	}
	c := &criu_core.CoreEntry{
		Mtype: criu_core.CoreEntry_X86_64.Enum(),
		ThreadInfo: &core_x86.ThreadInfoX86{
			ClearTidAddr: u64(0x7f0000001290), Gpregs: regs, Fpregs: fp,
		},
		ThreadCore: &criu_core.ThreadCoreEntry{
			FutexRla: u64(0x7f00000012a0), FutexRlaLen: u32(24), SchedNice: proto.Int32(0),
			SchedPolicy: u32(0), BlkSigset: u64(1 << 9),
			Sas:       &criu_core.ThreadSasEntry{SsSp: u64(0), SsSize: u64(0), SsFlags: u32(2)},
			PdeathSig: u32(0),
			SignalsP:  &siginfo.SignalQueueEntry{Signals: []*siginfo.SiginfoEntry{{Siginfo: make([]byte, 128)}}},
			Creds: &creds.CredsEntry{Uid: u32(0), Gid: u32(0), Euid: u32(0), Egid: u32(0), Suid: u32(0),
				Sgid: u32(0), Fsuid: u32(0), Fsgid: u32(0), Secbits: u32(0),
				CapInh: []uint32{0, 0}, CapPrm: []uint32{^uint32(0), 0x1ff}, CapEff: []uint32{^uint32(0), 0x1ff},
				CapBnd: []uint32{^uint32(0), 0x1ff}, Groups: []uint32{0}, NoNewPrivs: u32(0)},
			SeccompMode: criu_core.SeccompMode_disabled.Enum(),
			Comm:        proto.String(comm),
			RseqEntry:   &rseq.RseqEntry{RseqAbiPointer: u64(0x7f0000001fe0), RseqAbiSize: u32(32), Signature: u32(0x53053053)},
		},
	}
	if withTask {
		c.Tc = &criu_core.TaskCoreEntry{
			TaskState: u32(1), ExitCode: u32(0), Personality: u32(0), Flags: u32(0x400100),
			BlkSigset: u64(0), Comm: proto.String(comm),
			Timers: &timer.TaskTimersEntry{
				Real: &timer.ItimerEntry{Isec: u64(1), Iusec: u64(0), Vsec: u64(0), Vusec: u64(500000)},
				Virt: &timer.ItimerEntry{Isec: u64(0), Iusec: u64(0), Vsec: u64(0), Vusec: u64(0)},
				Prof: &timer.ItimerEntry{Isec: u64(0), Iusec: u64(0), Vsec: u64(0), Vusec: u64(0)},
				Posix: []*timer.PosixTimerEntry{{ItId: u32(0), ClockId: u32(1), SiSigno: u32(14),
					ItSigevNotify: u32(0), SivalPtr: u64(0), Overrun: u32(0), Isec: u64(0), Insec: u64(100000000),
					Vsec: u64(0), Vnsec: u64(50000000)}},
			},
			Rlimits: &criu_core.TaskRlimitsEntry{Rlimits: []*rlimit.RlimitEntry{
				{Cur: u64(^uint64(0)), Max: u64(^uint64(0))}, {Cur: u64(8 << 20), Max: u64(^uint64(0))}}},
			SignalsS: &siginfo.SignalQueueEntry{},
			Sigactions: []*criu_sa.SaEntry{{Sigaction: u64(0x401200), Flags: u64(0x04000000), Restorer: u64(0x7f0000042000),
				Mask: u64(0), CompatSigaction: proto.Bool(false)}},
			ChildSubreaper: proto.Bool(false),
			OomScoreAdj:    proto.Int32(0),
			Loginuid:       u32(^uint32(0)),
		}
	}
	return c
}

func testMM() *mm.MmEntry {
	return &mm.MmEntry{
		MmStartCode: u64(0x400000), MmEndCode: u64(0x401000), MmStartData: u64(0x402000), MmEndData: u64(0x403000),
		MmStartStack: u64(0x7ffc1000), MmStartBrk: u64(0x404000), MmBrk: u64(0x425000),
		MmArgStart: u64(0x7ffc2000), MmArgEnd: u64(0x7ffc2010), MmEnvStart: u64(0x7ffc2010), MmEnvEnd: u64(0x7ffc2100),
		ExeFileId: u32(1), MmSavedAuxv: []uint64{6, 4096, 0, 0}, Dumpable: proto.Int32(1),
		Vmas: []*vma.VmaEntry{
			{Start: u64(0x400000), End: u64(0x401000), Pgoff: u64(0), Shmid: u64(1), Prot: u32(5), Flags: u32(2), Status: u32(1 | 1<<6), Fd: proto.Int64(-1)},
			{Start: u64(0x404000), End: u64(0x425000), Pgoff: u64(0), Shmid: u64(0), Prot: u32(3), Flags: u32(0x22), Status: u32(1 | 1<<5 | 1<<4), Fd: proto.Int64(-1), Madv: u64(0)},
			{Start: u64(0x7ffbf000), End: u64(0x7ffc3000), Pgoff: u64(0), Shmid: u64(0), Prot: u32(3), Flags: u32(0x122), Status: u32(1 | 1<<1 | 1<<5), Fd: proto.Int64(-1)},
		},
	}
}

func regFile(id uint32, name string) *fdinfo.FileEntry {
	return &fdinfo.FileEntry{Type: fdinfo.FdTypes_REG.Enum(), Id: u32(id), Reg: &regfile.RegFileEntry{
		Id: u32(id), Flags: u32(0x8002), Pos: u64(42), Name: proto.String(name),
		Fown:  &fown.FownEntry{Uid: u32(0), Euid: u32(0), Signum: u32(0), PidType: u32(0), Pid: u32(0)},
		MntId: proto.Int32(-1), Size: u64(100), Mode: u32(0o100644)}}
}

// roundTrip writes entries under name, reads them back, compares, and has
// crit decode the file.
func roundTrip[T proto.Message](t *testing.T, d *Dir, name string, entries ...T) {
	t.Helper()
	if err := Write(d, name, entries...); err != nil {
		t.Fatalf("write %s: %v", name, err)
	}
	got, err := ReadAll[T](d, name)
	if err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	if len(got) != len(entries) {
		t.Fatalf("%s: %d entries back, want %d", name, len(got), len(entries))
	}
	for i := range got {
		if !proto.Equal(got[i], entries[i]) {
			t.Fatalf("%s entry %d differs:\n got %v\nwant %v", name, i, got[i], entries[i])
		}
	}
}

func TestRoundTripAndCrit(t *testing.T) {
	d := tempDir(t)
	ids := &criu_core.TaskKobjIdsEntry{VmId: u32(1), FilesId: u32(2), FsId: u32(3), SighandId: u32(4),
		PidNsId: u32(5), NetNsId: u32(6), IpcNsId: u32(7), UtsNsId: u32(8), MntNsId: u32(9), UserNsId: u32(10),
		CgroupNsId: u32(11), TimeNsId: u32(12)}
	lsm := inventory.Lsmtype_NO_LSM
	if err := WriteInventory(d, InventoryOptions{RootIDs: ids, RootCgSet: 1, LSM: &lsm, RunID: "godwit-test"}); err != nil {
		t.Fatal(err)
	}
	inv, err := ReadInventory(d)
	if err != nil {
		t.Fatal(err)
	}
	if inv.GetImgVersion() != 2 || !inv.GetFdinfoPerId() || !inv.GetNsPerId() || !proto.Equal(inv.GetRootIds(), ids) {
		t.Fatalf("inventory back: %v", inv)
	}
	roundTrip(t, d, PstreeImg, &pstree.PstreeEntry{Pid: u32(100), Ppid: u32(0), Pgid: u32(100), Sid: u32(1), Threads: []uint32{100, 101}})
	roundTrip(t, d, CoreImg(100), x86Core("loop", true))
	roundTrip(t, d, CoreImg(101), x86Core("loop-thr", false))
	roundTrip(t, d, MmImg(100), testMM())
	roundTrip(t, d, IdsImg(100), ids)
	roundTrip(t, d, FsImg(100), &fs.FsEntry{CwdId: u32(2), RootId: u32(3), Umask: u32(0o22)})
	roundTrip(t, d, CredsImg(100), x86Core("", false).ThreadCore.Creds)
	roundTrip(t, d, FilesImg, regFile(1, "/usr/bin/loop"), regFile(2, "/tmp"), regFile(3, "/"),
		&fdinfo.FileEntry{Type: fdinfo.FdTypes_REG.Enum(), Id: u32(4), Reg: &regfile.RegFileEntry{Id: u32(4), Flags: u32(2), Pos: u64(0),
			Name: proto.String("/dev/null"), Fown: &fown.FownEntry{Uid: u32(0), Euid: u32(0), Signum: u32(0), PidType: u32(0), Pid: u32(0)}}})
	roundTrip(t, d, FdinfoImg(2),
		&fdinfo.FdinfoEntry{Id: u32(4), Flags: u32(0), Type: fdinfo.FdTypes_REG.Enum(), Fd: u32(0)},
		&fdinfo.FdinfoEntry{Id: u32(1), Flags: u32(1), Type: fdinfo.FdTypes_REG.Enum(), Fd: u32(3)})
	roundTrip(t, d, "sigacts-100.img", &criu_sa.SaEntry{Sigaction: u64(1), Flags: u64(0), Restorer: u64(0), Mask: u64(0)})
	roundTrip(t, d, "itimers-100.img", x86Core("", true).Tc.Timers.Real)
	roundTrip(t, d, "posix-timers-100.img", x86Core("", true).Tc.Timers.Posix...)
	roundTrip(t, d, "rlimit-100.img", x86Core("", true).Tc.Rlimits.Rlimits...)
	roundTrip(t, d, "signal-p-100.img", &siginfo.SignalQueueEntry{Signals: []*siginfo.SiginfoEntry{{Siginfo: bytes.Repeat([]byte{1}, 128)}}})
	roundTrip(t, d, "signal-s-101.img", &siginfo.SignalQueueEntry{})
	roundTrip(t, d, "seccomp.img", &seccomp.SeccompEntry{SeccompFilters: []*seccomp.SeccompFilter{{Filter: []byte{6, 0, 0, 0, 0, 0, 0xff, 0x7f}}}})

	ds := &stats.DumpStatsEntry{FreezingTime: u32(120), FrozenTime: u32(5000), MemdumpTime: u32(300), MemwriteTime: u32(200),
		PagesScanned: u64(1000), PagesSkippedParent: u64(0), PagesWritten: u64(800), PagesLazy: u64(0), IrmapResolve: u32(0)}
	if err := WriteDumpStats(d, "", ds); err != nil {
		t.Fatal(err)
	}
	rs := &stats.RestoreStatsEntry{PagesCompared: u64(0), PagesSkippedCow: u64(0), ForkingTime: u32(10), RestoreTime: u32(900), PagesRestored: u64(800)}
	if err := WriteRestoreStats(d, "", rs); err != nil {
		t.Fatal(err)
	}
	st, err := ReadStats(d, StatsDump)
	if err != nil || !proto.Equal(st.GetDump(), ds) {
		t.Fatalf("stats-dump back: %v %v", st, err)
	}
	st, err = ReadStats(d, StatsRestore)
	if err != nil || !proto.Equal(st.GetRestore(), rs) {
		t.Fatalf("stats-restore back: %v %v", st, err)
	}

	// The service prefix, as CRIU writes stats files.
	raw, _ := os.ReadFile(filepath.Join(d.Path(), StatsDump))
	if binary.LittleEndian.Uint32(raw) != 0x55105940 || binary.LittleEndian.Uint32(raw[4:]) != 0x57093306 {
		t.Fatalf("stats-dump header % x", raw[:8])
	}
	raw, _ = os.ReadFile(filepath.Join(d.Path(), InventoryImg))
	if binary.LittleEndian.Uint32(raw) != 0x58313116 {
		t.Fatalf("inventory header % x", raw[:4])
	}

	// Debian's crit is the oracle: it must decode every file (but crit 3.17
	// has no handler for SIGNAL images at all; CRIU keeps signal queues in
	// core-*.img, and so must godwit).
	want := map[string]string{
		InventoryImg: "INVENTORY", PstreeImg: "PSTREE", CoreImg(100): "CORE", CoreImg(101): "CORE", MmImg(100): "MM",
		IdsImg(100): "IDS", FsImg(100): "FS", CredsImg(100): "CREDS", FilesImg: "FILES", FdinfoImg(2): "FDINFO",
		"sigacts-100.img": "SIGACT", "itimers-100.img": "ITIMERS", "posix-timers-100.img": "POSIX_TIMERS",
		"rlimit-100.img": "RLIMIT",
		"seccomp.img":    "SECCOMP", StatsDump: "STATS", StatsRestore: "STATS",
	}
	for name, magic := range want {
		img := critShow(t, filepath.Join(d.Path(), name))
		if img["magic"] != magic {
			t.Errorf("crit: %s magic %v, want %s", name, img["magic"], magic)
		}
	}
	core := critShow(t, filepath.Join(d.Path(), CoreImg(100)))
	e := core["entries"].([]any)[0].(map[string]any)
	if e["tc"].(map[string]any)["comm"] != "loop" {
		t.Errorf("crit core: %v", e)
	}
	gp := e["thread_info"].(map[string]any)["gpregs"].(map[string]any)
	if gp["ip"] != "0x401000" {
		t.Errorf("crit core ip %v", gp["ip"])
	}
	if _, ok := e["thread_core"].(map[string]any)["rseq_entry"]; ok {
		t.Log("crit knows rseq_entry")
	}
}

func TestCritExplore(t *testing.T) {
	critPath(t)
	d := tempDir(t)
	ids := &criu_core.TaskKobjIdsEntry{VmId: u32(1), FilesId: u32(7), FsId: u32(3), SighandId: u32(4)}
	steps := []error{
		WriteInventory(d, InventoryOptions{RootIDs: ids}),
		Write(d, PstreeImg,
			&pstree.PstreeEntry{Pid: u32(100), Ppid: u32(0), Pgid: u32(100), Sid: u32(1), Threads: []uint32{100}},
			&pstree.PstreeEntry{Pid: u32(105), Ppid: u32(100), Pgid: u32(100), Sid: u32(1), Threads: []uint32{105}}),
		Write(d, CoreImg(100), x86Core("parentproc", true)),
		Write(d, CoreImg(105), x86Core("childproc", true)),
		Write(d, MmImg(100), testMM()),
		Write(d, MmImg(105), testMM()),
		Write(d, IdsImg(100), ids),
		Write(d, IdsImg(105), ids),
		Write(d, FsImg(100), &fs.FsEntry{CwdId: u32(2), RootId: u32(3)}),
		Write(d, FsImg(105), &fs.FsEntry{CwdId: u32(2), RootId: u32(3)}),
		Write(d, FilesImg, regFile(1, "/usr/bin/loop"), regFile(2, "/tmp/work"), regFile(3, "/"), regFile(4, "/var/log/loop.log")),
		Write(d, FdinfoImg(7), &fdinfo.FdinfoEntry{Id: u32(4), Flags: u32(0), Type: fdinfo.FdTypes_REG.Enum(), Fd: u32(5)}),
	}
	for i, err := range steps {
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	for _, pid := range []int{100, 105} {
		w, err := CreatePages(d, PagemapImg(pid), uint32(pid))
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Add(0x404000, 2, PagePresent|PageLazy); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(make([]byte, 2*PageSize)); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	ps := crit(t, "x", d.Path(), "ps")
	for _, s := range []string{"parentproc", "childproc", "105"} {
		if !strings.Contains(ps, s) {
			t.Errorf("crit x ps lacks %q:\n%s", s, ps)
		}
	}
	fds := crit(t, "x", d.Path(), "fds")
	for _, s := range []string{"/var/log/loop.log", "cwd: /tmp/work", "root: /"} {
		if !strings.Contains(fds, s) {
			t.Errorf("crit x fds lacks %q:\n%s", s, fds)
		}
	}
	mems := crit(t, "x", d.Path(), "mems")
	for _, s := range []string{"/usr/bin/loop", "00404000-00425000", "[stack]"} {
		if !strings.Contains(mems, s) {
			t.Errorf("crit x mems lacks %q:\n%s", s, mems)
		}
	}
	rss := crit(t, "x", d.Path(), "rss")
	if !strings.Contains(rss, "404000 / 2") {
		t.Errorf("crit x rss:\n%s", rss)
	}
	t.Logf("crit x ps:\n%s\nfds:\n%s\nmems:\n%s", ps, fds, mems)
}

func TestKindOf(t *testing.T) {
	for name, want := range map[string]string{
		"inventory.img": "INVENTORY", "core-42.img": "CORE", "mm-1.img": "MM", "pagemap-42.img": "PAGEMAP",
		"pagemap-shmem-77.img": "PAGEMAP", "pstree.img": "PSTREE", "files.img": "FILES", "fdinfo-3.img": "FDINFO",
		"fs-9.img": "FS", "creds-9.img": "CREDS", "ids-9.img": "IDS", "stats-dump": "STATS", "stats-restore": "STATS",
		"cpuinfo.img": "CPUINFO", "irmap-cache": "IRMAP_CACHE", "ghost-file-1f.img": "GHOST_FILE",
		"tcp-stream-a0.img": "TCP_STREAM", "netns-5.img": "NETNS", "binfmt-misc.img": "BINFMT_MISC",
		"signal-p-3.img": "SIGNAL", "tty-info.img": "TTY_INFO", "memfd.img": "MEMFD_INODE",
		"pages-3.img": "", "netns-ct-5.img": "", "tmpfs-dev-3.tar.gz.img": "",
	} {
		k, err := KindOf(name)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if k.Magic != want || (want == "") != k.Raw() {
			t.Errorf("%s: kind %+v, want %s", name, k, want)
		}
		if want != "" && len(k.Types) == 0 {
			t.Errorf("%s: no message type", name)
		}
	}
	k, _ := KindOf("inventory.img")
	if k.Prefix != PrefixNone {
		t.Errorf("inventory prefix %d", k.Prefix)
	}
	k, _ = KindOf("stats-dump")
	if k.Prefix != PrefixService {
		t.Errorf("stats prefix %d", k.Prefix)
	}
	for _, bad := range []string{"core-x.img", "core-.img", "stats-foo", "../core-1.img", "a/b", "..", "", "pagemap-1.img.bak", "random.txt"} {
		if _, err := KindOf(bad); err == nil {
			t.Errorf("KindOf(%q) accepted", bad)
		}
	}
}

func TestNames(t *testing.T) {
	d := tempDir(t)
	for _, bad := range []string{"..", ".", "../x", "a/b", "/etc/passwd", "x\x00y", ""} {
		if _, err := d.Create(bad); !errors.Is(err, ErrBadName) {
			t.Errorf("Create(%q): %v", bad, err)
		}
		if _, err := d.OpenImage(bad); err == nil {
			t.Errorf("OpenImage(%q) accepted", bad)
		}
	}
	// A symlink in the dir is not followed by file opens.
	if err := os.Symlink("/etc/passwd", filepath.Join(d.Path(), "core-1.img")); err != nil {
		t.Fatal(err)
	}
	if _, err := d.OpenRead("core-1.img"); err == nil {
		t.Error("followed a symlink")
	}
}

func TestOpenFD(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	d, err := OpenFD(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	f.Close() // the Dir holds its own fd
	defer d.Close()
	if d.Path() != dir {
		t.Errorf("Path %q, want %q", d.Path(), dir)
	}
	if err := Write(d, FsImg(1), &fs.FsEntry{CwdId: u32(1), RootId: u32(2)}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "fs-1.img")); err != nil {
		t.Fatal(err)
	}
	reg, _ := os.CreateTemp(dir, "x")
	defer reg.Close()
	if _, err := OpenFD(int(reg.Fd())); err == nil {
		t.Error("OpenFD accepted a regular file")
	}
	created := filepath.Join(dir, "a", "b")
	d2, err := Open(created, true)
	if err != nil {
		t.Fatal(err)
	}
	d2.Close()
	if _, err := Open(filepath.Join(dir, "missing"), false); err == nil {
		t.Error("Open of a missing dir succeeded")
	}
}

func TestWrongType(t *testing.T) {
	d := tempDir(t)
	if err := Write(d, CoreImg(1), testMM()); err == nil || !strings.Contains(err.Error(), "mm_entry") {
		t.Fatalf("mm entry in a core image: %v", err)
	}
	if err := Write(d, MmImg(1), testMM()); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadAll[*criu_core.CoreEntry](d, MmImg(1)); err == nil {
		t.Fatal("read mm image as core")
	}
	// Missing proto2 required field: refused at write time.
	if err := Write(d, FsImg(1), &fs.FsEntry{CwdId: u32(1)}); err == nil {
		t.Fatal("wrote fs entry without root_id")
	}
}

func writeFile(t *testing.T, d *Dir, name string, b []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(d.Path(), name), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func le(v ...uint32) []byte {
	var b []byte
	for _, x := range v {
		b = binary.LittleEndian.AppendUint32(b, x)
	}
	return b
}

func TestCorruptImages(t *testing.T) {
	d := tempDir(t)
	if err := Write(d, CoreImg(42), x86Core("x", true)); err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(filepath.Join(d.Path(), CoreImg(42)))
	mmGood := func() []byte {
		if err := Write(d, MmImg(9), testMM()); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(filepath.Join(d.Path(), MmImg(9)))
		return b
	}()
	cases := []struct {
		name, file string
		data       []byte
		want       string
	}{
		{"empty", "core-1.img", nil, "images: core-1.img: offset 0: truncated header (need 4 bytes, have 0)"},
		{"short header", "core-1.img", good[:6], "images: core-1.img: offset 4: truncated header (need 4 bytes, have 2)"},
		{"truncated entry", "core-42.img", good[:15], "images: core-42.img: offset 8: truncated entry (need "},
		{"truncated size", "core-1.img", good[:10], "offset 8: truncated entry size (need 4 bytes, have 2)"},
		{"wrong magic", "core-1.img", mmGood, "offset 4: wrong magic MM (0x57492820), want CORE (0x55053847)"},
		{"foreign", "core-1.img", []byte("#!/bin/sh\necho hi\n"), "offset 0: wrong magic"},
		{"unknown magic", "x.bin", le(magicCommon, 0x12345678), "x.bin: offset 4: unknown magic 0x12345678"},
		{"huge size", "core-1.img", le(magicCommon, 0x55053847, 0xfffffff0), "offset 8: entry size 4294967280 over the 67108864 limit"},
		{"size past end", "core-1.img", le(magicCommon, 0x55053847, 1000, 0), "offset 8: truncated entry (need 1000 bytes, have 4)"},
		{"garbage entry", "core-1.img", append(le(magicCommon, 0x55053847, 3), 0xff, 0xff, 0xff), "offset 8: bad core_entry"},
		{"missing prefix", "core-1.img", le(0x55053847, 0), "offset 0: wrong header for CORE"},
		{"inventory with prefix", "inventory.img", le(magicCommon, 0x58313116), "wrong header"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			writeFile(t, d, c.file, c.data)
			_, err := ReadAll[*criu_core.CoreEntry](d, c.file)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want %q", err, c.want)
			}
			if !errors.Is(err, ErrFormat) && c.name != "garbage entry" {
				t.Fatalf("%v is not ErrFormat", err)
			}
		})
	}
	// ReadOne wants exactly one entry.
	two := append(append([]byte{}, good...), good[8:]...)
	writeFile(t, d, "core-2.img", two)
	if _, err := ReadOne[*criu_core.CoreEntry](d, "core-2.img"); err == nil || !strings.Contains(err.Error(), "more than one entry") {
		t.Fatalf("two entries: %v", err)
	}
	writeFile(t, d, "core-3.img", good[:8])
	if _, err := ReadOne[*criu_core.CoreEntry](d, "core-3.img"); err == nil || !strings.Contains(err.Error(), "offset 8: no entry") {
		t.Fatalf("no entry: %v", err)
	}
	if _, err := ReadOne[*criu_core.CoreEntry](d, "core-404.img"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

func TestEntryStream(t *testing.T) {
	// Streams over non-files: a pipe-like buffer with payloads.
	var buf bytes.Buffer
	k, _ := KindOf("pipes-data.img")
	w, err := NewEntryWriter(&buf, "pipes-data.img", k)
	if err != nil {
		t.Fatal(err)
	}
	// pipes-data: entry then its bytes.
	for i := range 3 {
		pd := mustKindType(t, k)
		setPipeData(pd, uint32(i), 5)
		if err := w.Write(pd); err != nil {
			t.Fatal(err)
		}
		if err := w.WritePayload([]byte("hello")); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := NewEntryReader(bytes.NewReader(buf.Bytes()), "pipes-data.img", int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		pd := mustKindType(t, k)
		if err := r.Next(pd); err != nil {
			t.Fatal(err)
		}
		p := make([]byte, 5)
		if err := r.ReadPayload(p); err != nil || string(p) != "hello" {
			t.Fatalf("payload %d: %q %v", i, p, err)
		}
	}
	if err := r.Next(mustKindType(t, k)); err != io.EOF {
		t.Fatalf("end: %v", err)
	}
	// Reading past a truncated payload.
	r, _ = NewEntryReader(bytes.NewReader(buf.Bytes()[:buf.Len()-2]), "pipes-data.img", int64(buf.Len()-2))
	for range 2 {
		r.Next(mustKindType(t, k))
		r.SkipPayload(5)
	}
	r.Next(mustKindType(t, k))
	if err := r.ReadPayload(make([]byte, 5)); err == nil || !strings.Contains(err.Error(), "truncated payload (need 5 bytes, have 3)") {
		t.Fatalf("truncated payload: %v", err)
	}
}

func mustKindType(t *testing.T, k Kind) proto.Message {
	t.Helper()
	return k.Types[0].ProtoReflect().New().Interface()
}

func setPipeData(m proto.Message, id, n uint32) {
	r := m.ProtoReflect()
	f := r.Descriptor().Fields()
	r.Set(f.ByName("pipe_id"), protoValueU32(id))
	r.Set(f.ByName("bytes"), protoValueU32(n))
}
