package restorer

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/drivers"
	"godwit/internal/model"
	"godwit/internal/procfs"
	"godwit/internal/ptrace"
	"godwit/internal/puppet"
)

// createTree makes every task of the tree as a copy of the puppet p, each
// by its parent (clone3 with set_tid injected into the parent's puppet),
// so that parent links are the dumped ones; fd tables and fs info a task
// shared with its parent (CLONE_FILES, CLONE_FS) are shared again. A
// session leader calls setsid before it makes the children of its new
// session, after those that stay in its old one; then every group is
// made, leaders first, and every task's session and group is checked.
func (r *Restorer) createTree(p *puppet.Puppet) error {
	if err := r.checkZombies(); err != nil {
		return err
	}
	kids := map[int][]*taskRun{}
	for _, t := range r.tasks[1:] {
		kids[t.img.task.Ppid] = append(kids[t.img.task.Ppid], t)
	}
	if err := r.checkSharing(); err != nil {
		return err
	}
	rootPid := r.root.img.pid
	task, err := p.CloneWith(rootPid, unix.CLONE_PARENT|namespaceFlags(r.img.tree, r.o.JoinedNS))
	if task != nil {
		r.root.task = task
		r.root.threads = []int{rootPid}
	}
	if err != nil {
		return fmt.Errorf("task %d: %w", rootPid, err)
	}
	if err := restoreNamespaces(r.img.tree, r.o.JoinedNS, rootPid); err != nil {
		return err
	}
	if err := r.grow(r.root, kids); err != nil {
		return err
	}
	return r.setGroups()
}

// checkZombies refuses a zombie whose wait status cannot be reproduced:
// a core dump (the status's core bit), or a signal whose default action
// does not end the task.
func (r *Restorer) checkZombies() error {
	for _, t := range r.tasks {
		if !t.img.dead() {
			continue
		}
		ws := unix.WaitStatus(t.img.task.ExitCode)
		switch {
		case ws.Exited():
		case ws.Signaled() && !ws.CoreDump() && killsByDefault(ws.Signal()):
		default:
			return fmt.Errorf("zombie %d: wait status %#x cannot be reproduced", t.img.pid, t.img.task.ExitCode)
		}
	}
	return nil
}

// killsByDefault reports a signal whose default action terminates the
// task without a core dump (signal(7)).
func killsByDefault(s unix.Signal) bool {
	switch s {
	case unix.SIGHUP, unix.SIGINT, unix.SIGKILL, unix.SIGPIPE, unix.SIGALRM, unix.SIGTERM,
		unix.SIGUSR1, unix.SIGUSR2, unix.SIGPOLL, unix.SIGPROF, unix.SIGVTALRM, unix.SIGSTKFLT, unix.SIGPWR:
		return true
	}
	return s >= 32 && s <= 64 // the real-time signals (SIGRTMIN is 32 to the kernel)
}

// checkSharing refuses an fd table or fs info shared between tasks other
// than a parent and its child: only clone can share them again.
func (r *Restorer) checkSharing() error {
	files, fs := map[model.ID]*model.Task{}, map[model.ID]*model.Task{}
	for _, t := range r.tasks {
		k := t.img.task
		if t.img.dead() {
			continue
		}
		for _, c := range []struct {
			what  string
			id    model.ID
			first map[model.ID]*model.Task
		}{{"fd table (CLONE_FILES)", k.IDs.Files, files}, {"fs info (CLONE_FS)", k.IDs.FS, fs}} {
			if c.id == 0 {
				continue
			}
			o, ok := c.first[c.id]
			if !ok {
				c.first[c.id] = k
				continue
			}
			if p := r.img.tree.Task(k.Ppid); p == nil || !sameID(p, k, c.what) {
				return fmt.Errorf("task %d shares its %s with task %d, not with its parent: not supported", k.Pid, c.what, o.Pid)
			}
		}
	}
	return nil
}

func sameID(p, k *model.Task, what string) bool {
	if what == "fd table (CLONE_FILES)" {
		return p.IDs.Files == k.IDs.Files
	}
	return p.IDs.FS == k.IDs.FS
}

