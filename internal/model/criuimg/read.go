package criuimg

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	core_x86 "github.com/checkpoint-restore/go-criu/v8/crit/images/core-x86"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/creds"
	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	fsimg "github.com/checkpoint-restore/go-criu/v8/crit/images/fs"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mm"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pstree"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/seccomp"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/siginfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/timer"
	"golang.org/x/sys/unix"

	"godwit/internal/abi/linux"
	"godwit/internal/buildid"
	"godwit/internal/images"
	"godwit/internal/model"
	"godwit/internal/xstate"
)

const (
	pageSize = 4096
	// taskSize is TASK_SIZE_MAX of x86-64 with 4-level page tables: no
	// user mapping ends above it.
	taskSize = 1<<47 - pageSize
	// vsyscallStart is x86-64's legacy vsyscall page (VSYSCALL_ADDR,
	// arch/x86/include/uapi/asm/vsyscall.h).
	vsyscallStart = 0xffffffffff600000
	// maxPid bounds pids and tids (PID_MAX_LIMIT, include/linux/threads.h).
	maxPid = 1 << 22
)

// Read reads the tree in d and checks it: every id it refers to exists,
// every range is sane, and every kind it holds is one godwit restores (a
// kind it does not is refused with a message naming it).
func Read(d *images.Dir) (*model.Tree, error) {
	if _, err := images.ReadInventory(d); err != nil {
		return nil, imgErr(images.InventoryImg, err)
	}
	pss, err := images.ReadAll[*pstree.PstreeEntry](d, images.PstreeImg)
	if err != nil {
		return nil, imgErr(images.PstreeImg, err)
	}
	if len(pss) == 0 {
		return nil, fmt.Errorf("%s: no process", images.PstreeImg)
	}
	t := &model.Tree{}
	if t.Files, err = readFiles(d); err != nil {
		return nil, err
	}
	tasks, err := readTasks(d, pss, t.Files)
	if err != nil {
		return nil, err
	}
	pids := map[int]bool{}
	fdTables := map[model.ID][]model.FD{}
	for _, k := range tasks {
		if pids[k.Pid] {
			return nil, fmt.Errorf("%s: duplicate pid %d", images.PstreeImg, k.Pid)
		}
		pids[k.Pid] = true
		if k.State == model.Dead || k.State == model.Zombie {
			t.Tasks = append(t.Tasks, k)
			continue
		}
		fds, ok := fdTables[k.IDs.Files]
		if !ok {
			if fds, err = readFDs(d, k.IDs.Files, t.Files); err != nil {
				return nil, err
			}
			fdTables[k.IDs.Files] = fds
		}
		k.FDs = fds
		t.Tasks = append(t.Tasks, k)
	}
	if err := readLocks(d, t); err != nil {
		return nil, err
	}
	if err := readNamespaces(d, t); err != nil {
		return nil, err
	}
	if err := readRestart(d, t); err != nil {
		return nil, err
	}
	return t, nil
}

