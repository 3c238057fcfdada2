package criuimg

import (
	"fmt"
	"sync"

	core_x86 "github.com/checkpoint-restore/go-criu/v8/crit/images/core-x86"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/creds"
	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	criu_sa "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-sa"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fown"
	fsimg "github.com/checkpoint-restore/go-criu/v8/crit/images/fs"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mm"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/ns"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pstree"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/regfile"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/rlimit"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/rseq"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/siginfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/timer"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/vma"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"godwit/internal/buildid"
	"godwit/internal/images"
	"godwit/internal/model"
	"godwit/internal/xstate"
)

// Write writes t's images into d, inventory.img last (its absence marks
// an incomplete dump). written is called with each image's name before
// the image is created, so that a caller can remove them after a failure.
func Write(d *images.Dir, t *model.Tree, written func(name string)) error {
	if len(t.Tasks) == 0 {
		return fmt.Errorf("write images: empty tree")
	}
	// The entry images are written by a few writers at once (a tree's
	// are thousands of small files, each a marshal and a few syscalls);
	// all are written before inventory.img.
	iw := newImageWriters(d)
	defer iw.wait()
	put := func(name string, ms ...proto.Message) error {
		if written != nil {
			written(name)
		}
		iw.add(name, ms)
		return nil
	}
	if err := checkUnixPeers(t); err != nil {
		return fmt.Errorf("write images: %w", err)
	}
	var pss []proto.Message
	var frozen []frozenRegs // see RestartImg
	fdTables := map[model.ID]bool{}
	sc := &seccompTable{}
	for _, k := range t.Tasks {
		if k.State == model.Dead {
			// A zombie: its pstree entry and a core with its state
			// and wait status, as CRIU writes one.
			c := &criu_core.CoreEntry{Mtype: criu_core.CoreEntry_X86_64.Enum(), Tc: taskCore(k)}
			if err := put(images.CoreImg(k.Pid), c); err != nil {
				return fmt.Errorf("write images of %d: %w", k.Pid, err)
			}
			pss = append(pss, pstreeEntry(k))
			continue
		}
		fr, err := writeTask(k, sc, put)
		if err != nil {
			return fmt.Errorf("write images of %d: %w", k.Pid, err)
		}
		frozen = append(frozen, fr...)
		if err := writeGodwit(d, k, t.Files, written); err != nil {
			return fmt.Errorf("write images of %d: %w", k.Pid, err)
		}
		pss = append(pss, pstreeEntry(k))
		if !fdTables[k.IDs.Files] {
			fdTables[k.IDs.Files] = true
			var fds []proto.Message
			for _, fd := range k.FDs {
				f := t.Files[fd.File]
				if f == nil {
					f = &model.File{Kind: model.Path} // a dangling id is written as is (and refused on read)
				}
				fds = append(fds, fdinfoEntry(fd, f))
			}
			if err := put(images.FdinfoImg(uint32(k.IDs.Files)), fds...); err != nil {
				return err
			}
		}
	}
	if err := sc.write(put); err != nil {
		return err
	}
	if err := put(images.PstreeImg, pss...); err != nil {
		return err
	}
	create := func(name string) (*images.EntryWriter, error) {
		if written != nil {
			written(name)
		}
		return d.CreateImage(name)
	}
	if err := writeNamespaces(d, t, written, put, create); err != nil {
		return fmt.Errorf("write namespace images: %w", err)
	}
	var files []proto.Message
	memfdIDs, memfds := memfdInodes(t)
	ttyIDs, ttys := ttyInfos(t)
	ids := t.FileIDs()
	regID := uint32(0) // FIFOs' REG entries get ids after every file's
	if len(ids) > 0 {
		regID = uint32(ids[len(ids)-1])
	}
	linkIDs := map[*model.GhostState]uint32{}
	for _, id := range ids {
		f := t.Files[id]
		if f.Kind == model.Path && f.Pipe != nil {
			regID++
			reg, ff := fifoEntries(f, regID)
			files = append(files, reg, ff)
			continue
		}
		if f.Kind == model.Path || f.Kind == model.Ghost {
			files = append(files, fileEntry(f))
			if g := f.Ghost; f.Kind == model.Ghost && g != nil && g.Linked != "" && linkIDs[g] == 0 {
				// The --link-remap link, a REG entry of its own
				// that remap-fpath.img names (as CRIU writes it).
				regID++
				linkIDs[g] = regID
				files = append(files, fileEntry(&model.File{ID: model.ID(regID), Kind: model.Path, Path: g.Linked, Flags: unix.O_RDONLY, Mode: g.Mode}))
			}
			continue
		}
		if f.Kind == model.Tty && f.Tty != nil {
			regID++
			reg, te := ttyEntries(f, regID, ttyIDs[endOf(f.Tty)])
			files = append(files, reg, te)
			continue
		}
		if f.Kind == model.Tun && f.Tun != nil {
			files = append(files, tunEntry(f))
			continue
		}
		if f.Kind == model.Namespace && f.NS != nil {
			flag, nsID := nsOf(t, f)
			files = append(files, &fdinfo.FileEntry{Type: fdinfo.FdTypes_NS.Enum(), Id: proto.Uint32(uint32(f.ID)),
				Nsf: &ns.NsFileEntry{Id: proto.Uint32(uint32(f.ID)), NsId: proto.Uint32(nsID), NsCflag: proto.Uint32(flag), Flags: proto.Uint32(f.Flags)}})
			continue
		}
		if f.Kind == model.Memfd && f.Memfd != nil {
			files = append(files, memfdEntry(f, memfdIDs[f.Memfd]))
			continue
		}
		e, err := kindEntry(f)
		if err != nil {
			return fmt.Errorf("write images: %w", err)
		}
		files = append(files, e)
		if f.Unix != nil && f.Unix.External {
			regID++
			files = append(files, externPeerEntry(f.Unix, regID))
		}
	}
	if err := setOwners(t, files); err != nil {
		return err
	}
	if err := put(images.FilesImg, files...); err != nil {
		return err
	}
	if err := writePipesData(d, t, written); err != nil {
		return err
	}
	if err := writeTCPStreams(d, t, written); err != nil {
		return fmt.Errorf("write images: %w", err)
	}
	if err := writeSkQueues(d, t, written); err != nil {
		return err
	}
	if err := writeGhosts(d, t, linkIDs, written); err != nil {
		return err
	}
	if err := writeMemfds(d, memfds, written); err != nil {
		return err
	}
	if err := writeTtys(d, ttys, written); err != nil {
		return err
	}
	if err := writeTuns(d, t, written); err != nil {
		return err
	}
	if err := writeLocks(d, t, written); err != nil {
		return err
	}
	if len(frozen) > 0 {
		if written != nil {
			written(RestartImg)
		}
		if err := writeRestart(d, frozen); err != nil {
			return err
		}
	}
	if err := iw.wait(); err != nil {
		return err
	}
	if written != nil {
		written(images.InventoryImg)
	}
	return images.WriteInventory(d, images.InventoryOptions{RootIDs: rootIDs(t)})
}