// grow gives t its session and makes its children, then theirs. The
// children t makes before and after its setsid are each made in one
// injection session of t (CloneEach).
func (r *Restorer) grow(t *taskRun, kids map[int][]*taskRun) error {
	k := t.img.task
	leader := k.Sid == k.Pid && !(t == r.root && r.o.ShellJob)
	var before, later []*taskRun
	for _, c := range kids[k.Pid] {
		// Before setsid: children that stay in the old session.
		if leader && c.img.task.Sid != k.Pid {
			before = append(before, c)
		} else {
			later = append(later, c)
		}
	}
	if err := r.fork(t, before); err != nil {
		return err
	}
	if leader {
		if _, err := r.tr.InjectSyscall(k.Pid, unix.SYS_SETSID); err != nil {
			return fmt.Errorf("task %d: setsid: %w", k.Pid, err)
		}
		if err := r.earlyCtty(k); err != nil {
			return fmt.Errorf("task %d: %w", k.Pid, err)
		}
	}
	if err := r.fork(t, later); err != nil {
		return err
	}
	for _, c := range append(before, later...) {
		if err := r.grow(c, kids); err != nil {
			return err
		}
	}
	return nil
}

// fork makes the children cs of t, in order. Every child made is
// recorded (a failed restore kills it).
func (r *Restorer) fork(t *taskRun, cs []*taskRun) error {
	pk := t.img.task
	specs := make([]puppet.CloneSpec, len(cs))
	for i, c := range cs {
		ck := c.img.task
		flags := uint64(0)
		if !c.img.dead() {
			if ck.IDs.Files != 0 && ck.IDs.Files == pk.IDs.Files {
				flags |= unix.CLONE_FILES
			}
			if ck.IDs.FS != 0 && ck.IDs.FS == pk.IDs.FS {
				flags |= unix.CLONE_FS
			}
		}
		specs[i] = puppet.CloneSpec{Pid: ck.Pid, Flags: flags}
	}
	made, err := t.task.CloneEach(specs)
	for i, task := range made {
		if task != nil {
			cs[i].task = task
			cs[i].threads = []int{task.Pid}
		}
	}
	if err != nil {
		for i, task := range made {
			if task == nil {
				return fmt.Errorf("task %d (child of %d): %w", cs[i].img.pid, pk.Pid, err)
			}
		}
		return fmt.Errorf("children of %d: %w", pk.Pid, err)
	}
	return nil
}