// readTasks reads every task's images, several tasks at once (a tree's
// are thousands of small files: the reads wait more than they compute),
// each only reading files. The error is the first task's in tree order.
func readTasks(d *images.Dir, pss []*pstree.PstreeEntry, files map[model.ID]*model.File) ([]*model.Task, error) {
	tasks := make([]*model.Task, len(pss))
	errs := make([]error, len(pss))
	next := atomic.Int64{}
	var wg sync.WaitGroup
	for range min(readers, len(pss)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < len(pss); i = int(next.Add(1) - 1) {
				tasks[i], errs[i] = readTask(d, pss[i], files)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return tasks, nil
}

// readers is how many tasks readTasks reads at once.
const readers = 8

// imgErr names the image in err unless it already does.
func imgErr(name string, err error) error {
	if strings.Contains(err.Error(), name) {
		return err
	}
	return fmt.Errorf("%s: %w", name, err)
}

// readFiles reads files.img: the regular-file entries (godwit restores no
// other kind yet: an fd or mapping naming one is refused where it is
// found).
func readFiles(d *images.Dir) (map[model.ID]*model.File, error) {
	if !d.Exists(images.FilesImg) {
		// Every dump has one: the exe is a file.
		return nil, fmt.Errorf("%s: missing", images.FilesImg)
	}
	fes, err := images.ReadAll[*fdinfo.FileEntry](d, images.FilesImg)
	if err != nil {
		return nil, imgErr(images.FilesImg, err)
	}
	files := map[model.ID]*model.File{}
	var fifos, memfds, ttys, tuns []*fdinfo.FileEntry
	seen := map[uint32]bool{}
	for _, f := range fes {
		id := f.GetId()
		if seen[id] || id == 0 {
			return nil, fmt.Errorf("%s: bad or duplicate file id %d", images.FilesImg, id)
		}
		seen[id] = true
		if f.GetType() == fdinfo.FdTypes_FIFO {
			fifos = append(fifos, f)
			continue
		}
		if f.GetType() == fdinfo.FdTypes_MEMFD {
			memfds = append(memfds, f)
			continue
		}
		if f.GetType() == fdinfo.FdTypes_TTY {
			ttys = append(ttys, f)
			continue
		}
		if f.GetType() == fdinfo.FdTypes_TUNF {
			tuns = append(tuns, f)
			continue
		}
		if f.GetType() != fdinfo.FdTypes_REG {
			mf, known, err := readKind(f)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", images.FilesImg, err)
			}
			if known {
				files[mf.ID] = mf
			}
			continue
		}
		r := f.GetReg()
		if r == nil {
			return nil, fmt.Errorf("%s: file %d: REG without reg entry", images.FilesImg, id)
		}
		name := r.GetName()
		if r.GetExt() {
			// Left out at dump: the name is the key --inherit-fd gives.
			files[model.ID(id)] = &model.File{ID: model.ID(id), Kind: model.Path, Path: name, Flags: r.GetFlags(), Pos: r.GetPos(), MntID: -1, External: true}
			continue
		}
		if !strings.HasPrefix(name, "/") {
			name = "/" + name // CRIU's names may lack it
		}
		mf := &model.File{
			ID: model.ID(id), Kind: model.Path, Path: name, Flags: r.GetFlags(), Pos: r.GetPos(),
			Mode: r.GetMode(), MntID: -1,
		}
		if r.MntId != nil {
			mf.MntID = int(r.GetMntId())
		}
		if r.Size != nil {
			sz := r.GetSize()
			mf.Size = &sz
		}
		if w := r.GetBuildId(); len(w) > 0 {
			mf.BuildID = buildid.Bytes(w)
		}
		files[mf.ID] = mf
	}
	if err := resolveFIFOs(fifos, files); err != nil {
		return nil, fmt.Errorf("%s: %w", images.FilesImg, err)
	}
	if err := resolveExternPeers(files); err != nil {
		return nil, fmt.Errorf("%s: %w", images.FilesImg, err)
	}
	if err := readPipesData(d, files); err != nil {
		return nil, err
	}
	if err := readTCPStreams(d, files); err != nil {
		return nil, err
	}
	if err := readSkQueues(d, files); err != nil {
		return nil, err
	}
	if err := readGhosts(d, files); err != nil {
		return nil, err
	}
	if err := readMemfds(d, memfds, files); err != nil {
		return nil, err
	}
	if err := readTuns(d, tuns, files); err != nil {
		return nil, err
	}
	if err := readTtys(d, ttys, files); err != nil {
		return nil, err
	}
	if err := readOwners(fes, files); err != nil {
		return nil, fmt.Errorf("%s: %w", images.FilesImg, err)
	}
	return files, nil
}

// regular checks that id names a regular entry of files.img.
func regular(files map[model.ID]*model.File, id uint32, where, what string) error {
	if f := files[model.ID(id)]; f == nil || f.Kind != model.Path {
		return fmt.Errorf("%s: %s refers to file id %d, not a regular entry of %s", where, what, id, images.FilesImg)
	}
	return nil
}

func readFDs(d *images.Dir, filesID model.ID, files map[model.ID]*model.File) ([]model.FD, error) {
	name := images.FdinfoImg(uint32(filesID))
	es, err := images.ReadAll[*fdinfo.FdinfoEntry](d, name)
	if err != nil {
		return nil, imgErr(name, err)
	}
	seen := map[uint32]bool{}
	var out []model.FD
	for _, e := range es {
		if seen[e.GetFd()] || e.GetFd() > 1<<20 {
			return nil, fmt.Errorf("%s: bad or duplicate fd %d", name, e.GetFd())
		}
		seen[e.GetFd()] = true
		f := files[model.ID(e.GetId())]
		if f == nil {
			if e.GetType() != fdinfo.FdTypes_REG {
				return nil, fmt.Errorf("%s: fd %d: %v files are not supported yet", name, e.GetFd(), e.GetType())
			}
			return nil, fmt.Errorf("%s: fd %d refers to file id %d, not an entry of %s", name, e.GetFd(), e.GetId(), images.FilesImg)
		}
		if fdType(f) != e.GetType() {
			return nil, fmt.Errorf("%s: fd %d is %v but its file %d is %v", name, e.GetFd(), e.GetType(), f.ID, fdType(f))
		}
		out = append(out, model.FD{Num: int(e.GetFd()), File: model.ID(e.GetId()), Cloexec: e.GetFlags()&images.FdFlagCloexec != 0})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Num < out[j].Num })
	return out, nil
}

