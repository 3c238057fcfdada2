package model

import (
	"fmt"
	"slices"

	"golang.org/x/sys/unix"
)

// ID names an object of the tree (a file, a set of fds, an mm …). IDs are
// allocated per object, from 1; 0 means none.
type ID uint32

// Tree is a checkpointed process tree.
type Tree struct {
	// Tasks, the root first, every parent before its children.
	Tasks []*Task
	// Files are the open files (file descriptions) and the files named
	// by exe links, cwd, root and file mappings, by ID.
	Files map[ID]*File
}

// Root is the root task, nil in an empty tree.
func (t *Tree) Root() *Task {
	if len(t.Tasks) == 0 {
		return nil
	}
	return t.Tasks[0]
}

// Task finds a task by pid.
func (t *Tree) Task(pid int) *Task {
	for _, k := range t.Tasks {
		if k.Pid == pid {
			return k
		}
	}
	return nil
}

// FileIDs lists the ids of Files in ascending order.
func (t *Tree) FileIDs() []ID {
	ids := make([]ID, 0, len(t.Files))
	for id := range t.Files {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// State is what a task was doing when frozen.
type State int

// Task states.
const (
	Alive State = iota + 1
	Stopped
	Dead
	Zombie
)

func (s State) String() string {
	switch s {
	case Alive:
		return "alive"
	case Dead:
		return "dead"
	case Stopped:
		return "stopped"
	case Zombie:
		return "zombie"
	}
	return fmt.Sprintf("state %d", int(s))
}

// Task is one process: its ids, state, threads and process-wide state.
type Task struct {
	Pid, Ppid, Pgid, Sid int
	State                State
	StopSignal           int // the group-stop signal of a Stopped task
	ExitCode             int // of a Dead or Zombie task

	Threads []*Thread // leader first
	IDs     KobjIDs

	Personality    uint32
	Comm           string
	Sigactions     []Sigaction // by signal, without SIGKILL and SIGSTOP
	Itimers        [3]Itimer   // ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF
	PosixTimers    []PosixTimer
	Rlimits        []unix.Rlimit // by resource, 0 … RLIM_NLIMITS-1
	SharedSignals  []Siginfo     // the process-wide pending queue
	Loginuid       *uint32       // nil: unknown
	OomScoreAdj    *int32        // nil: unknown
	ChildSubreaper bool

	MM  *MM
	FS  *FS
	FDs []FD // ascending by number
}

// Leader is the main thread.
func (k *Task) Leader() *Thread {
	if len(k.Threads) == 0 {
		return nil
	}
	return k.Threads[0]
}

// KobjIDs tell which kernel objects a task shares with others: tasks with
// the same VM id share an mm (CLONE_VM), the same Files id an fd table,
// and so on. NS holds the inode of each namespace, 0 when unknown.
type KobjIDs struct {
	VM, Files, FS, Sighand ID
	NS                     Namespaces
}

// Namespaces are namespace inode numbers (of /proc/PID/ns/*), 0 when
// unknown.
type Namespaces struct {
	Pid, Net, IPC, UTS, Mnt, User, Cgroup, Time uint32
}

// Thread is one thread's state.
type Thread struct {
	Tid    int
	Regs   unix.PtraceRegs // as frozen (NT_PRSTATUS)
	XState []byte          // NT_X86_XSTATE, in this CPU's standard layout
	// Sigmask is the blocked set; Pending its private signal queue.
	Sigmask uint64
	Pending []Siginfo

	ClearTid    uint64 // set_tid_address
	Sigaltstack Sigaltstack
	RobustList  uint64
	RobustLen   uint64
	Rseq        Rseq
	PdeathSig   uint32
	Creds       Creds
	Comm        string
	Nice        int32
	Policy      uint32
	RtPrio      uint32
}

// Siginfo is a raw siginfo_t (include/uapi/asm-generic/siginfo.h).
type Siginfo [128]byte

// Sigaction is one signal's disposition (struct sigaction as the kernel
// takes it).
type Sigaction struct {
	Sig      int
	Handler  uint64
	Flags    uint64
	Restorer uint64
	Mask     uint64
}

// Itimer is a struct itimerval, in seconds and microseconds.
type Itimer struct {
	IntervalSec, IntervalUsec uint64
	ValueSec, ValueUsec       uint64
}

// PosixTimer is one timer_create timer.
type PosixTimer struct {
	ID                        int
	Clock                     int
	Signal                    int
	Notify                    uint32 // SIGEV_*, with SIGEV_THREAD_ID
	NotifyThread              int    // for SIGEV_THREAD_ID
	Value                     uint64 // sigev_value
	Overrun                   uint32
	IntervalSec, IntervalNsec uint64
	ValueSec, ValueNsec       uint64
}

// Sigaltstack is a stack_t.
type Sigaltstack struct {
	SP    uint64
	Flags uint32
	Size  uint64
}

// Rseq is a thread's rseq registration; Pointer 0 when none.
type Rseq struct {
	Pointer   uint64
	Size      uint32
	Signature uint32
}

// Creds are a thread's credentials. Capability sets are 64-bit masks.
type Creds struct {
	UID, EUID, SUID, FSUID uint32
	GID, EGID, SGID, FSGID uint32
	CapInh, CapPrm, CapEff uint64
	CapBnd, CapAmb         uint64
	Groups                 []uint32
	Secbits                uint32
	NoNewPrivs             bool
}

// MM is a task's address space, less its pages.
type MM struct {
	StartCode, EndCode, StartData, EndData uint64
	StartStack, StartBrk, Brk              uint64
	ArgStart, ArgEnd, EnvStart, EnvEnd     uint64
	Exe                                    ID // a File
	Auxv                                   []uint64
	Dumpable                               *int32 // nil: unknown
	THPDisabled                            bool
	VMAs                                   []VMA // ascending
	// Membarrier is the MEMBARRIER_CMD_REGISTER_* commands the mm is
	// registered for (godwit image: CRIU has no field).
	Membarrier uint32
}

// FS is a task's fs_struct.
type FS struct {
	Cwd, Root ID // Files
	Umask     *uint32
	// CwdDeleted: the cwd was removed while the task sat in it (godwit
	// image: CRIU has no field); Cwd names the path it had.
	CwdDeleted bool
}

// FD is one file descriptor.
type FD struct {
	Num     int
	File    ID
	Cloexec bool
}

// FileKind is the kind of an open file. The kinds reopened by path
// (regular files, directories, named FIFOs, stateless character devices)
// are all Path files: reopening the path restores them whole.
type FileKind int

const (
	// Path is a file restored by opening its path.
	Path FileKind = iota + 1
)

// File is one open file description, or a file an exe link, cwd, root or
// mapping names.
type File struct {
	ID    ID
	Kind  FileKind
	Path  string // absolute
	Flags uint32 // open flags without O_CLOEXEC
	Pos   uint64
	Mode  uint32  // st_mode; 0 when unknown
	Size  *uint64 // st_size of a regular file at dump time
	// BuildID is the GNU build-id note of an ELF file at dump time, nil
	// when it has none; restore compares it (--file-validation=buildid).
	BuildID []byte
	MntID   int // -1 when unknown
	// Dev and Ino are the kernel identity the dumper dedupes on; codecs
	// need not keep them (0 when unknown).
	Dev, Ino uint64
}