// setGroups puts every task in its process group: group leaders make
// theirs first, then the others join, in their session. With --shell-job
// the root's group and session are godwit's, for every task in them.
func (r *Restorer) setGroups() error {
	pgMap, sidMap := map[int]int{}, map[int]int{}
	if r.o.ShellJob {
		rk := r.root.img.task
		pg := unix.Getpgrp()
		if pg == 0 {
			return errors.New("--shell-job: godwit's process group leader is outside its pid namespace, so the task cannot join it")
		}
		sid, err := unix.Getsid(0)
		if err != nil {
			return fmt.Errorf("getsid: %w", err)
		}
		pgMap[rk.Pgid], sidMap[rk.Sid] = pg, sid
	}
	want := func(k *model.Task) (int, int) {
		pg, sid := k.Pgid, k.Sid
		if v, ok := pgMap[pg]; ok {
			pg = v
		}
		if v, ok := sidMap[sid]; ok {
			sid = v
		}
		return pg, sid
	}
	for _, t := range r.tasks {
		k := t.img.task
		_, pgMapped := pgMap[k.Pgid]
		_, sidMapped := sidMap[k.Sid]
		if k.Sid == 0 && !sidMapped || k.Pgid == 0 && !pgMapped {
			return fmt.Errorf("task %d: session %d / process group %d are outside the dump's pid namespace: restore with --shell-job into godwit's", k.Pid, k.Sid, k.Pgid)
		}
	}
	if err := r.groupHelpers(want); err != nil {
		return err
	}
	for pass := 0; pass < 2; pass++ {
		for _, t := range r.tasks {
			k := t.img.task
			pg, sid := want(k)
			if sid == k.Pid || (pass == 0) != (pg == k.Pid) {
				continue // a session leader leads its group already
			}
			if cur, err := unix.Getpgid(k.Pid); err == nil && cur == pg {
				continue
			}
			arg := uint64(pg)
			if pg == k.Pid {
				arg = 0
			}
			if _, err := r.tr.InjectSyscall(k.Pid, unix.SYS_SETPGID, 0, arg); err != nil {
				if errors.Is(err, unix.EPERM) {
					return fmt.Errorf("task %d: process group %d cannot be recreated: no such group in session %d and its leader is not in the dump", k.Pid, pg, sid)
				}
				return fmt.Errorf("task %d: setpgid(0, %d): %w", k.Pid, pg, err)
			}
		}
	}
	for _, t := range r.tasks {
		k := t.img.task
		pg, sid := want(k)
		gotPg, err1 := unix.Getpgid(k.Pid)
		gotSid, err2 := unix.Getsid(k.Pid)
		if err := errors.Join(err1, err2); err != nil {
			return fmt.Errorf("task %d: %w", k.Pid, err)
		}
		if gotSid != sid {
			if sid == 0 {
				return fmt.Errorf("task %d: session %d / process group %d are outside the dump's pid namespace: restore with --shell-job into godwit's", k.Pid, k.Sid, k.Pgid)
			}
			return fmt.Errorf("task %d: session %d cannot be recreated: its leader is not in the dump and godwit runs in session %d (restore from that session, or with --shell-job into godwit's)", k.Pid, sid, gotSid)
		}
		if gotPg != pg {
			return fmt.Errorf("task %d: in process group %d, want %d", k.Pid, gotPg, pg)
		}
	}
	return r.removeHelpers()
}

// groupHelper is a task made only to lead a process group whose leader
// is dead (it had exited and been reaped before the dump), as CRIU does:
// it makes the group with the leader's pid, the members join, and it goes.
type groupHelper struct {
	p      *puppet.Puppet
	parent *taskRun // the session leader that made it; nil: godwit
}

// groupHelpers makes a helper for every group whose leader is dead (not
// in the tree, and no live group leader outside it), forked in the
// group's session: by the session's leader in the tree, or, for godwit's
// session, by the root as godwit's child (as CRIU).
func (r *Restorer) groupHelpers(want func(*model.Task) (int, int)) error {
	byPid := map[int]*taskRun{}
	for _, t := range r.tasks {
		byPid[t.img.pid] = t
	}
	ownSid, err := unix.Getsid(0)
	if err != nil {
		return fmt.Errorf("getsid: %w", err)
	}
	ownPg := unix.Getpgrp()
	need := map[int]int{} // pgid → sid
	var order []int
	for _, t := range r.tasks {
		pg, sid := want(t.img.task)
		if byPid[pg] != nil || r.o.ShellJob && pg == ownPg {
			continue
		}
		if lpg, err := unix.Getpgid(pg); err == nil && lpg == pg {
			// The group's leader lives outside the dump: the group
			// exists and its members join it (in its session, which
			// the session step checks), with no helper.
			if lsid, err := unix.Getsid(pg); err == nil && lsid == sid {
				continue
			}
		}
		if _, ok := need[pg]; !ok {
			order = append(order, pg)
			need[pg] = sid
		}
	}
	for _, pg := range order {
		sid := need[pg]
		from, parent, flags := byPid[sid], byPid[sid], uint64(0)
		switch {
		case from != nil && from.task != nil:
		case sid == ownSid && sid != 0 && (r.root.img.task.Sid != r.root.img.pid || r.o.ShellJob):
			// godwit's session: the root makes it as godwit's child.
			from, parent, flags = r.root, nil, unix.CLONE_PARENT
		default:
			return fmt.Errorf("process group %d cannot be recreated: its leader is not in the dump and no task of session %d can stand in for it", pg, sid)
		}
		if err := waitPidFree(pg, zombieWait); err != nil {
			return fmt.Errorf("process group %d, whose leader is dead: %w", pg, err)
		}
		h, err := from.task.CloneWith(pg, flags)
		if h != nil {
			r.helpers = append(r.helpers, groupHelper{p: h, parent: parent})
		}
		if err != nil {
			return fmt.Errorf("helper for process group %d: %w", pg, err)
		}
		if _, err := r.tr.InjectSyscall(pg, unix.SYS_SETPGID, 0, 0); err != nil {
			return fmt.Errorf("helper for process group %d: setpgid: %w", pg, err)
		}
	}
	return nil
}

