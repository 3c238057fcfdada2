package restorer

import (
	"io"

	"godwit/internal/netlock"
)

// Options are what one restore needs; cmd/godwit and the RPC service map
// their own options onto them (internal/engineopts), refusing what the
// engine cannot do.
type Options struct {
	ImagesDir string // the dump to restore
	WorkDir   string // where stats-restore also goes ("": ImagesDir only)
	// Detach: the caller will not Wait; the parent-death signal, which
	// would fire when godwit exits, is not restored.
	Detach bool
	// LeaveStopped leaves the task stopped (SIGSTOP) after Resume.
	LeaveStopped bool
	// ShellJob restores the task into godwit's session and process
	// group instead of its own.
	ShellJob bool
	// RestoreSibling makes the root task a sibling of godwit (its parent
	// is godwit's parent), as runc needs; godwit cannot wait for it.
	RestoreSibling bool
	// CPUCap is the --cpu-cap argument: "" checks the dump's cpuinfo.img
	// (if any) with CRIU's default modes.
	CPUCap string
	// Stats, if not nil, receives the restore statistics as
	// --display-stats prints them.
	Stats io.Writer
	// PageMethod is how FillPages writes pages.
	PageMethod PageMethod
	// FileValidation is how reopened files are checked against the
	// dump: FileValidationBuildID (also the default, "") or
	// FileValidationFilesize (criu(8)'s --file-validation); see
	// validateFiles.
	FileValidation string
	// SkipFileRWXCheck skips comparing reopened files' permission bits.
	SkipFileRWXCheck bool
	// InheritFD gives files of the tree godwit's own descriptors
	// (--inherit-fd), by resource (drivers.InheritKey).
	InheritFD map[string]int
	// AutoDedup punches the restored pages out of the images (and their
	// parents) once the task runs (criu(8)'s --auto-dedup).
	AutoDedup bool
	// LazyPages leaves the pages of lazy VMAs (lazyVMA) out and hands
	// them, registered with a userfaultfd, to the lazy-pages daemon
	// listening on LazySocketName in WorkDir (or ImagesDir).
	LazyPages bool
	// LazyReady, if set, is waited for before the lazy VMAs are handed
	// over (the daemon listens once it returns nil): a caller may start
	// the daemon alongside the restore.
	LazyReady func() error
	// NetworkLock is --network-lock: a lock the dump kept (its record in
	// the images) is removed once the connections are restored, or when
	// the restore fails; Skip leaves it alone.
	NetworkLock netlock.Method
	// TCPEstablished restores established TCP connections with
	// TCP_REPAIR; TCPClose restores them closed (criu(8)'s
	// --tcp-established, --tcp-close).
	TCPEstablished, TCPClose bool
	// JoinedNS are the kinds of namespace ("uts", "ipc", "net") godwit
	// joined for the restore (--join-ns): the tree is restored in those,
	// not in new ones made from the dump.
	JoinedNS []string
}

// FileValidation modes (criu(8)'s --file-validation).
const (
	// FileValidationFilesize compares type, size and permission bits.
	FileValidationFilesize = "filesize"
	// FileValidationBuildID also compares the ELF build-id of files that
	// had one at dump time.
	FileValidationBuildID = "buildid"
)
