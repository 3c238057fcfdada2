// Package opts holds the options of a godwit run, named as in the CRIU manual
// (criu(8)), with the parsing of their argument syntaxes and the checks that
// span several options. The CLI fills an Options; the engine packages read it.
package opts

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
)

// Log levels of criu(8) -v0 .. -v4.
const (
	LogNone  = 0
	LogError = 1
	LogWarn  = 2 // CRIU's default
	LogInfo  = 3 // information and timestamps
	LogDebug = 4

	DefaultLogLevel = LogWarn
)

// DefaultGhostLimit is criu(8)'s default for --ghost-limit: 1 MiB.
const DefaultGhostLimit = 1 << 20

// Options is one command's configuration. Field names follow the long option
// names of criu(8).
type Options struct {
	// Common options.
	Verbosity    int
	LogFile      string
	LogPID       bool
	PidFile      string
	DisplayStats bool
	ImagesDir    string
	PrevImages   string
	WorkDir      string
	Close        []int
	LibDir       string
	ActionScript []string

	// Dump and pre-dump.
	Tree          int
	LeaveRunning  bool
	LeaveStopped  bool
	PageTransfer  string // godwit's --page-transfer: readv or vmsplice
	External      []External
	FreezeCgroup  string
	ManageCgroups string // "" when not given; mode otherwise
	CgroupProps   string
	CgroupPropsF  string
	CgroupDumpCtl []string
	CgroupRoot    []string
	TCPEstablish  bool
	SkipInFlight  bool
	TCPClose      bool
	EvasiveDevs   bool
	PageServer    bool
	Address       string
	Port          int
	PsSocket      int // --ps-socket: a connected socket to use instead of --address/--port; -1 when not given
	ForceIrmap    bool
	AutoDedup     bool
	FileLocks     bool
	LinkRemap     bool
	GhostLimit    uint64
	NoGhostFiemap bool // --no-ghost-fiemap
	ShellJob      bool
	ExtUnixSk     bool   // --ext-unix-sk: unix sockets whose peer is outside the tree
	CPUCap        string // "" when not given; checked by cpuinfo.ParseCaps
	LazyPages     bool
	TrackMem      bool

	// NetworkLock is --network-lock: nftables, iptables or skip (""
	// for the default, netlock.Default).
	NetworkLock string

	// FileValidation is how restore checks that the files it reopens are
	// the dumped ones (criu(8)'s --file-validation): FileValidationBuildID
	// (default) or FileValidationSize.
	FileValidation   string
	SkipFileRWXCheck bool

	// Restore.
	InheritFD      []InheritFD
	RestoreDetach  bool
	RestoreSibling bool
	Root           string
	VethPair       []string
	WeakSysctls    bool
	JoinNS         []string // --join-ns NS:PID|NS_FILE (internal/joinns)

	// Check.
	Extra        bool
	Experimental bool
	All          bool
	Feature      string

	// Page server and service.
	Daemon         bool
	StatusFD       int // -1 when not given
	Transport      string
	TLS            bool
	TLSCACert      string
	TLSCert        string
	TLSKey         string
	TLSNoCNVerify  bool
	TLSCACRL       string
	MetricsAddress string
	// Page server only: clients admitted by certificate identity, and the
	// bounds on what all sessions together may write (0: default).
	TLSAllowedClients []string
	MaxBytes          uint64
	MaxFiles          int
	// SingleSession: exit after the first session, as CRIU's page server.
	SingleSession bool
}

// The --file-validation modes of criu(8).
const (
	// FileValidationSize compares the size of every regular file.
	FileValidationSize = "filesize"
	// FileValidationBuildID also compares the ELF build-id of files that
	// had one at dump time (executables, libraries): a rebuilt library of
	// the same size is refused too. CRIU's default, and godwit's.
	FileValidationBuildID = "buildid"
)

// ParseFileValidation checks a --file-validation argument.
func ParseFileValidation(s string) (string, error) {
	switch s {
	case FileValidationSize, FileValidationBuildID:
		return s, nil
	}
	return "", fmt.Errorf("bad --file-validation %q: want %s or %s", s, FileValidationSize, FileValidationBuildID)
}

// New returns Options with criu(8)'s defaults.
func New() *Options {
	return &Options{
		FileValidation: FileValidationBuildID,
		Verbosity:      DefaultLogLevel,
		ImagesDir:      ".",
		GhostLimit:     DefaultGhostLimit,
		StatusFD:       -1,
		PsSocket:       -1,
	}
}

// WorkPath resolves a log, pid or stats file name the way criu(8) does:
// relative names are taken in the work dir (-W), which defaults to -D.
func (o *Options) WorkPath(name string) string {
	if filepath.IsAbs(name) {
		return name
	}
	dir := o.WorkDir
	if dir == "" {
		dir = o.ImagesDir
	}
	return filepath.Join(dir, name)
}