func readTask(d *images.Dir, ps *pstree.PstreeEntry, files map[model.ID]*model.File) (*model.Task, error) {
	pid := ps.GetPid()
	if pid == 0 || pid > maxPid {
		return nil, fmt.Errorf("%s: bad pid %d", images.PstreeImg, pid)
	}
	if err := checkSessionIDs(pid, ps.GetPgid(), ps.GetSid()); err != nil {
		return nil, fmt.Errorf("%s: task %d: %w", images.PstreeImg, pid, err)
	}
	k := &model.Task{Pid: int(pid), Ppid: int(ps.GetPpid()), Pgid: int(ps.GetPgid()), Sid: int(ps.GetSid())}
	// A dead task has a core with its state and exit code, and nothing
	// else to read.
	if c, err := images.ReadOne[*criu_core.CoreEntry](d, images.CoreImg(k.Pid)); err == nil {
		switch c.GetTc().GetTaskState() {
		case images.TaskDead, images.TaskZombie:
			if err := readTaskCore(k, c.GetTc(), images.CoreImg(k.Pid)); err != nil {
				return nil, err
			}
			return k, nil
		}
	}
	tids := ps.GetThreads()
	if len(tids) == 0 {
		tids = []uint32{pid}
	}
	seen := map[uint32]bool{}
	for _, t := range tids {
		if t == 0 || t > maxPid || seen[t] {
			return nil, fmt.Errorf("%s: bad or duplicate thread id %d", images.PstreeImg, t)
		}
		seen[t] = true
	}
	if !seen[pid] {
		return nil, fmt.Errorf("%s: leader %d missing from its threads", images.PstreeImg, pid)
	}
	// Leader first, the others in image order.
	order := []uint32{pid}
	for _, t := range tids {
		if t != pid {
			order = append(order, t)
		}
	}
	var leaderCore *criu_core.CoreEntry
	var filters []*seccomp.SeccompFilter
	var tsync bool // the leader's chain is every thread's (seccompFlagTsync)
	for i, tid := range order {
		th, core, err := readThread(d, int(tid), i == 0)
		if err != nil {
			return nil, err
		}
		ts, err := readSeccomp(d, &filters, th, core.GetThreadCore())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", images.CoreImg(int(tid)), err)
		}
		switch {
		case i == 0:
			leaderCore, tsync = core, ts
		case ts:
			return nil, fmt.Errorf("%s: seccomp TSYNC on a thread other than the leader", images.CoreImg(int(tid)))
		case tsync && th.Seccomp.Mode != 0:
			return nil, fmt.Errorf("%s: own seccomp state, and the leader's filters marked TSYNC for every thread", images.CoreImg(int(tid)))
		case tsync:
			th.Seccomp = model.Seccomp{Mode: 2, Filters: slices.Clone(k.Threads[0].Seccomp.Filters)}
		}
		k.Threads = append(k.Threads, th)
	}
	coreName := images.CoreImg(k.Pid)
	if err := readTaskCore(k, leaderCore.GetTc(), coreName); err != nil {
		return nil, err
	}
	ids := leaderCore.GetIds()
	if ids == nil {
		name := images.IdsImg(k.Pid)
		var err error
		if ids, err = images.ReadOne[*criu_core.TaskKobjIdsEntry](d, name); err != nil {
			return nil, imgErr(name, fmt.Errorf("no ids in core and: %w", err))
		}
	}
	k.IDs = model.KobjIDs{
		VM: model.ID(ids.GetVmId()), Files: model.ID(ids.GetFilesId()), FS: model.ID(ids.GetFsId()), Sighand: model.ID(ids.GetSighandId()),
		NS: model.Namespaces{
			Pid: ids.GetPidNsId(), Net: ids.GetNetNsId(), IPC: ids.GetIpcNsId(), UTS: ids.GetUtsNsId(),
			Mnt: ids.GetMntNsId(), User: ids.GetUserNsId(), Cgroup: ids.GetCgroupNsId(), Time: ids.GetTimeNsId(),
		},
	}
	var err error
	if k.MM, err = readMM(d, k.Pid, files); err != nil {
		return nil, err
	}
	if k.FS, err = readFS(d, k.Pid, files); err != nil {
		return nil, err
	}
	if err := readGodwit(d, k, files); err != nil {
		return nil, err
	}
	return k, nil
}

