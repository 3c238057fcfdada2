package main

import (
	"fmt"
	"strings"

	"github.com/spf13/pflag"

	"godwit/internal/cpuinfo"
	"godwit/internal/joinns"
	"godwit/internal/netlock"
	"godwit/internal/opts"
)

// The option groups of criu(8). Each function registers one group on a flag
// set; commands combine the groups they accept.

func commonFlags(fs *pflag.FlagSet, o *opts.Options) {
	v := fs.VarPF(verbosity{&o.Verbosity}, "verbosity", "v", "log level 0-4 (-v, -vv, -v4, --verbosity=N)")
	v.NoOptDefVal = "+1"
	fs.StringVar(&o.PidFile, "pidfile", "", "write the root task, service or page-server pid into `file`")
	fs.StringVarP(&o.LogFile, "log-file", "o", "", "write log messages to `file` (relative to -W)")
	fs.BoolVar(&o.LogPID, "log-pid", false, "write a separate log file per pid")
	fs.BoolVar(&o.DisplayStats, "display-stats", false, "print dump or restore statistics at the end")
	fs.StringVarP(&o.ImagesDir, "images-dir", "D", ".", "directory of image files")
	fs.StringVar(&o.PrevImages, "prev-images-dir", "", "`path` of the parent images (incremental dumps)")
	fs.StringVarP(&o.WorkDir, "work-dir", "W", "", "`dir` for logs, pidfiles and statistics (default: -D)")
	fs.Var(intListValue(&o.Close), "close", "close file descriptor `fd` before anything else")
	fs.StringVarP(&o.LibDir, "libdir", "L", "", "`path` to the plugins directory")
	fs.Var(stringListValue(&o.ActionScript, "script", nil), "action-script", "run `script` at each action point (CRTOOLS_SCRIPT_ACTION)")
}

// treeFlags are the options shared by dump and pre-dump.
func treeFlags(fs *pflag.FlagSet, o *opts.Options) {
	fs.IntVarP(&o.Tree, "tree", "t", 0, "checkpoint the process tree rooted at `pid`")
	fs.Var(&listValue[opts.External]{p: &o.External, parse: opts.ParseExternal, typ: "type[id]:value"}, "external", "dump an external resource: mnt[mountpoint]:name, mnt[]:flags, dev[major/minor]:name, file[mnt_id:inode], tty[rdev:dev], unix[id]")
	fs.StringVar(&o.FreezeCgroup, "freeze-cgroup", "", "freeze the tree through the cgroup freezer at `path`")
	manageCgroupsFlag(fs, o)
	fs.StringVar(&o.CgroupProps, "cgroup-props", "", "controllers and properties to save, in criu(8)'s YAML `spec`")
	fs.StringVar(&o.CgroupPropsF, "cgroup-props-file", "", "read --cgroup-props from `file`")
	fs.Var(stringListValue(&o.CgroupDumpCtl, "name", nil), "cgroup-dump-controller", "dump only controller `name`")
	cgroupRootFlag(fs, o)
	fs.BoolVar(&o.TCPEstablish, "tcp-established", false, "checkpoint established TCP connections")
	fs.BoolVar(&o.SkipInFlight, "skip-in-flight", false, "skip TCP connections that are not yet established")
	fs.BoolVar(&o.TCPClose, "tcp-close", false, "restore connected TCP sockets in closed state")
	networkLockFlag(fs, o)
	fs.BoolVar(&o.EvasiveDevs, "evasive-devices", false, "use any path to a device file if the original is inaccessible")
	fs.BoolVar(&o.ForceIrmap, "force-irmap", false, "force resolving names of inotify and fsnotify watches")
	fs.BoolVar(&o.AutoDedup, "auto-dedup", false, "deduplicate old data in the parent's pages images")
	fs.BoolVarP(&o.FileLocks, "file-locks", "l", false, "dump file locks")
	fs.BoolVar(&o.LinkRemap, "link-remap", false, "link unlinked files back if possible")
	fs.Var(sizeValue{&o.GhostLimit}, "ghost-limit", "largest deleted file carried in the images (K, M, G suffixes)")
	ghostFiemapFlag(fs, o)
	fs.BoolVarP(&o.ShellJob, "shell-job", "j", false, "allow dumping shell jobs")
	fs.BoolVar(&o.ExtUnixSk, "ext-unix-sk", false, "allow unix sockets whose peer is outside the tree")
	cpuCapFlag(fs, o)
	fileValidationFlag(fs, o)
	fs.BoolVar(&o.TrackMem, "track-mem", false, "turn on the memory changes tracker")
	pageServerClientFlags(fs, o)
}

