// Package puppet starts and multiplies the restore stub: a tiny static
// program that does nothing but pause, run under ptrace, into which the
// restorer injects every syscall that rebuilds a task. Tasks with chosen
// PIDs are made by injecting clone3 with set_tid into a puppet.
package puppet

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/abi/linux"
	"godwit/internal/ptrace"
)

// DefaultBase is where the stub's code is loaded: low in the address space,
// below where non-PIE programs (0x400000) and mmap/stack areas live, so
// that it rarely collides with a layout being restored.
const DefaultBase = 0x10000

// TraceOptions are the ptrace options of every puppet: it dies with its
// tracer, and tasks it forks or clones are attached and stopped at once.
const TraceOptions = unix.PTRACE_O_EXITKILL | unix.PTRACE_O_TRACECLONE |
	unix.PTRACE_O_TRACEFORK | unix.PTRACE_O_TRACEVFORK

// ErrPidInUse is returned when the PID asked for already belongs to a task.
var ErrPidInUse = errors.New("pid is in use")

// ErrPidMax is returned when the PID asked for is not below pid_max.
var ErrPidMax = errors.New("pid is not below pid_max")

// Options configure Start.
type Options struct {
	// Tracer traces the puppet and runs every ptrace call; required.
	Tracer *ptrace.Tracer
	// Base is the load address of the stub (page aligned); 0 means
	// DefaultBase.
	Base uint64
	// Argv0 is the puppet's argv[0]; "godwit-puppet" if empty.
	Argv0 string
	// Sibling makes the puppet a sibling of godwit (CLONE_PARENT: its
	// parent is godwit's parent), not a child, so that tasks it clones
	// with CLONE_PARENT are siblings too (restore --restore-sibling).
	Sibling bool
}

// Puppet is a stub task, attached and stopped.
type Puppet struct {
	Pid int
	// SyscallAddr is the stub's own syscall instruction, used for every
	// injection (the stub's code must stay mapped until the restorer
	// provides another).
	SyscallAddr uint64
	Base        uint64
	tr          *ptrace.Tracer
	proc        *os.Process // non-nil for a puppet we forked
}

// lifeline is the pipe every puppet blocks reading (see the stub): godwit
// holds its only write end, close-on-exec, for as long as it lives, so the
// read returns EOF, and the stub exits, when godwit dies.
var lifeline struct {
	once sync.Once
	r, w *os.File
	err  error
}

func lifelineRead() (*os.File, error) {
	lifeline.once.Do(func() {
		// os.Pipe makes both ends close-on-exec: no program godwit
		// runs holds the write end open after godwit's death.
		lifeline.r, lifeline.w, lifeline.err = os.Pipe()
		if lifeline.err != nil {
			lifeline.err = fmt.Errorf("puppet: lifeline pipe: %w", lifeline.err)
		}
	})
	return lifeline.r, lifeline.err
}