// checkSessionIDs refuses session and group ids no task can have. 0 is
// allowed: CRIU writes it for a session or group outside the dump's pid
// namespace.
func checkSessionIDs(pid, pgid, sid uint32) error {
	switch {
	case pgid > maxPid:
		return fmt.Errorf("bad process group %d", pgid)
	case sid > maxPid:
		return fmt.Errorf("bad session %d", sid)
	case sid == pid && pgid != pid:
		return errors.New("session leader in a group other than its own")
	}
	return nil
}

func readThread(d *images.Dir, tid int, leader bool) (*model.Thread, *criu_core.CoreEntry, error) {
	name := images.CoreImg(tid)
	core, err := images.ReadOne[*criu_core.CoreEntry](d, name)
	if err != nil {
		return nil, nil, imgErr(name, err)
	}
	if core.GetMtype() != criu_core.CoreEntry_X86_64 {
		return nil, nil, fmt.Errorf("%s: architecture %v, this is x86_64", name, core.GetMtype())
	}
	ti := core.GetThreadInfo()
	if ti == nil || ti.GetGpregs() == nil || ti.GetFpregs() == nil {
		return nil, nil, fmt.Errorf("%s: no x86 registers", name)
	}
	if ti.GetGpregs().GetMode() != core_x86.UserX86RegsMode_NATIVE {
		return nil, nil, fmt.Errorf("%s: 32-bit (compat) tasks are not supported", name)
	}
	if leader && core.GetTc() == nil {
		return nil, nil, fmt.Errorf("%s: leader without task core", name)
	}
	tc := core.GetThreadCore()
	if tc == nil {
		return nil, nil, fmt.Errorf("%s: no thread core", name)
	}
	x, err := xstate.Standalone(ti.GetFpregs())
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", name, err)
	}
	pending, err := siginfos(tc.GetSignalsP().GetSignals())
	if err != nil {
		return nil, nil, fmt.Errorf("%s: private signal queue: %w", name, err)
	}
	th := &model.Thread{
		Tid:      tid,
		Regs:     ptraceRegs(ti.GetGpregs()),
		XState:   x,
		Sigmask:  tc.GetBlkSigset(),
		Pending:  pending,
		ClearTid: ti.GetClearTidAddr(),
		Sigaltstack: model.Sigaltstack{
			SP: tc.GetSas().GetSsSp(), Flags: tc.GetSas().GetSsFlags(), Size: tc.GetSas().GetSsSize(),
		},
		RobustList: tc.GetFutexRla(),
		RobustLen:  uint64(tc.GetFutexRlaLen()),
		PdeathSig:  tc.GetPdeathSig(),
		Comm:       tc.GetComm(),
		Nice:       tc.GetSchedNice(),
		Policy:     tc.GetSchedPolicy(),
		RtPrio:     tc.GetSchedPrio(),
	}
	if tc.BlkSigset == nil && leader {
		th.Sigmask = core.GetTc().GetBlkSigset() // CRIU before 3.x
	}
	if tc.Sas == nil {
		th.Sigaltstack.Flags = linux.SsDisable // none recorded: none set
	}
	if r := tc.GetRseqEntry(); r != nil {
		th.Rseq = model.Rseq{Pointer: r.GetRseqAbiPointer(), Size: r.GetRseqAbiSize(), Signature: r.GetSignature()}
	}
	c := tc.GetCreds()
	if c == nil {
		// Images of CRIU before 3.x keep creds in creds-PID.img.
		cn := images.CredsImg(tid)
		if c, err = images.ReadOne[*creds.CredsEntry](d, cn); err != nil {
			return nil, nil, imgErr(name, fmt.Errorf("no creds in core and: %w", err))
		}
	}
	if th.Creds, err = modelCreds(c); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", name, err)
	}
	return th, core, nil
}