// pageServerClientFlags are --page-server with the server's address, port
// and transport.
func pageServerClientFlags(fs *pflag.FlagSet, o *opts.Options) {
	fs.BoolVar(&o.PageServer, "page-server", false, "send pages to (or, for lazy-pages, fetch them from) a page server")
	addressFlags(fs, o)
	transportFlags(fs, o)
}

func addressFlags(fs *pflag.FlagSet, o *opts.Options) {
	fs.StringVar(&o.Address, "address", "", "page server `address`")
	fs.IntVar(&o.Port, "port", 0, "page server port `number`")
	fs.IntVar(&o.PsSocket, "ps-socket", -1, "use the connected socket `FD` for page-server traffic instead of --address and --port")
}

func manageCgroupsFlag(fs *pflag.FlagSet, o *opts.Options) {
	f := fs.VarPF(parsedString{&o.ManageCgroups, opts.ParseManageCgroups, "mode"}, "manage-cgroups", "", "dump or restore cgroups: none, props, soft (default), full, strict")
	f.NoOptDefVal = "soft"
}

func cgroupRootFlag(fs *pflag.FlagSet, o *opts.Options) {
	fs.Var(stringListValue(&o.CgroupRoot, "[controller:]/newroot", func(s string) error {
		_, root, found := strings.Cut(s, ":")
		if !found {
			root = s
		}
		if !strings.HasPrefix(root, "/") {
			return fmt.Errorf("want [controller:]/newroot")
		}
		return nil
	}), "cgroup-root", "change the root cgroup of a controller")
}

// networkLockFlag is criu(8)'s --network-lock: how the tree's connections
// are locked while it is dumped and until they are restored.
func networkLockFlag(fs *pflag.FlagSet, o *opts.Options) {
	parse := func(s string) (string, error) {
		if s == "" {
			return "", fmt.Errorf("want iptables, nftables or skip")
		}
		m, err := netlock.ParseMethod(s)
		return string(m), err
	}
	fs.Var(parsedString{&o.NetworkLock, parse, "method"}, "network-lock", "lock the network with nftables (default), iptables, or skip locking")
}

func cpuCapFlag(fs *pflag.FlagSet, o *opts.Options) {
	check := func(s string) (string, error) {
		_, err := cpuinfo.ParseCaps(s)
		return s, err
	}
	f := fs.VarPF(parsedString{&o.CPUCap, check, "cap[,cap...]"}, "cpu-cap", "", "CPU capabilities: all, cpu, fpu, ins, none (^ negates)")
	f.NoOptDefVal = "all"
}

// fileValidationFlag is criu(8)'s --file-validation. A dump records both
// the size and the build-id of every file it may reopen, so the mode
// chooses what restore compares.
func fileValidationFlag(fs *pflag.FlagSet, o *opts.Options) {
	fs.Var(parsedString{&o.FileValidation, opts.ParseFileValidation, "mode"}, "file-validation",
		"check reopened files by filesize, or by ELF build-id where they have one and size (buildid, the default)")
}

func dumpOnlyFlags(fs *pflag.FlagSet, o *opts.Options) {
	fs.BoolVarP(&o.LeaveRunning, "leave-running", "R", false, "leave the tasks running after the dump")
	fs.BoolVarP(&o.LeaveStopped, "leave-stopped", "s", false, "leave the tasks stopped after the dump")
	fs.BoolVar(&o.LazyPages, "lazy-pages", false, "dump without writing memory; serve it to a lazy-pages daemon")
	fs.StringVar(&o.PageTransfer, "page-transfer", "", "how pages leave the task: readv (default: process_vm_readv, no injected call during the transfer) or vmsplice (injected vmsplice per batch)")
}