// Start executes the stub from a memfd and returns it seized and stopped.
// Its parent is the tracer thread (so Pdeathsig and PTRACE_O_EXITKILL both
// end it if godwit goes away); it and every task cloned from it also exit
// when their lifeline breaks, untraced too.
func Start(opts Options) (*Puppet, error) {
	if opts.Tracer == nil {
		return nil, errors.New("puppet: no tracer")
	}
	base := opts.Base
	if base == 0 {
		base = DefaultBase
	}
	if base%uint64(os.Getpagesize()) != 0 {
		return nil, fmt.Errorf("puppet: base %#x not page aligned", base)
	}
	argv0 := opts.Argv0
	if argv0 == "" {
		argv0 = "godwit-puppet"
	}
	mfd, err := stubFile(base)
	if err != nil {
		return nil, err
	}
	defer mfd.Close()
	null, err := os.Open(os.DevNull)
	if err != nil {
		return nil, fmt.Errorf("puppet: %w", err)
	}
	defer null.Close()
	life, err := lifelineRead()
	if err != nil {
		return nil, err
	}

	p := &Puppet{Base: base, SyscallAddr: base + SyscallOffset, tr: opts.Tracer}
	err = opts.Tracer.Do(func() error {
		// Forked from the tracer thread: the parent-death signal is
		// tied to the thread that forks.
		attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if opts.Sibling {
			// Its parent outlives godwit: PTRACE_O_EXITKILL alone
			// ends it if godwit dies while it is held.
			attr = &syscall.SysProcAttr{Setpgid: true, Cloneflags: unix.CLONE_PARENT}
		}
		proc, err := os.StartProcess("/proc/self/fd/"+strconv.Itoa(int(mfd.Fd())), []string{argv0}, &os.ProcAttr{
			Files: []*os.File{null, null, null, life}, // life is LifelineFD
			Env:   []string{},
			Sys:   attr,
		})
		if err != nil {
			return fmt.Errorf("puppet: exec stub: %w", err)
		}
		p.proc = proc
		p.Pid = proc.Pid
		return nil
	})
	if err != nil {
		return nil, err
	}
	opts.Tracer.SetSyscallAddr(p.Pid, p.SyscallAddr)
	if _, err := opts.Tracer.Attach(p.Pid, TraceOptions); err != nil {
		p.proc.Kill()
		p.proc.Wait()
		return nil, fmt.Errorf("puppet %d: %w", p.Pid, err)
	}
	// The stub must be in its own code, not still in the exec.
	r, err := opts.Tracer.GetRegs(p.Pid)
	if err == nil && (r.Rip < base+codeOffset || r.Rip >= base+codeOffset+uint64(len(stubCode))) {
		err = fmt.Errorf("stopped at %#x, outside the stub", r.Rip)
	}
	if err == nil {
		// Descriptors our own parent left open without close-on-exec
		// leak through exec: the puppet starts with 0, 1, 2 and its
		// lifeline only.
		_, err = opts.Tracer.InjectSyscall(p.Pid, unix.SYS_CLOSE_RANGE, LifelineFD+1, ^uint64(0)>>32, 0)
	}
	if err == nil {
		_, err = opts.Tracer.InjectSyscall(p.Pid, unix.SYS_PRCTL, unix.PR_SET_NAME, base+NameOffset)
	}
	if err == nil {
		// A task's default timer slack (what PR_SET_TIMERSLACK 0 gives
		// back) is its forker's slack: tasks cloned from the puppet get
		// the kernel's initial one, not godwit's (nor its parent's).
		_, err = opts.Tracer.InjectSyscall(p.Pid, unix.SYS_PRCTL, unix.PR_SET_TIMERSLACK, linux.InitTimerSlack)
	}
	if err != nil {
		p.Kill()
		return nil, fmt.Errorf("puppet %d: %w", p.Pid, err)
	}
	return p, nil
}

