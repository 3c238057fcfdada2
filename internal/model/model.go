package model

import (
	"fmt"
	"net/netip"
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
	// UTS and IPC are the tree's own UTS and IPC namespaces, nil when
	// the tree is in godwit's.
	UTS *UTSNamespace
	IPC *IPCNamespace
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
	// XcompPerm is ARCH_GET_XCOMP_PERM's feature set when it holds a
	// dynamic feature (AMX tile data) the task asked for; 0 otherwise
	// (godwit image).
	XcompPerm uint64
	// Attrs are the task's odds (MDWE, coredump_filter) CRIU's images
	// have no field for (godwit image).
	Attrs TaskAttrs

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
	// RestartNr is the call a thread frozen inside restart_syscall
	// restarts (read from its code at dump; 0 otherwise): CRIU's image
	// writes the restart with it, as orig_rax names only restart_syscall.
	RestartNr uint64
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
	// Seccomp is the thread's seccomp mode and filters.
	Seccomp Seccomp
	// Tiles is the AMX tile state in use, nil when none (godwit image:
	// CRIU's fpregs have no field for it).
	Tiles *Tiles
	// Attrs are the thread's odds (affinity, timer slack, TSC, MCE
	// policy, I/O priority) CRIU's images have no field for (godwit
	// image).
	Attrs ThreadAttrs
}

// TaskAttrs is process-wide state of the godwit image; each zero value
// is the kernel's default, or unknown (a CRIU image): left as the
// restore's new task has it.
type TaskAttrs struct {
	MDWE           uint32  // PR_GET_MDWE: PR_MDWE_* flags
	CoredumpFilter *uint32 // /proc/PID/coredump_filter; nil: the default
}

// ThreadAttrs is per-thread state of the godwit image; each zero value is
// the kernel's default, or unknown.
type ThreadAttrs struct {
	// Affinity is the sched_getaffinity mask (64 CPUs a word); nil: every
	// CPU online.
	Affinity   []uint64
	TimerSlack uint64 // ns (PR_GET_TIMERSLACK); 0: the default
	TSCSigsegv bool   // PR_GET_TSC is PR_TSC_SIGSEGV
	// MCEKill is PR_MCE_KILL_GET+1 when the thread chose a policy
	// (PR_MCE_KILL_EARLY or _LATE); 0: the system's default.
	MCEKill uint32
	Ioprio  uint32 // ioprio_get; 0: none (follows the nice value)
}

// Tiles is a thread's AMX state: XTILECFG (64 bytes) and XTILEDATA
// (8 KiB).
type Tiles struct {
	Cfg, Data []byte
}

// Seccomp is a thread's seccomp state.
type Seccomp struct {
	Mode    int             // SECCOMP_MODE_*: 0 off, 1 strict, 2 filter
	Filters []SeccompFilter // filter mode: oldest first
}

// SeccompFilter is one installed filter.
type SeccompFilter struct {
	Prog  []byte // struct sock_filter array
	Flags uint32 // SECCOMP_FILTER_FLAG_* the kernel reports (LOG)
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
	// THPDisableFlags are PR_SET_THP_DISABLE's flags besides the
	// disable itself (PR_THP_DISABLE_EXCEPT_ADVISED), set only with
	// THPDisabled (godwit image: CRIU's thp_disabled is a bool).
	THPDisableFlags uint32
	VMAs            []VMA // ascending
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
	// Locks are the POSIX locks the task holds on the file, restored
	// through this fd (the same locks may show on another fd of the
	// same file: setting one twice is harmless).
	Locks []FileLock
}

// FileLock is a lock on a file: POSIX locks belong to the task, flock and
// OFD locks and leases to the open file description.
type FileLock struct {
	Kind  uint32 // LockPOSIX, LockFlock or LockOFD
	Write bool   // exclusive
	Start int64
	Len   int64 // 0: to the end of the file
}

// The kinds of FileLock, the kernel's FL_* bits (include/linux/filelock.h);
// CRIU's file-lock entries use them for POSIX and flock, but 4 for OFD
// (criuimg maps it).
const (
	LockPOSIX = 1
	LockFlock = 2
	LockLease = 32 // FL_LEASE: F_SETLEASE, of the description
	LockOFD   = 1024
)

// FileKind is the kind of an open file. The kinds reopened by path
// (regular files, directories, named FIFOs, stateless character devices)
// are all Path files: reopening the path restores them whole.
type FileKind int

