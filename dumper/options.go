package dumper

import (
	"errors"

	"godwit/internal/drivers"
	"godwit/internal/netlock"
	"godwit/pageserver"
)

// Options are what one dump needs; cmd/godwit and the RPC service map
// their own options onto them (internal/engineopts).
type Options struct {
	Pid       int    // the task to dump
	ImagesDir string // where the images go
	WorkDir   string // where stats-dump also goes ("": ImagesDir only)
	// After a successful dump the task is killed, unless LeaveRunning
	// or LeaveStopped.
	LeaveRunning, LeaveStopped bool
	// FreezeCgroup freezes the task through this cgroup first ("": by
	// ptrace only).
	FreezeCgroup string
	// CPUCap is the --cpu-cap argument: cpuinfo.img is written unless it
	// is "" or names no capability.
	CPUCap string
	// PageServer sends the pages to a page server instead of ImagesDir.
	PageServer *PageServer
	// Method is how pages leave the target (zero: MethodReadv, see
	// Method).
	Method Method
	// PrevImagesDir links the parent images (--prev-images-dir, relative
	// to ImagesDir or absolute); with TrackMem, only the pages changed
	// since that pre-dump round are saved (see PreDump).
	PrevImagesDir string
	TrackMem      bool
	// AutoDedup punches the parent images' pages this dump replaces.
	AutoDedup bool
	// GhostLimit is the largest deleted file whose contents the images
	// carry (0: opts.DefaultGhostLimit).
	GhostLimit uint64
	// FD are the options for files not saved as they are by default
	// (--link-remap, --evasive-devices, --force-irmap, --external file[]).
	FD drivers.FDOptions
	// FileLocks dumps the file locks the tree holds (--file-locks);
	// without it a lock fails the dump.
	FileLocks bool
	// NetworkLock is how the tree's connections are locked while it is
	// dumped and until they are restored ("": netlock.Default).
	NetworkLock netlock.Method
	// UnlockKilled removes the lock of the connections (not a whole
	// namespace's) once the dump killed the tree, rather than keeping it
	// for a restore: the tree's copies closed in repair mode, silently,
	// and the restore runs on another host (migrate post-copy), so
	// nothing here would remove a kept lock should godwit die next.
	UnlockKilled bool
	// TCPEstablished dumps established TCP connections (--tcp-established);
	// SkipInFlight leaves out connections not accepted yet
	// (--skip-in-flight).
	TCPEstablished, SkipInFlight bool
	// ShellJob allows a tty whose master, or a controlling terminal
	// whose session leader, is outside the tree (--shell-job).
	ShellJob bool
	// ExtUnixSk allows unix sockets whose peer is outside the tree
	// (--ext-unix-sk); ExtUnix the sockets (either end's inode) allowed
	// one by one (--external unix[INO]).
	ExtUnixSk bool
	ExtUnix   []uint32
	// ExtTTY are the ttys left out of the dump, by st_rdev and st_dev
	// (--external tty[rdev:dev]); the restore is given them
	// (--inherit-fd fd[N]:tty[rdev:dev]).
	ExtTTY [][2]uint64
	// Hold, if set, is bound to the frozen tree during the dump: the
	// post-dump script may tie the tree's life to this process with it.
	Hold *Hold
	// Admit, if set, is called with the pids of the tree (zombies too)
	// once it is frozen, before anything of it is read: its error fails
	// the dump and the tree resumes. (The RPC service checks there that
	// its client may dump every task.)
	Admit func(pids []int) error
}

// Hold lets a post-dump script (a migration's switch-over) have the kernel
// kill the frozen tree if this process dies before the dump ends, instead
// of letting it run on detached.
type Hold struct{ killOnExit func(bool) error }

// KillOnExit sets (on) or clears that binding.
func (h *Hold) KillOnExit(on bool) error {
	if h == nil || h.killOnExit == nil {
		return errors.New("dump: no frozen tree to hold")
	}
	return h.killOnExit(on)
}

// PageServer is where a page server listens and how to talk to it.
type PageServer struct {
	Addr      string // host:port
	Transport pageserver.TransportOptions
	// Socket is used when Addr is empty: a connected stream socket the
	// caller handed over (CRIU's --ps-socket FD, criu_opts.ps.fd), which
	// the dump does not close; its session ends with FORCE_CLOSE.
	Socket int
}

// ParseMethod parses a Method's name ("vmsplice" or "readv").
func ParseMethod(s string) (Method, bool) {
	switch s {
	case "vmsplice":
		return MethodVmsplice, true
	case "readv":
		return MethodReadv, true
	}
	return 0, false
}
