package restorer

import (
	"os"
	"path/filepath"
	"testing"

	core_x86 "github.com/checkpoint-restore/go-criu/v8/crit/images/core-x86"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/creds"
	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fown"
	fsimg "github.com/checkpoint-restore/go-criu/v8/crit/images/fs"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mm"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pstree"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/regfile"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/vma"
	"google.golang.org/protobuf/proto"

	"godwit/internal/images"
)

const fakePid = 4242

// writeFakeImages hand-builds a minimal, consistent image set of one
// process with one anonymous VMA holding one page.
func writeFakeImages(t testing.TB, dir string) {
	t.Helper()
	d, err := images.Open(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	u32, u64 := proto.Uint32, proto.Uint64
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(images.WriteInventory(d, images.InventoryOptions{}))
	must(images.Write(d, images.PstreeImg, &pstree.PstreeEntry{Pid: u32(fakePid), Ppid: u32(1), Pgid: u32(fakePid), Sid: u32(fakePid), Threads: []uint32{fakePid}}))
	regs := &core_x86.UserX86RegsEntry{}
	for _, f := range []**uint64{&regs.R15, &regs.R14, &regs.R13, &regs.R12, &regs.Bp, &regs.Bx, &regs.R11, &regs.R10,
		&regs.R9, &regs.R8, &regs.Ax, &regs.Cx, &regs.Dx, &regs.Si, &regs.Di, &regs.OrigAx, &regs.Ip, &regs.Cs,
		&regs.Flags, &regs.Sp, &regs.Ss, &regs.FsBase, &regs.GsBase, &regs.Ds, &regs.Es, &regs.Fs, &regs.Gs} {
		*f = u64(0)
	}
	fp := &core_x86.UserX86FpregsEntry{Cwd: u32(0x37f), Swd: u32(0), Twd: u32(0), Fop: u32(0), Rip: u64(0), Rdp: u64(0),
		Mxcsr: u32(0x1f80), MxcsrMask: u32(0xffff), StSpace: make([]uint32, 32), XmmSpace: make([]uint32, 64)}
	cr := &creds.CredsEntry{Uid: u32(0), Gid: u32(0), Euid: u32(0), Egid: u32(0), Suid: u32(0), Sgid: u32(0),
		Fsuid: u32(0), Fsgid: u32(0), Secbits: u32(0)}
	core := &criu_core.CoreEntry{
		Mtype:      criu_core.CoreEntry_X86_64.Enum(),
		ThreadInfo: &core_x86.ThreadInfoX86{ClearTidAddr: u64(0), Gpregs: regs, Fpregs: fp},
		Tc: &criu_core.TaskCoreEntry{TaskState: u32(images.TaskAlive), ExitCode: u32(0), Personality: u32(0), Flags: u32(0),
			BlkSigset: u64(0), Comm: proto.String("fake")},
		Ids:        &criu_core.TaskKobjIdsEntry{VmId: u32(1), FilesId: u32(1), FsId: u32(1), SighandId: u32(1)},
		ThreadCore: &criu_core.ThreadCoreEntry{FutexRla: u64(0), FutexRlaLen: u32(0), Creds: cr},
	}
	must(images.Write(d, images.CoreImg(fakePid), core))
	must(images.Write(d, images.MmImg(fakePid), &mm.MmEntry{
		MmStartCode: u64(0x400000), MmEndCode: u64(0x401000), MmStartData: u64(0x401000), MmEndData: u64(0x402000),
		MmStartStack: u64(0x7ff000), MmStartBrk: u64(0x500000), MmBrk: u64(0x500000), MmArgStart: u64(0x7ff000),
		MmArgEnd: u64(0x7ff010), MmEnvStart: u64(0x7ff010), MmEnvEnd: u64(0x7ff020), ExeFileId: u32(1),
		MmSavedAuxv: []uint64{0, 0},
		Vmas: []*vma.VmaEntry{{Start: u64(0x7fe000), End: u64(0x800000), Pgoff: u64(0), Shmid: u64(0),
			Prot: u32(3), Flags: u32(0x22), Status: u32(images.VmaAreaRegular | images.VmaAnonPrivate), Fd: proto.Int64(-1)}},
	}))
	reg := func(id uint32, name string) *fdinfo.FileEntry {
		return &fdinfo.FileEntry{Type: fdinfo.FdTypes_REG.Enum(), Id: u32(id), Reg: &regfile.RegFileEntry{
			Id: u32(id), Flags: u32(0), Pos: u64(0), Name: proto.String(name),
			Fown: &fown.FownEntry{Uid: u32(0), Euid: u32(0), Signum: u32(0), PidType: u32(0), Pid: u32(0)}}}
	}
	must(images.Write(d, images.FilesImg, reg(1, "/bin/true"), reg(2, "/")))
	must(images.Write[*fdinfo.FdinfoEntry](d, images.FdinfoImg(1)))
	must(images.Write(d, images.FsImg(fakePid), &fsimg.FsEntry{CwdId: u32(2), RootId: u32(2), Umask: u32(0o22)}))
	pw, err := images.CreatePages(d, images.PagemapImg(fakePid), 1)
	must(err)
	must(pw.Add(0x7ff000, 1, images.PagePresent))
	_, err = pw.Write(make([]byte, pageSize))
	must(err)
	must(pw.Close())
}

func TestReadFakeImages(t *testing.T) {
	dir := t.TempDir()
	writeFakeImages(t, dir)
	d, err := images.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ti, err := readImages(d)
	if err != nil {
		t.Fatal(err)
	}
	defer ti.close()
	if ti.pid != fakePid || len(ti.threads) != 1 || ti.pages.Len() != 1 || ti.filePath(1) != "/bin/true" {
		t.Fatalf("read back %+v", ti)
	}
}

// FuzzReadImages replaces one image of a valid set with fuzzed bytes:
// reading must fail cleanly or succeed, never panic.
func FuzzReadImages(f *testing.F) {
	base := f.TempDir()
	writeFakeImages(f, base)
	names := []string{images.InventoryImg, images.PstreeImg, images.CoreImg(fakePid), images.MmImg(fakePid),
		images.FilesImg, images.FdinfoImg(1), images.FsImg(fakePid), images.PagemapImg(fakePid)}
	for i, n := range names {
		b, err := os.ReadFile(filepath.Join(base, n))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), b)
	}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		dir := t.TempDir()
		ents, _ := os.ReadDir(base)
		for _, e := range ents {
			b, _ := os.ReadFile(filepath.Join(base, e.Name()))
			os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644)
		}
		os.WriteFile(filepath.Join(dir, names[int(which)%len(names)]), data, 0o644)
		d, err := images.Open(dir, false)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		if ti, err := readImages(d); err == nil {
			ti.close()
		}
	})
}