const (
	// Path is a file restored by opening its path.
	Path FileKind = iota + 1
	// Pipe is one end of an unnamed pipe (Pipe state).
	Pipe
	// EventFD is an eventfd (EventFD state).
	EventFD
	// SignalFD is a signalfd (SignalFD state).
	SignalFD
	// TimerFD is a timerfd (TimerFD state).
	TimerFD
	// Epoll is an epoll instance (Epoll state).
	Epoll
	// UnixSocket is an AF_UNIX socket (UnixSocket state).
	UnixSocket
	// NetlinkSocket is an AF_NETLINK socket (Netlink state).
	NetlinkSocket
	// Ghost is a regular file whose last name was unlinked while open
	// (Ghost state: its contents travel in the images).
	Ghost
	// Inotify is an inotify instance (Inotify state).
	Inotify
	// InetSocket is an AF_INET or AF_INET6 socket (Inet state).
	InetSocket
	// Memfd is a memfd_create file (Memfd state); its mappings name
	// such a file too.
	Memfd
	// Tty is an end of a Unix98 pty (Tty state).
	Tty
	// Pidfd is a pidfd (Pidfd state).
	Pidfd
	// Namespace is an fd of a namespace (/proc/PID/ns/*): the task's own
	// (Namespace state).
	Namespace
	// Fanotify is a fanotify group (Fanotify state).
	Fanotify
	// Tun is an fd of /dev/net/tun (Tun state).
	Tun
)

// TunState is a /dev/net/tun description: the device it is attached to
// (none: Name ""), with the device's settings and, for a device the
// restore may have to make again, the link's state in the task's netns.
type TunState struct {
	Name    string
	Flags   uint16 // TUNGETIFF: IFF_TUN or IFF_TAP, IFF_NO_PI, IFF_VNET_HDR …, IFF_PERSIST
	Owner   int64  // -1: none
	Group   int64  // -1: none
	SndBuf  int32  // TUNGETSNDBUF
	VnetHdr int32  // TUNGETVNETHDRSZ
	// The link: up, MTU, hardware address (a tap's) and addresses.
	Up     bool
	MTU    uint32
	HwAddr []byte
	Addrs  []TunAddr
}

// TunAddr is an address of a tun link (RTM_NEWADDR).
type TunAddr struct {
	Family    uint8
	Prefixlen uint8
	Flags     uint32
	Scope     uint8
	Local     []byte // IFA_LOCAL (nil: none)
	Address   []byte // IFA_ADDRESS
}

// FanotifyState is a fanotify group: its fanotify_init flags and event
// file flags, and its marks.
type FanotifyState struct {
	Flags, EventFlags uint32
	Marks             []FanotifyMark
}

// FanotifyMark is one mark: on an inode (known by its file handle and a
// path that reached it at dump time) or on a mount (its mount point).
type FanotifyMark struct {
	Mount             bool
	MntID             int // of a mount mark
	Mflags            uint32
	Mask, IgnoredMask uint32
	Ino               uint64
	Dev               uint32 // the kernel's s_dev (major << 20 | minor)
	HandleType        uint32
	Handle            []byte
	Path              string
}

// NamespaceState is a namespace fd: the one of the task's own namespaces
// it opens, by its /proc/PID/ns link name (net, pid_for_children, …).
type NamespaceState struct {
	Link string
	Ino  uint64 // at dump time
}

// PidfdState is the process (or thread) a pidfd refers to.
type PidfdState struct {
	Pid int    // in the tree; -1: the process is gone (reaped)
	Ino uint64 // the pidfs inode: the pidfds of one process share it
}

// TtyFile is a description of a pty end: the master (/dev/ptmx) or the
// slave (/dev/pts/N), and the pty both ends share; or (Pty nil) of
// another tty, Other.
type TtyFile struct {
	Master bool
	Pty    *PtyState
	Other  *TtyOther
}

// TtyKind is the kind of a tty that is not an end of a pty of the tree.
type TtyKind int

const (
	// TtyCtty is /dev/tty, the alias of the task's controlling terminal.
	TtyCtty TtyKind = iota + 1
	// TtyConsole is /dev/console.
	TtyConsole
	// TtyVT is a virtual console, /dev/ttyN (N 0: the active one).
	TtyVT
	// TtySerial is a serial line (/dev/ttyS*, ttyUSB*, …).
	TtySerial
	// TtyExternal is a tty left out of the dump (--external
	// tty[rdev:dev]) that the restore is given (--inherit-fd).
	TtyExternal
)