// imageWriters writes entry images on a few goroutines; wait reports the
// failure of the first image, in the order they were added.
type imageWriters struct {
	d    *images.Dir
	jobs chan imageJob
	wg   sync.WaitGroup
	mu   sync.Mutex
	err  error
	at   int // the order of the image err is of
	n    int
	once sync.Once
}

type imageJob struct {
	i    int
	name string
	ms   []proto.Message
}

// imageWriterCount is how many images are written at once.
const imageWriterCount = 4

func newImageWriters(d *images.Dir) *imageWriters {
	w := &imageWriters{d: d, jobs: make(chan imageJob, 64)}
	for range imageWriterCount {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for j := range w.jobs {
				if err := images.Write(w.d, j.name, j.ms...); err != nil {
					w.mu.Lock()
					if w.err == nil || j.i < w.at {
						w.err, w.at = err, j.i
					}
					w.mu.Unlock()
				}
			}
		}()
	}
	return w
}

func (w *imageWriters) add(name string, ms []proto.Message) {
	w.jobs <- imageJob{i: w.n, name: name, ms: ms}
	w.n++
}

// wait ends the writers once every image added is written.
func (w *imageWriters) wait() error {
	w.once.Do(func() { close(w.jobs) })
	w.wg.Wait()
	return w.err
}