// ParseSize parses a --ghost-limit argument: a byte count with an optional
// K, M or G suffix (powers of 1024, as CRIU does).
func ParseSize(s string) (uint64, error) {
	if s == "" {
		return 0, errors.New("empty size")
	}
	mult := uint64(1)
	switch s[len(s)-1] {
	case 'K', 'k':
		mult = 1 << 10
	case 'M', 'm':
		mult = 1 << 20
	case 'G', 'g':
		mult = 1 << 30
	}
	num := s
	if mult != 1 {
		num = s[:len(s)-1]
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("bad size %q: want a number with an optional K, M or G suffix", s)
	}
	if n > ^uint64(0)/mult {
		return 0, fmt.Errorf("size %q overflows", s)
	}
	return n * mult, nil
}

// External is one --external type[id]:value argument.
type External struct {
	Type  string // mnt, dev, file, tty, unix, veth, macvlan
	ID    string // inside the brackets; may be empty (mnt[])
	Value string // after the colon; may be empty
}

func (e External) String() string {
	s := e.Type + "[" + e.ID + "]"
	if e.Value != "" {
		s += ":" + e.Value
	}
	return s
}

var externalTypes = map[string]bool{
	"mnt": true, "dev": true, "file": true, "tty": true, "unix": true,
	"veth": true, "macvlan": true,
}

// ParseExternal parses criu(8)'s --external syntax, type[id]:value.
func ParseExternal(s string) (External, error) {
	open := strings.IndexByte(s, '[')
	closeIdx := strings.IndexByte(s, ']')
	if open <= 0 || closeIdx < open {
		return External{}, fmt.Errorf("bad --external %q: want type[id]:value", s)
	}
	e := External{Type: s[:open], ID: s[open+1 : closeIdx]}
	if !externalTypes[e.Type] {
		return External{}, fmt.Errorf("bad --external %q: unknown type %q (want mnt, dev, file, tty, unix, veth or macvlan)", s, e.Type)
	}
	rest := s[closeIdx+1:]
	switch {
	case rest == "":
	case rest[0] == ':':
		e.Value = rest[1:]
	default:
		return External{}, fmt.Errorf("bad --external %q: junk %q after ']'", s, rest)
	}
	switch e.Type {
	case "file":
		if !hexPair(e.ID) {
			return External{}, fmt.Errorf("bad --external %q: want file[mnt_id:inode] in hex", s)
		}
	case "tty":
		if !hexPair(e.ID) {
			return External{}, fmt.Errorf("bad --external %q: want tty[rdev:dev] in hex", s)
		}
	case "dev":
		if e.Value == "" {
			return External{}, fmt.Errorf("bad --external %q: want dev[major/minor]:name or dev[name]:/dev/path", s)
		}
	case "mnt":
		if e.ID != "" && e.Value == "" {
			return External{}, fmt.Errorf("bad --external %q: want mnt[mountpoint]:name", s)
		}
	case "veth", "macvlan":
		if e.ID == "" || e.Value == "" {
			return External{}, fmt.Errorf("bad --external %q: want %s[inner_dev]:outer_dev", s, e.Type)
		}
	}
	return e, nil
}

// hexPair checks the A:B of tty[A:B]: st_rdev and st_dev in hex, as
// CRIU prints them.
func hexPair(s string) bool {
	a, b, ok := strings.Cut(s, ":")
	_, errA := strconv.ParseUint(a, 16, 64)
	_, errB := strconv.ParseUint(b, 16, 64)
	return ok && errA == nil && errB == nil
}

// InheritFD is one --inherit-fd fd[N]:resource argument.
type InheritFD struct {
	FD       int
	Resource string // tty[rdev:dev], pipe[inode], socket[inode], file[mnt_id:inode] or a path
}

// ParseInheritFD parses criu(8)'s --inherit-fd syntax.
func ParseInheritFD(s string) (InheritFD, error) {
	const usage = "want fd[N]:resource"
	if !strings.HasPrefix(s, "fd[") {
		return InheritFD{}, fmt.Errorf("bad --inherit-fd %q: %s", s, usage)
	}
	num, res, ok := strings.Cut(s[len("fd["):], "]:")
	if !ok || res == "" {
		return InheritFD{}, fmt.Errorf("bad --inherit-fd %q: %s", s, usage)
	}
	fd, err := strconv.Atoi(num)
	if err != nil || fd < 0 {
		return InheritFD{}, fmt.Errorf("bad --inherit-fd %q: fd %q is not a descriptor number", s, num)
	}
	for _, kind := range []string{"tty[", "pipe[", "socket[", "file["} {
		if !strings.HasPrefix(res, kind) {
			continue
		}
		inner, ok := strings.CutSuffix(res[len(kind):], "]")
		if !ok {
			return InheritFD{}, fmt.Errorf("bad --inherit-fd %q: unterminated %s...]", s, kind)
		}
		switch kind {
		case "tty[":
			if !hexPair(inner) {
				return InheritFD{}, fmt.Errorf("bad --inherit-fd %q: want tty[rdev:dev] in hex", s)
			}
		case "file[":
			if !hexPair(inner) {
				return InheritFD{}, fmt.Errorf("bad --inherit-fd %q: want file[mnt_id:inode] in hex", s)
			}
		default:
			if _, err := strconv.ParseUint(inner, 10, 64); err != nil {
				return InheritFD{}, fmt.Errorf("bad --inherit-fd %q: want %sinode]", s, kind)
			}
		}
	}
	return InheritFD{FD: fd, Resource: res}, nil
}