// siginfos reads a queue of raw siginfo_t; an entry of another size is
// corrupt (a short one would queue signal 0, that is nothing).
func siginfos(es []*siginfo.SiginfoEntry) ([]model.Siginfo, error) {
	var out []model.Siginfo
	for i, e := range es {
		var s model.Siginfo
		if n := len(e.GetSiginfo()); n != len(s) {
			return nil, fmt.Errorf("siginfo %d of %d bytes, want %d", i, n, len(s))
		}
		copy(s[:], e.GetSiginfo())
		out = append(out, s)
	}
	return out, nil
}

func join(v []uint32, what string) (uint64, error) {
	switch len(v) {
	case 0:
		return 0, nil
	case 1:
		return uint64(v[0]), nil
	case 2:
		return uint64(v[0]) | uint64(v[1])<<32, nil
	}
	return 0, fmt.Errorf("creds: %s of %d words, want 2", what, len(v))
}

func modelCreds(c *creds.CredsEntry) (model.Creds, error) {
	m := model.Creds{
		UID: c.GetUid(), EUID: c.GetEuid(), SUID: c.GetSuid(), FSUID: c.GetFsuid(),
		GID: c.GetGid(), EGID: c.GetEgid(), SGID: c.GetSgid(), FSGID: c.GetFsgid(),
		Groups: append([]uint32(nil), c.GetGroups()...), Secbits: c.GetSecbits(), NoNewPrivs: c.GetNoNewPrivs() != 0,
	}
	var err error
	for _, f := range []struct {
		dst  *uint64
		v    []uint32
		what string
	}{{&m.CapInh, c.GetCapInh(), "cap_inh"}, {&m.CapPrm, c.GetCapPrm(), "cap_prm"}, {&m.CapEff, c.GetCapEff(), "cap_eff"},
		{&m.CapBnd, c.GetCapBnd(), "cap_bnd"}, {&m.CapAmb, c.GetCapAmb(), "cap_amb"}} {
		if *f.dst, err = join(f.v, f.what); err != nil {
			return m, err
		}
	}
	return m, nil
}

// sigNumbers maps sigaction entries to signals: CRIU writes 62 (1..64
// without SIGKILL and SIGSTOP); 64 are taken too.
func sigNumbers(n int) ([]int, error) {
	var sigs []int
	switch n {
	case 0:
	case linux.NSig, linux.NSig - 2:
		for s := 1; s <= linux.NSig; s++ {
			if n == linux.NSig || s != int(unix.SIGKILL) && s != int(unix.SIGSTOP) {
				sigs = append(sigs, s)
			}
		}
	default:
		return nil, fmt.Errorf("%d sigactions in core, want 62 or 64", n)
	}
	return sigs, nil
}