// rootIDs are inventory.img's root_ids: the ids of the dumping tool
// itself, against which CRIU's restore computes the root task's clone
// flags. The tool's mm, fd table, fs_struct and sighand are never a
// task's, so each gets an id no task has (CRIU refuses a root task whose
// files_id equals root_ids': "Image corruption on kIDs data"). The
// namespaces stand for the host's: those of the root task, since godwit
// dumps trees in the namespaces it runs in, but for the tree's own UTS
// and IPC namespaces: CRIU makes new ones for the root (and reads their
// images) when its ids differ from root_ids', so those get an id no task
// has.
func rootIDs(t *model.Tree) *criu_core.TaskKobjIdsEntry {
	r := t.Root().IDs
	var maxID model.ID
	for _, k := range t.Tasks {
		maxID = max(maxID, k.IDs.VM, k.IDs.Files, k.IDs.FS, k.IDs.Sighand)
	}
	r.VM, r.Files, r.FS, r.Sighand = maxID+1, maxID+1, maxID+1, maxID+1
	if t.UTS != nil {
		r.NS.UTS = otherNS(r.NS.UTS)
	}
	if t.IPC != nil {
		r.NS.IPC = otherNS(r.NS.IPC)
	}
	return kobjIDs(&r)
}

// otherNS is a nonzero namespace id other than id.
func otherNS(id uint32) uint32 {
	if id+1 == 0 {
		return 1
	}
	return id + 1
}

// writeTask writes k's images; it returns the frozen registers of the
// threads whose core holds them with a syscall restart applied.
func writeTask(k *model.Task, sc *seccompTable, put func(string, ...proto.Message) error) ([]frozenRegs, error) {
	if len(k.Threads) == 0 {
		return nil, fmt.Errorf("no threads")
	}
	ids := kobjIDs(&k.IDs)
	var frozen []frozenRegs
	for i, th := range k.Threads {
		// A pending signal, the thread's or the task's, decides how an
		// interrupted syscall resumes (see gpregs).
		c, applied, err := coreEntry(th, len(th.Pending) > 0 || len(k.SharedSignals) > 0)
		if err != nil {
			return nil, fmt.Errorf("thread %d: %w", th.Tid, err)
		}
		// A dead task's registers are not read back (nor restored).
		if applied && k.State != model.Dead && k.State != model.Zombie {
			frozen = append(frozen, frozenRegs{tid: uint32(th.Tid), rax: th.Regs.Rax, rip: th.Regs.Rip})
		}
		if err := sc.setSeccomp(c.ThreadCore, th); err != nil {
			return nil, fmt.Errorf("thread %d: %w", th.Tid, err)
		}
		if i == 0 {
			c.Tc = taskCore(k)
			c.Ids = ids
		}
		if err := put(images.CoreImg(th.Tid), c); err != nil {
			return nil, err
		}
	}
	// crit 3.17 (and CRIU 3.x) read the ids from ids-PID.img; CRIU 4
	// from core. Write both.
	if err := put(images.IdsImg(k.Pid), ids); err != nil {
		return nil, err
	}
	if k.MM != nil {
		if err := checkAuxv(k.MM.Auxv); err != nil {
			return nil, err
		}
		if err := put(images.MmImg(k.Pid), mmEntry(k.MM)); err != nil {
			return nil, err
		}
	}
	if k.FS != nil {
		fs := &fsimg.FsEntry{CwdId: proto.Uint32(uint32(k.FS.Cwd)), RootId: proto.Uint32(uint32(k.FS.Root))}
		if k.FS.Umask != nil {
			fs.Umask = proto.Uint32(*k.FS.Umask)
		}
		if err := put(images.FsImg(k.Pid), fs); err != nil {
			return nil, err
		}
	}
	return frozen, nil
}

func pstreeEntry(k *model.Task) *pstree.PstreeEntry {
	tids := make([]uint32, len(k.Threads))
	for i, th := range k.Threads {
		tids[i] = uint32(th.Tid)
	}
	if len(tids) == 0 {
		tids = []uint32{uint32(k.Pid)} // a zombie, as CRIU lists it
	}
	return &pstree.PstreeEntry{
		Pid: proto.Uint32(uint32(k.Pid)), Ppid: proto.Uint32(uint32(k.Ppid)),
		Pgid: proto.Uint32(uint32(k.Pgid)), Sid: proto.Uint32(uint32(k.Sid)),
		Threads: tids,
	}
}