// removeHelpers kills the group helpers, now that their groups have
// members, and has their parents reap them (the SIGCHLD taken back).
func (r *Restorer) removeHelpers() error {
	for len(r.helpers) > 0 {
		h := r.helpers[0]
		r.helpers = r.helpers[1:]
		pid := h.p.Pid
		if err := h.p.Kill(); err != nil {
			return fmt.Errorf("helper %d: %w", pid, err)
		}
		if h.parent == nil {
			for i := 0; i < 1000; i++ { // reaped by Kill as a rule
				var ws unix.WaitStatus
				if _, err := unix.Wait4(pid, &ws, unix.WALL, nil); err != unix.EINTR {
					break
				}
			}
			continue
		}
		if _, err := r.tr.InjectSyscall(h.parent.img.pid, unix.SYS_WAIT4, uint64(pid), 0, unix.WALL, 0); err != nil {
			return fmt.Errorf("helper %d: reap in %d: %w", pid, h.parent.img.pid, err)
		}
		if err := r.takeSigchld(h.parent); err != nil {
			return fmt.Errorf("task %d: %w", h.parent.img.pid, err)
		}
	}
	return nil
}

// buryZombies lets every task that was a zombie die with its wait status
// (exit_group, or kill by its signal), unseen by its parent, which is held
// and reaps nothing; the SIGCHLD each death queues to the parent is taken
// back (it was delivered before the dump: the parent's own pending
// signals are restored by Finalize).
func (r *Restorer) buryZombies() error {
	parents := map[*taskRun]bool{}
	byPid := map[int]*taskRun{}
	for _, t := range r.tasks {
		byPid[t.img.pid] = t
	}
	for _, t := range r.tasks {
		if !t.img.dead() || t.task == nil {
			continue
		}
		if err := r.bury(t); err != nil {
			return fmt.Errorf("zombie %d: %w", t.img.pid, err)
		}
		parents[byPid[t.img.task.Ppid]] = true
	}
	for p := range parents {
		if err := r.takeSigchld(p); err != nil {
			return fmt.Errorf("task %d: %w", p.img.pid, err)
		}
	}
	return nil
}

// zombieDeadline bounds the wait for a buried task to turn zombie.
const zombieDeadline = 10 * time.Second

func (r *Restorer) bury(t *taskRun) error {
	pid := t.img.pid
	ws := unix.WaitStatus(t.img.task.ExitCode)
	regs, err := r.tr.GetRegs(pid)
	if err != nil {
		return err
	}
	if err := r.tr.SetSigmask(pid, 0); err != nil {
		return err
	}
	if comm := t.img.task.Comm; comm != "" {
		// Its name, as ps shows the zombie; from below the puppet's
		// stack pointer, which the stub never uses.
		at := (regs.Rsp - 1024) &^ 15
		b := make([]byte, 16)
		copy(b[:15], comm)
		if err := writeMem(pid, at, b); err != nil {
			return err
		}
		if _, err := r.tr.InjectSyscall(pid, unix.SYS_PRCTL, unix.PR_SET_NAME, at); err != nil {
			return fmt.Errorf("set name: %w", err)
		}
	}
	if ws.Signaled() {
		// No core file whatever the signal (checkZombies refused
		// statuses that had one).
		if err := unix.Prlimit(pid, unix.RLIMIT_CORE, &unix.Rlimit{}, nil); err != nil {
			return fmt.Errorf("prlimit core: %w", err)
		}
		regs.Rax, regs.Rdi, regs.Rsi = unix.SYS_KILL, uint64(pid), uint64(ws.Signal())
	} else {
		regs.Rax, regs.Rdi = unix.SYS_EXIT_GROUP, uint64(ws.ExitStatus())
	}
	regs.Rip = t.task.SyscallAddr
	regs.Orig_rax = ^uint64(0) // not in a syscall: no restart
	if err := r.tr.SetRegs(pid, regs); err != nil {
		return err
	}
	if err := r.tr.ThawProcess(pid, false); err != nil {
		return err
	}
	t.task = nil // released: its parent's death reaps it
	deadline := time.Now().Add(zombieDeadline)
	for {
		st, err := procfs.ReadStat(pid)
		if err != nil {
			return err
		}
		if st.State == 'Z' {
			if got := unix.WaitStatus(st.ExitCode); got != ws {
				return fmt.Errorf("died with status %#x, want %#x", uint32(got), uint32(ws))
			}
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not dead after %v (state %c)", zombieDeadline, st.State)
		}
		time.Sleep(time.Millisecond)
	}
}