// stubFile writes the stub into a sealed, executable memfd.
func stubFile(base uint64) (*os.File, error) {
	img := Image(base)
	fd, err := unix.MemfdCreate("godwit-puppet", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING|unix.MFD_EXEC)
	if err == unix.EINVAL { // kernels before 6.3 know no MFD_EXEC
		fd, err = unix.MemfdCreate("godwit-puppet", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	}
	if err != nil {
		return nil, fmt.Errorf("puppet: memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "godwit-puppet")
	if _, err := f.Write(img); err != nil {
		f.Close()
		return nil, fmt.Errorf("puppet: write stub: %w", err)
	}
	// Sealed so nothing can change the code under a running puppet.
	seals := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		f.Close()
		return nil, fmt.Errorf("puppet: seal stub: %w", err)
	}
	return f, nil
}

// PidMax returns /proc/sys/kernel/pid_max: PIDs must be below it.
func PidMax() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/pid_max")
	if err != nil {
		return 0, fmt.Errorf("read pid_max: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("parse pid_max: %w", err)
	}
	return n, nil
}

// Clone makes a new task with PID pid by injecting clone3 with set_tid into
// the puppet, and returns it attached and stopped, a copy of the stub with
// the puppet's signal mask. With sibling the new task's parent is the
// puppet's parent (CLONE_PARENT) — godwit itself for a puppet from Start —
// otherwise it is the puppet.
func (p *Puppet) Clone(pid int, sibling bool) (*Puppet, error) {
	flags := uint64(0)
	if sibling {
		flags = unix.CLONE_PARENT
	}
	return p.CloneWith(pid, flags)
}

// SharedFlags are the clone flags CloneWith takes: a parent's tables the
// new task shares (CLONE_FILES, CLONE_FS), or its parent (CLONE_PARENT).
const SharedFlags = unix.CLONE_PARENT | unix.CLONE_FILES | unix.CLONE_FS

// NamespaceFlags are the new namespaces CloneWith may make the task in
// (a tree's own UTS and IPC namespaces, made with its root).
const NamespaceFlags = unix.CLONE_NEWUTS | unix.CLONE_NEWIPC

// CloneWith is Clone with clone flags among SharedFlags and
// NamespaceFlags.
func (p *Puppet) CloneWith(pid int, flags uint64) (*Puppet, error) {
	if flags&^(SharedFlags|NamespaceFlags) != 0 {
		return nil, fmt.Errorf("puppet: clone flags %#x not allowed", flags&^(SharedFlags|NamespaceFlags))
	}
	if err := checkPid(pid); err != nil {
		return nil, err
	}
	s, err := p.tr.BeginInjection(p.Pid)
	if err != nil {
		return nil, fmt.Errorf("puppet %d: %w", p.Pid, err)
	}
	child, cerr := p.clone3(s, pid, flags)
	if eerr := s.End(); eerr != nil && cerr == nil {
		cerr = eerr
	}
	if cerr != nil {
		if child != nil {
			child.Kill()
		}
		return nil, cerr
	}
	// The child forked inside our session, so it inherited its
	// all-blocked signal mask and the scratch page: undo both.
	if err := p.tr.SetSigmask(child.Pid, s.SavedSigmask()); err != nil {
		child.Kill()
		return nil, fmt.Errorf("new task %d: %w", pid, err)
	}
	return child, nil
}

// CloneSpec is one child for CloneEach: its pid and clone flags (among
// SharedFlags).
type CloneSpec struct {
	Pid   int
	Flags uint64
}

// CloneEach makes a child of the puppet per spec, in order, as CloneWith
// does, in one injection session: the session's start and end (a stop)
// are paid once for all of them. It returns the children made, by spec
// (nil where none); on error a child whose clone failed is killed, those
// made before it are returned with the error, for the caller to kill.
func (p *Puppet) CloneEach(specs []CloneSpec) ([]*Puppet, error) {
	out := make([]*Puppet, len(specs))
	for _, c := range specs {
		if c.Flags&^SharedFlags != 0 {
			return out, fmt.Errorf("puppet: clone flags %#x not allowed", c.Flags&^SharedFlags)
		}
		if err := checkPid(c.Pid); err != nil {
			return out, err
		}
	}
	if len(specs) == 0 {
		return out, nil
	}
	s, err := p.tr.BeginInjection(p.Pid)
	if err != nil {
		return out, fmt.Errorf("puppet %d: %w", p.Pid, err)
	}
	var cerr error
	for i, c := range specs {
		child, err := p.clone3(s, c.Pid, c.Flags)
		if err != nil {
			if child != nil {
				defer child.Kill() // once the session is over
			}
			cerr = err
			break
		}
		out[i] = child
	}
	if eerr := s.End(); eerr != nil && cerr == nil {
		cerr = eerr
	}
	if cerr != nil {
		return out, cerr
	}
	// The children forked inside our session, so they inherited its
	// all-blocked signal mask: undo it.
	err = p.tr.Do(func() error {
		for _, c := range out {
			if err := p.tr.SetSigmask(c.Pid, s.SavedSigmask()); err != nil {
				return fmt.Errorf("new task %d: %w", c.Pid, err)
			}
		}
		return nil
	})
	return out, err
}

// argsBelowSP is how far below the stub's stack pointer clone3's
// arguments go (the restorer uses the 1 KiB just below it).
const argsBelowSP = 4096

// threadFlags make a thread of the puppet: everything shared, as
// pthread_create does.
const threadFlags = unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND |
	unix.CLONE_THREAD | unix.CLONE_SYSVSEM

// CloneThread adds a thread with TID tid to the puppet, by injected clone3
// with CLONE_THREAD and set_tid, and returns it attached and stopped with the
// puppet's signal mask. The thread runs the stub's loop on the puppet's
// stack pointer (the loop never touches the stack); the restorer gives it
// its real registers later.
func (p *Puppet) CloneThread(tid int) (int, error) { return p.CloneThreadAt(tid, 0) }

// CloneThreadAt is CloneThread with clone3's arguments at args, writable
// memory of the puppet (0: below its stack pointer): for a puppet whose
// stack is unmapped (laid out as the restored task).
func (p *Puppet) CloneThreadAt(tid int, args uint64) (int, error) {
	if err := checkPid(tid); err != nil {
		return 0, err
	}
	s, err := p.tr.BeginInjection(p.Pid)
	if err != nil {
		return 0, fmt.Errorf("puppet %d: %w", p.Pid, err)
	}
	child, cerr := p.clone3at(s, tid, threadFlags, args)
	if eerr := s.End(); eerr != nil && cerr == nil {
		cerr = eerr
	}
	if cerr != nil {
		if child != nil {
			// A thread cannot be killed alone; the caller kills
			// the puppet.
			return child.Pid, cerr
		}
		return 0, cerr
	}
	if err := p.tr.SetSigmask(child.Pid, s.SavedSigmask()); err != nil {
		return child.Pid, fmt.Errorf("new thread %d: %w", tid, err)
	}
	return child.Pid, nil
}

func checkPid(pid int) error {
	if pid <= 0 {
		return fmt.Errorf("puppet: bad pid %d", pid)
	}
	max, err := PidMax()
	if err != nil {
		return err
	}
	if pid >= max {
		return fmt.Errorf("pid %d: %w %d (raise /proc/sys/kernel/pid_max)", pid, ErrPidMax, max)
	}
	return nil
}

func (p *Puppet) clone3(s *ptrace.Session, pid int, flags uint64) (*Puppet, error) {
	return p.clone3at(s, pid, flags, 0)
}

func (p *Puppet) clone3at(s *ptrace.Session, pid int, flags uint64, scratch uint64) (*Puppet, error) {
	// The arguments go below the stack pointer, which the stub never
	// uses (exec gave its stack VMA 128 KiB at least): no scratch
	// mapping, which would cost an mmap and a munmap of two stops each.
	if scratch == 0 {
		scratch = (s.Saved().Rsp - argsBelowSP) &^ 15
	}
	args := linux.CloneArgs{
		Flags:      flags,
		ExitSignal: uint64(unix.SIGCHLD),
		SetTid:     scratch + linux.CloneArgsSize,
		SetTidSize: 1,
	}
	if flags&(unix.CLONE_PARENT|unix.CLONE_THREAD) != 0 {
		// clone3 refuses an exit_signal with CLONE_PARENT or
		// CLONE_THREAD: the child gets the puppet's own.
		args.ExitSignal = 0
	}
	buf := make([]byte, linux.CloneArgsSize+4)
	copy(buf, unsafe.Slice((*byte)(unsafe.Pointer(&args)), linux.CloneArgsSize))
	*(*int32)(unsafe.Pointer(&buf[linux.CloneArgsSize])) = int32(pid)
	if err := ptrace.WriteMem(p.Pid, scratch, buf); err != nil {
		return nil, fmt.Errorf("puppet %d: clone3 arguments: %w", p.Pid, err)
	}
	before := len(s.Children()) // a session may make several (CloneEach)
	ret, err := s.Syscall(unix.SYS_CLONE3, scratch, linux.CloneArgsSize)
	var child *Puppet
	if n := len(s.Children()); n > before {
		child = &Puppet{Pid: s.Children()[n-1], SyscallAddr: p.SyscallAddr, Base: p.Base, tr: p.tr}
	}
	switch {
	case errors.Is(err, unix.EEXIST):
		return child, fmt.Errorf("pid %d: %w%s", pid, ErrPidInUse, occupant(pid))
	case errors.Is(err, unix.EINVAL):
		return child, fmt.Errorf("clone3 with pid %d: %w (pid_max or clone flags)", pid, err)
	case errors.Is(err, unix.EPERM):
		return child, fmt.Errorf("clone3 with pid %d: %w (needs CAP_CHECKPOINT_RESTORE in the PID namespace)", pid, err)
	case err != nil:
		return child, fmt.Errorf("clone3 with pid %d: %w", pid, err)
	}
	if child == nil || int(ret) != pid || child.Pid != pid {
		return child, fmt.Errorf("clone3 with pid %d returned %d, caught %v", pid, int64(ret), s.Children())
	}
	return child, nil
}

// Tracer returns the tracer that holds the puppet.
func (p *Puppet) Tracer() *ptrace.Tracer { return p.tr }

// Kill kills the puppet (SIGKILL while traced) and reaps what we may reap:
// a puppet whose parent is godwit (from Start, or a sibling clone) is gone
// when Kill returns; a child of another puppet stays a zombie until that
// puppet dies and init reaps it.
func (p *Puppet) Kill() error {
	err := p.tr.KillProcess(p.Pid)
	if p.proc != nil {
		// Reaped by the tracer's wait already.
		p.proc.Release()
	}
	return err
}

// occupant describes the task holding pid, for an error: the restore
// checked the pid was free, so whatever took it since is worth naming.
func occupant(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	// pid (comm) state ppid ...
	s := string(b)
	i, j := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if i < 0 || j < i || j+2 > len(s) {
		return ""
	}
	f := strings.Fields(s[j+2:])
	if len(f) < 2 {
		return ""
	}
	return fmt.Sprintf(" by %q (state %s, parent %s)", s[i+1:j], f[0], f[1])
}

// Release detaches the stopped puppet's threads tids (the leader among
// them) from its tracer, for another tracer to Adopt: ptrace ties a
// tracee to one tracer thread, so spreading a tree over several threads
// means handing tasks over. Until adopted they run the stub's loop,
// blocked on their lifeline, untraced (the injection sessions are over:
// each thread is back on the stub's registers): should godwit die in
// between, the lifeline ends them. Release refuses a task whose lifeline
// is closed already (its fd table restored), which nothing would end.
func (p *Puppet) Release(tids []int) error {
	if err := p.checkLifeline(); err != nil {
		return fmt.Errorf("puppet %d: hand over: %w", p.Pid, err)
	}
	return p.tr.Do(func() error {
		var errs []error
		for _, tid := range tids {
			if err := p.tr.Detach(tid, 0); err != nil {
				errs = append(errs, fmt.Errorf("puppet %d: hand over thread %d: %w", p.Pid, tid, err))
			}
		}
		return errors.Join(errs...)
	})
}

// Adopt seizes and stops the puppet's threads tids, released by their
// former tracer, with tr, which traces the puppet from now on (Kill and
// the clones use it).
func (p *Puppet) Adopt(tr *ptrace.Tracer, tids []int) error {
	p.tr = tr
	return tr.Do(func() error {
		tr.SetSyscallAddr(p.Pid, p.SyscallAddr)
		for _, tid := range tids {
			if _, err := tr.Attach(tid, TraceOptions); err != nil {
				return fmt.Errorf("puppet %d: take over thread %d: %w", p.Pid, tid, err)
			}
		}
		return nil
	})
}

// checkLifeline fails unless the puppet's LifelineFD is godwit's lifeline.
func (p *Puppet) checkLifeline() error {
	life, err := lifelineRead()
	if err != nil {
		return err
	}
	var want, got unix.Stat_t
	if err := unix.Fstat(int(life.Fd()), &want); err != nil {
		return fmt.Errorf("lifeline: %w", err)
	}
	if err := unix.Stat("/proc/"+strconv.Itoa(p.Pid)+"/fd/"+strconv.Itoa(LifelineFD), &got); err != nil {
		return fmt.Errorf("no lifeline (fd %d): %w", LifelineFD, err)
	}
	if got.Dev != want.Dev || got.Ino != want.Ino {
		return fmt.Errorf("fd %d is not its lifeline", LifelineFD)
	}
	return nil
}