func kobjIDs(i *model.KobjIDs) *criu_core.TaskKobjIdsEntry {
	ns := func(v uint32) *uint32 {
		if v == 0 {
			return nil
		}
		return proto.Uint32(v)
	}
	return &criu_core.TaskKobjIdsEntry{
		VmId: proto.Uint32(uint32(i.VM)), FilesId: proto.Uint32(uint32(i.Files)),
		FsId: proto.Uint32(uint32(i.FS)), SighandId: proto.Uint32(uint32(i.Sighand)),
		PidNsId: ns(i.NS.Pid), NetNsId: ns(i.NS.Net), IpcNsId: ns(i.NS.IPC), UtsNsId: ns(i.NS.UTS),
		MntNsId: ns(i.NS.Mnt), UserNsId: ns(i.NS.User), CgroupNsId: ns(i.NS.Cgroup), TimeNsId: ns(i.NS.Time),
	}
}

func signalQueue(q []model.Siginfo) *siginfo.SignalQueueEntry {
	if len(q) == 0 {
		return nil
	}
	out := &siginfo.SignalQueueEntry{}
	for i := range q {
		out.Signals = append(out.Signals, &siginfo.SiginfoEntry{Siginfo: append([]byte(nil), q[i][:]...)})
	}
	return out
}

func split(v uint64) []uint32 { return []uint32{uint32(v), uint32(v >> 32)} }

func credsEntry(c *model.Creds) *creds.CredsEntry {
	nnp := uint32(0)
	if c.NoNewPrivs {
		nnp = 1
	}
	return &creds.CredsEntry{
		Uid: proto.Uint32(c.UID), Euid: proto.Uint32(c.EUID), Suid: proto.Uint32(c.SUID), Fsuid: proto.Uint32(c.FSUID),
		Gid: proto.Uint32(c.GID), Egid: proto.Uint32(c.EGID), Sgid: proto.Uint32(c.SGID), Fsgid: proto.Uint32(c.FSGID),
		CapInh: split(c.CapInh), CapPrm: split(c.CapPrm), CapEff: split(c.CapEff),
		CapBnd: split(c.CapBnd), CapAmb: split(c.CapAmb),
		Secbits: proto.Uint32(c.Secbits), NoNewPrivs: proto.Uint32(nnp),
		Groups: append([]uint32(nil), c.Groups...),
	}
}

// coreEntry builds a thread's core image, less the leader's tc and ids.
func coreEntry(th *model.Thread, signals bool) (*criu_core.CoreEntry, bool, error) {
	fp, err := xstate.ToCRIU(th.XState)
	if err != nil {
		return nil, false, err
	}
	thc := &criu_core.ThreadCoreEntry{
		FutexRla:    proto.Uint64(th.RobustList),
		FutexRlaLen: proto.Uint32(uint32(th.RobustLen)),
		SchedNice:   proto.Int32(th.Nice),
		SchedPolicy: proto.Uint32(th.Policy),
		SchedPrio:   proto.Uint32(th.RtPrio),
		BlkSigset:   proto.Uint64(th.Sigmask),
		Sas: &criu_core.ThreadSasEntry{
			SsSp: proto.Uint64(th.Sigaltstack.SP), SsSize: proto.Uint64(th.Sigaltstack.Size), SsFlags: proto.Uint32(th.Sigaltstack.Flags),
		},
		PdeathSig: proto.Uint32(th.PdeathSig),
		SignalsP:  signalQueue(th.Pending),
		Creds:     credsEntry(&th.Creds),
		Comm:      proto.String(th.Comm),
	}
	if r := th.Rseq; r.Pointer != 0 {
		thc.RseqEntry = &rseq.RseqEntry{
			RseqAbiPointer: proto.Uint64(r.Pointer),
			RseqAbiSize:    proto.Uint32(r.Size),
			Signature:      proto.Uint32(r.Signature),
		}
	}
	gp, applied := gpregs(&th.Regs, signals, th.RestartNr)
	return &criu_core.CoreEntry{
		Mtype: criu_core.CoreEntry_X86_64.Enum(),
		ThreadInfo: &core_x86.ThreadInfoX86{
			ClearTidAddr: proto.Uint64(th.ClearTid),
			Gpregs:       gp,
			Fpregs:       fp,
		},
		ThreadCore: thc,
	}, applied, nil
}

func itimer(t model.Itimer) *timer.ItimerEntry {
	return &timer.ItimerEntry{
		Isec: proto.Uint64(t.IntervalSec), Iusec: proto.Uint64(t.IntervalUsec),
		Vsec: proto.Uint64(t.ValueSec), Vusec: proto.Uint64(t.ValueUsec),
	}
}

// sigevThreadID is SIGEV_THREAD_ID (include/uapi/asm-generic/siginfo.h).
const sigevThreadID = 4