func modelItimer(e *timer.ItimerEntry) model.Itimer {
	t := model.Itimer{IntervalSec: e.GetIsec(), IntervalUsec: e.GetIusec(), ValueSec: e.GetVsec(), ValueUsec: e.GetVusec()}
	if t.ValueSec == 0 && t.ValueUsec == 0 {
		// In CRIU's images an interval with value 0 is an armed timer
		// whose remaining time read as 0 (a periodic ITIMER_REAL is
		// reloaded only as its signal is dequeued): CRIU's restore arms it
		// for one interval, and so must godwit, or it would disarm it.
		t.ValueSec, t.ValueUsec = t.IntervalSec, t.IntervalUsec
	}
	return t
}

// readTaskCore fills the process-wide state of the leader's tc.
func readTaskCore(k *model.Task, tc *criu_core.TaskCoreEntry, name string) error {
	switch tc.GetTaskState() {
	case images.TaskAlive:
		k.State = model.Alive
	case images.TaskStopped:
		k.State = model.Stopped
		k.StopSignal = int(tc.GetStopSigno())
		switch unix.Signal(k.StopSignal) {
		case 0:
			// Images without stop_signo (older CRIU): SIGSTOP,
			// as those CRIU versions restored it.
			k.StopSignal = int(unix.SIGSTOP)
		case unix.SIGSTOP, unix.SIGTSTP, unix.SIGTTIN, unix.SIGTTOU:
		default:
			return fmt.Errorf("%s: stop_signo %d is not a stop signal", name, k.StopSignal)
		}
	case images.TaskDead:
		k.State = model.Dead
	case images.TaskZombie:
		k.State = model.Zombie
	default:
		return fmt.Errorf("%s: unknown task state %d", name, tc.GetTaskState())
	}
	k.ExitCode = int(tc.GetExitCode())
	k.Personality = tc.GetPersonality()
	k.Comm = tc.GetComm()
	sigs, err := sigNumbers(len(tc.GetSigactions()))
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	for i, sa := range tc.GetSigactions() {
		k.Sigactions = append(k.Sigactions, model.Sigaction{
			Sig: sigs[i], Handler: sa.GetSigaction(), Flags: sa.GetFlags(), Restorer: sa.GetRestorer(), Mask: sa.GetMask(),
		})
	}
	if t := tc.GetTimers(); t != nil {
		k.Itimers = [3]model.Itimer{modelItimer(t.GetReal()), modelItimer(t.GetVirt()), modelItimer(t.GetProf())}
		for _, pt := range t.GetPosix() {
			mt := model.PosixTimer{
				ID: int(pt.GetItId()), Clock: int(pt.GetClockId()), Signal: int(pt.GetSiSigno()),
				Notify: pt.GetItSigevNotify(),
				Value:  pt.GetSivalPtr(), Overrun: pt.GetOverrun(),
				IntervalSec: pt.GetIsec(), IntervalNsec: pt.GetInsec(), ValueSec: pt.GetVsec(), ValueNsec: pt.GetVnsec(),
			}
			// The thread means something only with SIGEV_THREAD_ID,
			// the only case the writer records it.
			if mt.Notify&sigevThreadID != 0 {
				mt.NotifyThread = int(pt.GetNotifyThreadId())
			}
			k.PosixTimers = append(k.PosixTimers, mt)
		}
	}
	rls := tc.GetRlimits().GetRlimits()
	if len(rls) > linux.RlimNlimits {
		return fmt.Errorf("%s: %d rlimits, this kernel has %d", name, len(rls), linux.RlimNlimits)
	}
	for _, r := range rls {
		k.Rlimits = append(k.Rlimits, unix.Rlimit{Cur: r.GetCur(), Max: r.GetMax()})
	}
	if k.SharedSignals, err = siginfos(tc.GetSignalsS().GetSignals()); err != nil {
		return fmt.Errorf("%s: shared signal queue: %w", name, err)
	}
	k.Loginuid = tc.Loginuid
	k.OomScoreAdj = tc.OomScoreAdj
	k.ChildSubreaper = tc.GetChildSubreaper()
	return nil
}