// Cgroup management modes of restore --manage-cgroups, as in criu(8).
var cgroupModes = []string{"none", "props", "soft", "full", "strict"}

// ParseManageCgroups checks a --manage-cgroups mode; empty means the default, soft.
func ParseManageCgroups(s string) (string, error) {
	if s == "" {
		return "soft", nil
	}
	for _, m := range cgroupModes {
		if s == m {
			return s, nil
		}
	}
	return "", fmt.Errorf("bad --manage-cgroups %q: want one of %s", s, strings.Join(cgroupModes, ", "))
}

// Validate checks the combinations criu(8) forbids for the given command.
func (o *Options) Validate(command string) error {
	if o.Verbosity < LogNone || o.Verbosity > LogDebug {
		// CRIU clamps higher levels; godwit does too, but negative is nonsense.
		if o.Verbosity < LogNone {
			return fmt.Errorf("bad verbosity %d", o.Verbosity)
		}
		o.Verbosity = LogDebug
	}
	switch command {
	case "dump", "pre-dump":
		if o.Tree <= 0 {
			return fmt.Errorf("%s needs a process: -t PID", command)
		}
		if o.LeaveRunning && o.LeaveStopped {
			return errors.New("--leave-running and --leave-stopped are mutually exclusive")
		}
		if o.PageServer && o.Address == "" && o.PsSocket < 0 {
			return errors.New("--page-server needs --address")
		}
		if o.PageServer && o.Port == 0 && o.PsSocket < 0 {
			return errors.New("--page-server needs --port")
		}
		if command == "pre-dump" && (o.LeaveStopped || o.LazyPages) {
			return errors.New("pre-dump always leaves the tasks running: --leave-stopped and --lazy-pages do not apply")
		}
	case "restore":
		if o.RestoreSibling && !o.RestoreDetach {
			return errors.New("--restore-sibling only makes sense with --restore-detached")
		}
	case "page-server", "service":
		if o.Daemon && o.StatusFD >= 0 {
			return errors.New("--daemon and --status-fd are mutually exclusive")
		}
		if o.LazyPages && o.PrevImages != "" {
			return errors.New("--lazy-pages serves a finished dump: --prev-images-dir does not apply")
		}
	case "check":
		if o.Feature != "" && (o.Extra || o.Experimental || o.All) {
			return errors.New("--feature checks one feature: it does not combine with --extra, --experimental or --all")
		}
	}
	if err := o.validatePsSocket(command); err != nil {
		return err
	}
	if (o.Port < 0) || (o.Port > 65535) {
		return fmt.Errorf("bad --port %d", o.Port)
	}
	// Without --tls-cacert etc., TLS uses criu(8)'s default files.
	switch o.Transport {
	case "", "tcp":
	case "quic":
	default:
		return fmt.Errorf("bad --transport %q: want tcp or quic", o.Transport)
	}
	if len(o.TLSAllowedClients) > 0 && !o.TLS && o.Transport != "quic" {
		return errors.New("--tls-allowed-client needs --tls or --transport quic")
	}
	if o.MaxFiles < 0 {
		return fmt.Errorf("bad --max-files %d", o.MaxFiles)
	}
	return nil
}

// validatePsSocket checks --ps-socket: only the page server and the
// dump's page client take a handed-over connection, with CRIU's plain
// framing, for one session each.
func (o *Options) validatePsSocket(command string) error {
	if o.PsSocket < 0 {
		return nil
	}
	switch command {
	case "dump", "pre-dump":
		if !o.PageServer {
			return errors.New("--ps-socket needs --page-server")
		}
	case "page-server":
		if o.Daemon {
			return errors.New("--ps-socket: the page server serves the socket in the foreground (use --status-fd, not --daemon)")
		}
		if o.MetricsAddress != "" {
			return errors.New("--ps-socket: a page server of one handed-over session has no --metrics-address")
		}
	default:
		return fmt.Errorf("--ps-socket: %s does not use a page server socket (only dump, pre-dump and page-server do)", command)
	}
	if o.LazyPages {
		return errors.New("--ps-socket with --lazy-pages is not supported")
	}
	if o.TLS || o.Transport == "quic" {
		return errors.New("--ps-socket carries CRIU's plain page-server framing: --tls and --transport quic do not apply")
	}
	return nil
}