// taskCore builds the leader's tc.
func taskCore(k *model.Task) *criu_core.TaskCoreEntry {
	var posix []*timer.PosixTimerEntry
	for _, pt := range k.PosixTimers {
		e := &timer.PosixTimerEntry{
			ItId: proto.Uint32(uint32(pt.ID)), ClockId: proto.Uint32(uint32(pt.Clock)),
			SiSigno: proto.Uint32(uint32(pt.Signal)), ItSigevNotify: proto.Uint32(pt.Notify),
			SivalPtr: proto.Uint64(pt.Value), Overrun: proto.Uint32(pt.Overrun),
			Isec: proto.Uint64(pt.IntervalSec), Insec: proto.Uint64(pt.IntervalNsec),
			Vsec: proto.Uint64(pt.ValueSec), Vnsec: proto.Uint64(pt.ValueNsec),
		}
		if pt.Notify&sigevThreadID != 0 {
			e.NotifyThreadId = proto.Int32(int32(pt.NotifyThread))
		}
		posix = append(posix, e)
	}
	var rl []*rlimit.RlimitEntry
	for _, r := range k.Rlimits {
		rl = append(rl, &rlimit.RlimitEntry{Cur: proto.Uint64(r.Cur), Max: proto.Uint64(r.Max)})
	}
	var sas []*criu_sa.SaEntry
	for _, a := range k.Sigactions {
		sas = append(sas, &criu_sa.SaEntry{
			Sigaction: proto.Uint64(a.Handler), Flags: proto.Uint64(a.Flags),
			Restorer: proto.Uint64(a.Restorer), Mask: proto.Uint64(a.Mask),
		})
	}
	var blk uint64
	if l := k.Leader(); l != nil {
		blk = l.Sigmask
	}
	tc := &criu_core.TaskCoreEntry{
		TaskState:   proto.Uint32(taskState(k.State)),
		ExitCode:    proto.Uint32(uint32(k.ExitCode)),
		Personality: proto.Uint32(k.Personality),
		Flags:       proto.Uint32(0),
		BlkSigset:   proto.Uint64(blk),
		Comm:        proto.String(k.Comm),
		Timers: &timer.TaskTimersEntry{
			Real: itimer(k.Itimers[0]), Virt: itimer(k.Itimers[1]), Prof: itimer(k.Itimers[2]), Posix: posix,
		},
		Rlimits:        &criu_core.TaskRlimitsEntry{Rlimits: rl},
		SignalsS:       signalQueue(k.SharedSignals),
		Loginuid:       k.Loginuid,
		OomScoreAdj:    k.OomScoreAdj,
		Sigactions:     sas,
		ChildSubreaper: proto.Bool(k.ChildSubreaper),
	}
	if k.State == model.Stopped {
		tc.StopSigno = proto.Uint32(uint32(k.StopSignal))
	}
	return tc
}

func vmaEntry(v *model.VMA) *vma.VmaEntry {
	e := &vma.VmaEntry{
		Start: proto.Uint64(v.Start), End: proto.Uint64(v.End), Pgoff: proto.Uint64(v.Pgoff),
		Shmid: proto.Uint64(v.Shmid), Prot: proto.Uint32(v.Prot), Flags: proto.Uint32(v.Flags),
		Status: proto.Uint32(v.Status), Fd: proto.Int64(-1),
	}
	if v.Madv != 0 {
		e.Madv = proto.Uint64(v.Madv)
	}
	if v.FileBacked() || v.SysV() {
		e.Fdflags = proto.Uint32(v.Fdflags)
	}
	return e
}

// criuAuxvWords is how many auxv words CRIU's restore takes (its x86
// AT_VECTOR_SIZE, 44: a longer mm_saved_auxv is refused as "Image corrupted
// on pid"), fewer than the kernel's own vector holds.
const criuAuxvWords = 44

// criuAuxv is the saved auxv as CRIU's mm image holds it: the trailing
// AT_NULL pairs are dropped when the vector is longer than CRIU takes (the
// kernel's PR_SET_MM_MAP zero-fills, so the vector stays terminated).
// mmEntry's caller checks the rest fits (checkAuxv).
func criuAuxv(a []uint64) []uint64 {
	for len(a) > criuAuxvWords && len(a) >= 2 && a[len(a)-2] == 0 {
		a = a[:len(a)-2]
	}
	return append([]uint64(nil), a...)
}