// TtyOther is a tty that is not a pty of the tree: reopened by its path
// with its termios and window size, or (TtyExternal) given to the
// restore.
type TtyOther struct {
	Kind      TtyKind
	Rdev, Dev uint64 // st_rdev and st_dev of the description's inode
	// Real is the device the description reaches, where the path is
	// an alias (/dev/tty, /dev/console, /dev/tty0): TIOCGDEV.
	Real    uint64
	Termios unix.Termios // of a console, VT or serial line
	Winsize unix.Winsize
}

// PtyState is a pty pair: what its master and slave share.
type PtyState struct {
	Index            uint32 // N of /dev/pts/N
	Termios          unix.Termios
	LockedTermios    unix.Termios // TIOCGLCKTRMIOS: the fields a program may not change
	Winsize          unix.Winsize
	Locked           bool   // the slave may not be opened (TIOCSPTLCK)
	Exclusive        bool   // TIOCEXCL on the slave
	Packet           bool   // TIOCPKT on the master
	Sid, Pgrp        int    // the session whose controlling terminal it is, and its foreground group; 0: none
	SlaveClosed      bool   // every slave description was closed (the master sees a hangup)
	UID, GID, Mode   uint32 // of the /dev/pts/N node
	HasMaster, Slave bool   // the dump holds its master, a slave description
	// MembersCtty: the session's other tasks have it as their
	// controlling terminal too (the restore gives it to the leader
	// before it makes them, so that they inherit it).
	MembersCtty bool
	// ModeKnown: Mode was dumped (a CRIU-written image has no mode; the
	// restore then leaves the new node's).
	ModeKnown bool
}

// MemfdState is a memfd's inode: name, attributes, seals and contents.
// Every description and mapping of one memfd in the tree shares it.
type MemfdState struct {
	Dev, Ino uint64 // the inode at dump time
	Name     string // as given to memfd_create (without "memfd:")
	Size     uint64
	Seals    uint32 // F_GET_SEALS
	Mode     uint32 // permission bits
	UID, GID uint32
	Extents  []MemfdExtent // the data, ascending; the rest reads as zeros
}

// MemfdExtent is data of a memfd at Off (page aligned).
type MemfdExtent struct {
	Off  uint64
	Data []byte
}

// InotifyState is every watch of an inotify instance.
type InotifyState struct {
	Watches []InotifyWatch // ascending by Wd
}

// InotifyWatch is one watch: its descriptor, mask and the watched inode,
// known by its file handle and (for the restore) a path that reached it
// at dump time.
type InotifyWatch struct {
	Wd          uint32
	Mask        uint32
	IgnoredMask uint32
	Ino         uint64
	Dev         uint32 // the kernel's s_dev (major << 20 | minor)
	HandleType  uint32
	Handle      []byte
	Path        string
}

// GhostState is a deleted file's inode: contents and attributes. The
// files of one deleted inode share it (by Dev and Ino).
type GhostState struct {
	Dev, Ino uint64
	Mode     uint32
	UID, GID uint32
	Size     uint64
	// Data is the contents: Size bytes, or with Holes the bytes of
	// each of Chunks, one after another (the rest of the file is holes).
	Data   []byte
	Chunks []GhostChunk
	// Holes says the file was saved as Chunks (CRIU's chunked layout),
	// which may be none at all: a file of only holes. Without it Data is
	// the whole file and Chunks is unused.
	Holes        bool
	Atime, Mtime unix.Timespec
	// Linked is the hard link --link-remap made to a file whose name was
	// removed while it kept other links (an absolute path in the task's
	// mounts, CRIU's REMAP_LINKED): the restore opens the file by it.
	// Then only Dev, Ino and Mode are set (Data is empty).
	Linked string
}

// GhostChunk is a range of a deleted file that holds data (CRIU's
// ghost_chunk_entry); the ranges between chunks are holes.
type GhostChunk struct {
	Off, Len uint64
}