// takeSigchld dequeues the SIGCHLDs pending for t (rt_sigtimedwait with a
// zero timeout, injected while every signal is blocked), its arguments
// below the puppet's stack pointer, which the stub never uses.
func (r *Restorer) takeSigchld(t *taskRun) error {
	pid := t.img.pid
	regs, err := r.tr.GetRegs(pid)
	if err != nil {
		return err
	}
	at := (regs.Rsp - 512) &^ 15
	var buf [32]byte
	*(*uint64)(unsafe.Pointer(&buf[0])) = 1 << (unix.SIGCHLD - 1) // sigset
	// buf[16:32]: a zero struct timespec
	if err := writeMem(pid, at, buf[:]); err != nil {
		return err
	}
	for i := 0; i < 64; i++ {
		_, err := r.tr.InjectSyscall(pid, unix.SYS_RT_SIGTIMEDWAIT, at, 0, at+16, 8)
		if errors.Is(err, unix.EAGAIN) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("take back SIGCHLD: %w", err)
		}
	}
	return errors.New("take back SIGCHLD: still pending")
}

// writeMem writes into a stopped task through /proc/PID/mem.
func writeMem(pid int, addr uint64, b []byte) error {
	f, err := os.OpenFile("/proc/"+strconv.Itoa(pid)+"/mem", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteAt(b, int64(addr))
	return err
}

// earlyCtty gives session leader k, just made, its session's terminal
// before it makes the session's other tasks, when they have it too (they
// inherit it): godwit makes the pty (drivers.EarlyCtty, kept in r.held)
// and k opens the slave, in a page of its own (the scratch window comes
// with the layout), and takes it with TIOCSCTTY.
func (r *Restorer) earlyCtty(k *model.Task) error {
	if r.held == nil {
		r.held = drivers.NewHeld()
	}
	path, err := drivers.EarlyCtty(r.img.tree, k, r.held)
	if err != nil || path == "" {
		return err
	}
	addr, err := r.tr.InjectSyscall(k.Pid, unix.SYS_MMAP, 0, pageSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		return fmt.Errorf("controlling terminal %s: mmap: %w", path, err)
	}
	err = ptrace.PokeMem(k.Pid, addr, append([]byte(path), 0))
	var fd uint64
	if err == nil {
		fd, err = r.tr.InjectSyscall(k.Pid, unix.SYS_OPENAT, ^uint64(99) /* AT_FDCWD */, addr, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
		if err == nil {
			_, err = r.tr.InjectSyscall(k.Pid, unix.SYS_IOCTL, fd, unix.TIOCSCTTY, 0)
			if _, cerr := r.tr.InjectSyscall(k.Pid, unix.SYS_CLOSE, fd); cerr != nil && err == nil {
				err = cerr
			}
		}
	}
	if _, merr := r.tr.InjectSyscall(k.Pid, unix.SYS_MUNMAP, addr, pageSize); merr != nil && err == nil {
		err = merr
	}
	if err != nil {
		return fmt.Errorf("controlling terminal %s: %w", path, err)
	}
	return nil
}