// checkAuxv refuses an auxv CRIU's mm image cannot hold whole: truncating
// it would restore a task with auxv entries missing.
func checkAuxv(a []uint64) error {
	if n := len(criuAuxv(a)); n > criuAuxvWords {
		return fmt.Errorf("auxv of %d words is longer than CRIU's mm image holds (%d)", n, criuAuxvWords)
	}
	return nil
}

func mmEntry(m *model.MM) *mm.MmEntry {
	e := &mm.MmEntry{
		MmStartCode: proto.Uint64(m.StartCode), MmEndCode: proto.Uint64(m.EndCode),
		MmStartData: proto.Uint64(m.StartData), MmEndData: proto.Uint64(m.EndData),
		MmStartStack: proto.Uint64(m.StartStack), MmStartBrk: proto.Uint64(m.StartBrk),
		MmBrk:      proto.Uint64(m.Brk),
		MmArgStart: proto.Uint64(m.ArgStart), MmArgEnd: proto.Uint64(m.ArgEnd),
		MmEnvStart: proto.Uint64(m.EnvStart), MmEnvEnd: proto.Uint64(m.EnvEnd),
		ExeFileId:   proto.Uint32(uint32(m.Exe)),
		MmSavedAuxv: criuAuxv(m.Auxv),
		Dumpable:    m.Dumpable,
		ThpDisabled: proto.Bool(m.THPDisabled),
	}
	for i := range m.VMAs {
		v := vmaEntry(&m.VMAs[i])
		if v.GetStatus()&(images.VmaAreaVdso|images.VmaAreaVvar) != 0 {
			// CRIU marks them private anonymous too, and its restore
			// looks for the vDSO's pages (saved whole) by that mark.
			v.Status = proto.Uint32(v.GetStatus() | images.VmaAnonPrivate)
		}
		if k := len(e.Vmas); k > 0 && v.GetStatus()&images.VmaAreaVvar != 0 {
			// [vvar] and [vvar_vclock] (Linux 6.15+) are one vvar area
			// to CRIU 4.x, whose restore parks and moves a single one.
			if p := e.Vmas[k-1]; p.GetStatus()&images.VmaAreaVvar != 0 && p.GetEnd() == v.GetStart() {
				p.End = v.End
				continue
			}
		}
		e.Vmas = append(e.Vmas, v)
	}
	return e
}

func fileEntry(f *model.File) *fdinfo.FileEntry {
	r := &regfile.RegFileEntry{
		Id:    proto.Uint32(uint32(f.ID)),
		Flags: proto.Uint32(f.Flags),
		Pos:   proto.Uint64(f.Pos),
		Fown:  &fown.FownEntry{Uid: proto.Uint32(0), Euid: proto.Uint32(0), Signum: proto.Uint32(0), PidType: proto.Uint32(0), Pid: proto.Uint32(0)},
		Name:  proto.String(f.Path),
	}
	// No mnt_id: CRIU writes it only when it dumps a mount namespace
	// (files-reg.c), which godwit never does, and its restore looks the
	// id up among the dumped mounts: with none, a deleted file's remap
	// fails ("Can't link ... No such file or directory").
	if f.External {
		r.Ext = proto.Bool(true) // Name is the file[mnt_id:inode] key
	}
	if f.Mode != 0 {
		r.Mode = proto.Uint32(f.Mode)
	}
	if f.Size != nil {
		r.Size = proto.Uint64(*f.Size)
	}
	if len(f.BuildID) > 0 {
		r.BuildId = buildid.Words(f.BuildID)
	}
	return &fdinfo.FileEntry{Type: fdinfo.FdTypes_REG.Enum(), Id: proto.Uint32(uint32(f.ID)), Reg: r}
}

func fdinfoEntry(fd model.FD, f *model.File) *fdinfo.FdinfoEntry {
	fl := uint32(0)
	if fd.Cloexec {
		fl = unix.FD_CLOEXEC
	}
	return &fdinfo.FdinfoEntry{
		Id: proto.Uint32(uint32(fd.File)), Flags: proto.Uint32(fl), Type: fdType(f).Enum(), Fd: proto.Uint32(uint32(fd.Num)),
	}
}

// taskState is task_core_entry.task_state of s.
func taskState(s model.State) uint32 {
	switch s {
	case model.Stopped:
		return images.TaskStopped
	case model.Dead:
		return images.TaskDead
	case model.Zombie:
		return images.TaskZombie
	}
	return images.TaskAlive
}