// UnixSocketState is an AF_UNIX socket: its kind, state, name, peer,
// options and the messages queued for it to read.
type UnixSocketState struct {
	Ino      uint32 // the socket's inode: peers name each other by it
	Type     uint32 // SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET
	State    uint32 // TCP_ESTABLISHED (connected), TCP_CLOSE or TCP_LISTEN
	Backlog  uint32 // of a listener
	Peer     uint32 // the peer's inode, 0 when not connected
	Name     []byte // bound name (abstract ones start with NUL), nil when unbound
	Shutdown uint32 // 1: receive shut down, 2: send shut down
	Opts     SocketOpts
	// Queue is what the socket has to read, oldest first: one message
	// per datagram or packet, a stream's bytes in one piece.
	Queue [][]byte
	// FileMode is the mode of a path-bound socket's file, 0 unknown.
	FileMode uint32
	// Deleted: the path the socket is bound to was unlinked (CRIU's
	// deleted); the restore binds to it and unlinks it again.
	Deleted bool
	// PeerName is the name the peer is bound to, nil when unbound or not
	// connected (dump side: connected through a name).
	PeerName []byte
	// SO_REUSEADDR, SO_REUSEPORT, SO_BROADCAST, SO_KEEPALIVE,
	// SO_OOBINLINE and SO_LINGER (LingerOn, Linger in seconds): CRIU's
	// sk_opts reuseaddr, so_reuseport, so_broadcast, so_keepalive,
	// so_oobinline and so_linger.
	ReuseAddr, ReusePort, Broadcast bool
	KeepAlive, OOBInline, LingerOn  bool
	Linger                          uint32
	// External: the peer is outside the tree (allowed by --ext-unix-sk
	// or --external unix[INO]). A datagram socket is connected again to
	// PeerName; a socketpair end is restored with its peer closed; a
	// stream connected through a name needs --inherit-fd.
	External bool
}

// SocketOpts are the socket-level options a socket is restored with.
type SocketOpts struct {
	SndBuf, RcvBuf            uint32 // as getsockopt reports them
	SndTimeoSec, SndTimeoUsec uint64
	RcvTimeoSec, RcvTimeoUsec uint64
	PassCred, PassSec         bool
	Priority, RcvLowat, Mark  uint32
	// Filter is the classic BPF socket filter (SO_ATTACH_FILTER), nil
	// when none.
	Filter []unix.SockFilter
}

// InetSocketState is an AF_INET or AF_INET6 socket: what CRIU's
// inet_sk_entry holds, and an established TCP connection's stream.
type InetSocketState struct {
	Ino      uint32
	Family   uint32 // AF_INET, AF_INET6
	Type     uint32 // SOCK_STREAM, SOCK_DGRAM, SOCK_RAW
	Proto    uint32 // IPPROTO_TCP, _MPTCP, _UDP, _UDPLITE, _ICMP, _ICMPV6 (ping); a raw socket's protocol
	State    uint32 // the kernel's TCP state (a datagram or raw socket: TCP_CLOSE or TCP_ESTABLISHED)
	Src, Dst netip.AddrPort
	Backlog  uint32 // of a listener
	V6Only   bool
	Shutdown uint32 // 1: receive shut down, 2: send shut down
	BindDev  string // SO_BINDTODEVICE, "" when none
	Opts     SocketOpts
	Inet     InetOpts
	// Stream is an established connection's TCP_REPAIR state
	// (--tcp-established); nil otherwise.
	Stream *TCPStream
}

// InetOpts are the socket options of inet sockets that a server sets,
// beyond SocketOpts.
type InetOpts struct {
	ReuseAddr, ReusePort, KeepAlive, Broadcast, OOBInline bool
	LingerOn                                              bool
	Linger                                                uint32
	Freebind                                              bool
	// Pktinfo: IP_PKTINFO (AF_INET) or IPV6_RECVPKTINFO (AF_INET6),
	// one image field as in CRIU's ip_opts_entry.
	Pktinfo  bool
	TOS, TTL uint32 // TTL 0: the default
	// TCP only.
	NoDelay, Cork                bool
	KeepIdle, KeepIntvl, KeepCnt uint32
	// Raw sockets only (nil otherwise): CRIU's ip_opts_raw_entry.
	Raw *RawOpts
}

// RawOpts are the options of a raw socket. HdrIncl is IP_HDRINCL or
// IPV6_HDRINCL; NoDefrag and Checksum are IP_NODEFRAG and IP_CHECKSUM
// (AF_INET only); ICMPFilter is ICMP_FILTER (one word, a raw IPPROTO_ICMP
// socket) or ICMPV6_FILTER (eight words, a raw IPPROTO_ICMPV6 socket),
// nil on other protocols.
type RawOpts struct {
	HdrIncl, NoDefrag, Checksum bool
	ICMPFilter                  []uint32
}