func restoreFlags(fs *pflag.FlagSet, o *opts.Options) {
	fs.Var(&listValue[opts.InheritFD]{p: &o.InheritFD, parse: opts.ParseInheritFD, typ: "fd[N]:resource"}, "inherit-fd", "use open descriptor N for resource: tty[rdev:dev], pipe[inode], socket[inode], file[mnt_id:inode] or a path")
	fs.BoolVarP(&o.RestoreDetach, "restore-detached", "d", false, "detach once the restore is complete")
	fs.BoolVarP(&o.LeaveStopped, "leave-stopped", "s", false, "leave the tasks stopped after the restore")
	fs.BoolVarP(&o.RestoreSibling, "restore-sibling", "S", false, "restore the root task as a sibling (with -d)")
	fs.StringVarP(&o.Root, "root", "r", "", "change the root filesystem to `path`")
	fs.Var(&listValue[opts.External]{p: &o.External, parse: opts.ParseExternal, typ: "type[id]:value"}, "external", "restore an external resource: mnt[name]:mountpoint, mnt[], dev[name]:/dev/path, veth[inner]:outer@bridge, macvlan[inner]:outer")
	manageCgroupsFlag(fs, o)
	cgroupRootFlag(fs, o)
	fs.BoolVar(&o.TCPEstablish, "tcp-established", false, "restore established TCP connections")
	fs.BoolVar(&o.TCPClose, "tcp-close", false, "restore connected TCP sockets in closed state")
	networkLockFlag(fs, o)
	fs.Var(stringListValue(&o.VethPair, "IN=OUT", func(s string) error {
		if in, out, ok := strings.Cut(s, "="); !ok || in == "" || out == "" {
			return fmt.Errorf("want IN=OUT")
		}
		return nil
	}), "veth-pair", "outside name OUT of the veth device IN")
	fs.BoolVarP(&o.FileLocks, "file-locks", "l", false, "restore file locks")
	fs.BoolVar(&o.AutoDedup, "auto-dedup", false, "punch restored pages out of the images")
	fs.BoolVarP(&o.ShellJob, "shell-job", "j", false, "inherit session and process group from godwit")
	cpuCapFlag(fs, o)
	fileValidationFlag(fs, o)
	fs.BoolVar(&o.SkipFileRWXCheck, "skip-file-rwx-check", false, "do not refuse files whose permission bits changed since the dump")
	fs.BoolVar(&o.WeakSysctls, "weak-sysctls", false, "skip sysctls this kernel does not have")
	fs.BoolVar(&o.LazyPages, "lazy-pages", false, "restore without filling memory; a lazy-pages daemon serves it")
	fs.Var(&listValue[string]{p: &o.JoinNS, parse: func(s string) (string, error) { _, err := joinns.Parse(s); return s, err }, typ: "NS:PID|NS_FILE"},
		"join-ns", "restore into an existing namespace: net, uts or ipc, of task PID or from NS_FILE (e.g. net:/run/netns/NAME)")
}

func checkFlags(fs *pflag.FlagSet, o *opts.Options) {
	fs.BoolVar(&o.Extra, "extra", false, "check category 2 features too")
	fs.BoolVar(&o.Experimental, "experimental", false, "check category 3 features too")
	fs.BoolVar(&o.All, "all", false, "check categories 1, 2 and 3")
	fs.StringVar(&o.Feature, "feature", "", "check one feature `name` (\"list\" lists them)")
}

func daemonFlags(fs *pflag.FlagSet, o *opts.Options) {
	fs.BoolVar(&o.Daemon, "daemon", false, "run as a daemon in the background")
	fs.IntVar(&o.StatusFD, "status-fd", -1, "write \\0 to `FD` and close it once ready")
}

func pageServerFlags(fs *pflag.FlagSet, o *opts.Options) {
	daemonFlags(fs, o)
	addressFlags(fs, o)
	fs.BoolVar(&o.LazyPages, "lazy-pages", false, "serve a local dump to a remote lazy-pages daemon")
	fs.StringVar(&o.MetricsAddress, "metrics-address", "", "serve Prometheus metrics on http://`host:port`/metrics")
	transportFlags(fs, o)
	fs.StringArrayVar(&o.TLSAllowedClients, "tls-allowed-client", nil, "admit only clients whose certificate names `identity` (CN or DNS name; repeatable)")
	fs.Var(sizeValue{&o.MaxBytes}, "max-bytes", "stop accepting pages once all sessions wrote `size` bytes of pages and pagemap entries (K/M/G suffixes; 0: no bound)")
	fs.IntVar(&o.MaxFiles, "max-files", 0, "create at most `n` image files (0: 16384)")
	fs.BoolVar(&o.SingleSession, "single-session", false, "exit after the first session (CRIU's page server does; the RPC's page servers do)")
}

// transportFlags choose how page-server traffic travels: CRIU's TLS options,
// and godwit's QUIC transport (always mutual TLS).
func transportFlags(fs *pflag.FlagSet, o *opts.Options) {
	fs.StringVar(&o.Transport, "transport", "tcp", "page-server transport: tcp (CRIU's) or quic (mutual TLS)")
	fs.BoolVar(&o.TLS, "tls", false, "use TLS on the TCP transport")
	fs.StringVar(&o.TLSCACert, "tls-cacert", "", "CA certificate `file` (PEM) that signs the peer's certificate (default /etc/pki/CA/cacert.pem)")
	fs.StringVar(&o.TLSCert, "tls-cert", "", "this host's certificate `file` (PEM; default /etc/pki/criu/cert.pem)")
	fs.StringVar(&o.TLSKey, "tls-key", "", "this host's private key `file` (PEM; default /etc/pki/criu/private/key.pem)")
	fs.BoolVar(&o.TLSNoCNVerify, "tls-no-cn-verify", false, "do not check the server's name against its certificate")
	fs.StringVar(&o.TLSCACRL, "tls-cacrl", "", "certificate revocation list `file` (PEM or DER) signed by the CA")
}