func readMM(d *images.Dir, pid int, files map[model.ID]*model.File) (*model.MM, error) {
	name := images.MmImg(pid)
	m, err := images.ReadOne[*mm.MmEntry](d, name)
	if err != nil {
		return nil, imgErr(name, err)
	}
	vmas := m.GetVmas()
	if len(vmas) == 0 {
		return nil, fmt.Errorf("%s: no VMAs", name)
	}
	out := &model.MM{
		StartCode: m.GetMmStartCode(), EndCode: m.GetMmEndCode(), StartData: m.GetMmStartData(), EndData: m.GetMmEndData(),
		StartStack: m.GetMmStartStack(), StartBrk: m.GetMmStartBrk(), Brk: m.GetMmBrk(),
		ArgStart: m.GetMmArgStart(), ArgEnd: m.GetMmArgEnd(), EnvStart: m.GetMmEnvStart(), EnvEnd: m.GetMmEnvEnd(),
		Exe: model.ID(m.GetExeFileId()), Auxv: append([]uint64(nil), m.GetMmSavedAuxv()...),
		Dumpable: m.Dumpable, THPDisabled: m.GetThpDisabled(),
	}
	if err := regular(files, m.GetExeFileId(), name, "exe"); err != nil {
		return nil, err
	}
	var last uint64
	vdso := 0
	for i, v := range vmas {
		s, e := v.GetStart(), v.GetEnd()
		st := v.GetStatus()
		if st&images.VmaAreaVsyscall != 0 {
			// CRIU records the kernel's [vsyscall] page (x86-64's fixed
			// legacy page, above the user address space); every task
			// gets it from the kernel, nothing is restored.
			if s != vsyscallStart || e != vsyscallStart+pageSize || st&^(images.VmaAreaVsyscall|images.VmaAnonPrivate) != 0 {
				return nil, fmt.Errorf("%s: vma %d: bad vsyscall area %#x-%#x (status %#x)", name, i, s, e, st)
			}
			continue
		}
		if st&(images.VmaAreaVdso|images.VmaAreaVvar) != 0 {
			// CRIU marks the vDSO and vvar areas private anonymous as
			// well; they are the kernel's, not memory to restore.
			st &^= images.VmaAnonPrivate
		}
		switch {
		case s%pageSize != 0 || e%pageSize != 0 || s >= e || e > taskSize:
			return nil, fmt.Errorf("%s: vma %d: bad range %#x-%#x", name, i, s, e)
		case i > 0 && s < last:
			return nil, fmt.Errorf("%s: vma %d: %#x-%#x overlaps or precedes the previous one", name, i, s, e)
		case v.GetStatus()&images.VmaUnsupp != 0:
			return nil, fmt.Errorf("%s: vma %#x-%#x: marked unsupported by the dumper", name, s, e)
		case st&images.VmaAreaSysvipc != 0 && (st != images.VmaAreaRegular|images.VmaAreaSysvipc ||
			v.GetFlags()&(unix.MAP_SHARED|unix.MAP_PRIVATE) != unix.MAP_SHARED || v.GetPgoff()%pageSize != 0 ||
			v.GetFdflags()&^unix.O_ACCMODE != 0 || v.GetFdflags()&unix.O_ACCMODE == unix.O_WRONLY):
			return nil, fmt.Errorf("%s: vma %#x-%#x: bad sysv shm mapping (status %#x, flags %#x, offset %#x)", name, s, e, st, v.GetFlags(), v.GetPgoff())
		case v.GetStatus()&(images.VmaAreaSocket|images.VmaAreaAioring|images.VmaAreaShstk|images.VmaExtFile) != 0:
			return nil, fmt.Errorf("%s: vma %#x-%#x: %s mappings are not supported yet", name, s, e, VMAKind(v.GetStatus()))
		case v.GetStatus()&images.VmaAreaVdso != 0:
			vdso++
		}
		mv := model.VMA{
			Start: s, End: e, Pgoff: v.GetPgoff(), Shmid: v.GetShmid(), Prot: v.GetProt(), Flags: v.GetFlags(),
			Status: st, Madv: v.GetMadv(), Fdflags: v.GetFdflags(),
		}
		if mv.FileBacked() {
			if mv.Pgoff%pageSize != 0 {
				return nil, fmt.Errorf("%s: vma %#x-%#x: file offset %#x not page aligned", name, s, e, mv.Pgoff)
			}
			// A memfd mapping names a MEMFD entry, and only it does.
			if f := files[model.ID(mv.Shmid)]; mv.Status&images.VmaAreaMemfd != 0 || f != nil && f.Kind == model.Memfd {
				if f == nil || f.Kind != model.Memfd || mv.Status&images.VmaAreaMemfd == 0 {
					return nil, fmt.Errorf("%s: vma %#x-%#x: memfd mapping and file %d disagree", name, s, e, mv.Shmid)
				}
			} else if f == nil || f.Kind != model.Ghost {
				// A regular file, or a deleted one (a ghost: a REG
				// entry with its remap) for a mapping of a deleted file.
				if err := regular(files, uint32(mv.Shmid), name, fmt.Sprintf("vma %#x-%#x", s, e)); err != nil {
					return nil, err
				}
			}
		}
		if !mv.FileBacked() && mv.Status&images.VmaAreaMemfd != 0 {
			return nil, fmt.Errorf("%s: vma %#x-%#x: memfd mapping without a file", name, s, e)
		}
		out.VMAs = append(out.VMAs, mv)
		last = e
	}
	if vdso > 1 {
		return nil, fmt.Errorf("%s: %d vdso areas", name, vdso)
	}
	if n := len(out.Auxv); n > linux.MaxAuxvWords || n%2 != 0 {
		return nil, fmt.Errorf("%s: auxv of %d words (want an even count up to %d)", name, n, linux.MaxAuxvWords)
	}
	return out, nil
}