// TCPStream is an established TCP connection as TCP_REPAIR reads it:
// CRIU's tcp_stream_entry. InSeq is rcv_nxt and OutSeq write_seq, each
// counting a FIN received or sent.
type TCPStream struct {
	InSeq, OutSeq          uint32
	InQ, OutQ              []byte
	Unsent                 uint32
	OptMask                uint32 // TCPI_OPT_TIMESTAMPS, _SACK, _WSCALE
	SndWscale, RcvWscale   uint32
	MSSClamp, Timestamp    uint32
	HasWindow              bool
	SndWl1, SndWnd, MaxWnd uint32
	RcvWnd, RcvWup         uint32
}

// PipeState is an unnamed pipe end, or the contents of a named FIFO.
// The ends of one pipe share ID, Size and Data.
type PipeState struct {
	ID   uint64 // the pipe's inode
	Size uint32 // F_GETPIPE_SZ; 0 when unknown
	Data []byte // queued, unread
}

// EventFDState is an eventfd's counter and mode.
type EventFDState struct {
	Counter   uint64
	Semaphore bool
}

// SignalFDState is a signalfd's mask.
type SignalFDState struct {
	Mask uint64
}

// TimerFDState is a timerfd: its clock, the time left and interval, and
// the expirations not read yet.
type TimerFDState struct {
	Clock        int32
	Ticks        uint64
	SettimeFlags uint32
	ValueSec     uint64
	ValueNsec    uint64
	IntervalSec  uint64
	IntervalNsec uint64
	// Deadline is the absolute expiry of a CLOCK_REALTIME(_ALARM)
	// timer armed with TFD_TIMER_ABSTIME (nil otherwise): a wall-clock
	// time stays that time, however long the task was checkpointed.
	Deadline *unix.Timespec
}

// EpollState is every target registered in an epoll instance.
type EpollState struct {
	Targets []EpollTarget
}

// EpollTarget is one registration: the fd number it was added with (the
// same number in the owning task's table holds its file), the event mask
// and the user data.
type EpollTarget struct {
	FD     int
	File   ID
	Events uint32
	Data   uint64
}

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
	// External: the file was left out of the dump (--external
	// file[mnt_id:inode], CRIU's REG entry with ext); Path is that key,
	// and the restore takes the file from --inherit-fd fd[N]:KEY.
	External bool
	// Dev and Ino are the kernel identity the dumper dedupes on; codecs
	// need not keep them (0 when unknown).
	Dev, Ino uint64

	// The state of the kinds other than Path, set for that kind only.
	Pipe     *PipeState
	EventFD  *EventFDState
	SignalFD *SignalFDState
	TimerFD  *TimerFDState
	Epoll    *EpollState
	Unix     *UnixSocketState
	Netlink  *NetlinkSocketState
	Ghost    *GhostState
	Inotify  *InotifyState
	Inet     *InetSocketState
	Memfd    *MemfdState
	Tty      *TtyFile
	Pidfd    *PidfdState
	NS       *NamespaceState
	Fanotify *FanotifyState
	Tun      *TunState
	// Locks are the flock and OFD locks of the description.
	Locks []FileLock
	// Owner is who is sent the description's SIGIO and SIGURG
	// (F_SETOWN_EX) and with which signal (F_SETSIG); zero: nobody.
	Owner FileOwner
}

// FileOwner is a file's owner (struct fown_struct): the task, process or
// process group signalled (Pid in the tree, 0: none), the uid and euid of
// the task that set it (they decide whether the signal may be sent), and
// the signal (0: SIGIO).
type FileOwner struct {
	Type      int // F_OWNER_TID, F_OWNER_PID or F_OWNER_PGRP
	Pid       int
	UID, EUID uint32
	Signum    int
}

// NetlinkSocketState is an AF_NETLINK socket: CRIU's netlink_sk_entry.
type NetlinkSocketState struct {
	Ino      uint32
	Protocol uint32 // NETLINK_ROUTE, NETLINK_GENERIC, …
	// PortID is the bound port id, 0 when not bound.
	PortID uint32
	// Groups are the multicast groups joined, a bitmap in 32-bit words
	// (group g is bit (g-1)%32 of word (g-1)/32), as
	// NETLINK_LIST_MEMBERSHIPS reads it.
	Groups []uint32
	// DstPortID and DstGroup are the connect()ed destination (0, 0:
	// not connected).
	DstPortID, DstGroup uint32
	Opts                SocketOpts
}