func readFS(d *images.Dir, pid int, files map[model.ID]*model.File) (*model.FS, error) {
	name := images.FsImg(pid)
	fse, err := images.ReadOne[*fsimg.FsEntry](d, name)
	if err != nil {
		return nil, imgErr(name, err)
	}
	if err := regular(files, fse.GetCwdId(), name, "cwd"); err != nil {
		return nil, err
	}
	if err := regular(files, fse.GetRootId(), name, "root"); err != nil {
		return nil, err
	}
	fs := &model.FS{Cwd: model.ID(fse.GetCwdId()), Root: model.ID(fse.GetRootId())}
	if fse.Umask != nil {
		u := fse.GetUmask()
		fs.Umask = &u
	}
	return fs, nil
}

// VMAKind names a VMA's kind (its status bits) for messages.
func VMAKind(st uint32) string {
	switch {
	case st&images.VmaAreaVdso != 0:
		return "vdso"
	case st&images.VmaAreaVvar != 0:
		return "vvar"
	case st&images.VmaAreaVsyscall != 0:
		return "vsyscall"
	case st&images.VmaAreaSysvipc != 0:
		return "sysv shm"
	case st&images.VmaAreaSocket != 0:
		return "socket"
	case st&images.VmaAreaAioring != 0:
		return "aio ring"
	case st&images.VmaAreaShstk != 0:
		return "shadow stack"
	case st&images.VmaExtFile != 0:
		return "external file"
	case st&images.VmaAreaMemfd != 0:
		return "memfd"
	case st&images.VmaAreaHeap != 0:
		return "heap"
	case st&images.VmaAreaStack != 0:
		return "stack"
	case st&images.VmaFilePrivate != 0:
		return "file private"
	case st&images.VmaFileShared != 0:
		return "file shared"
	case st&images.VmaAnonShared != 0:
		return "anon shared"
	case st&images.VmaAnonPrivate != 0:
		return "anon private"
	}
	return fmt.Sprintf("status %#x", st)
}
