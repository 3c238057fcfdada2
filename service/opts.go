package service

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/checkpoint-restore/go-criu/v8/rpc"

	"godwit/internal/cpuinfo"
	"godwit/internal/opts"
)

// defaultLogFile is the log CRIU's service writes when the request names
// none (criu/include/criu-log.h: DEFAULT_LOG_FILENAME).
const defaultLogFile = "criu.log"

// rpcOption is one criu_opts field that has a criu(8) option: set reports
// whether the request sets it to something other than the default, apply
// copies it into the CLI's options.
type rpcOption struct {
	field, cli string
	set        func(*rpc.CriuOpts) bool
	apply      func(*rpc.CriuOpts, *opts.Options)
}

// rpcOptions are the criu_opts fields with a criu(8) option. A field that
// is set is refused when the CLI refuses its option for the command
// (Hooks.Unsupported): the RPC accepts exactly what the command line does.
var rpcOptions = []rpcOption{
	{"leave_running", "leave-running", (*rpc.CriuOpts).GetLeaveRunning, func(r *rpc.CriuOpts, o *opts.Options) { o.LeaveRunning = true }},
	{"leave_stopped", "leave-stopped", (*rpc.CriuOpts).GetLeaveStopped, func(r *rpc.CriuOpts, o *opts.Options) { o.LeaveStopped = true }},
	{"tcp_established", "tcp-established", (*rpc.CriuOpts).GetTcpEstablished, func(r *rpc.CriuOpts, o *opts.Options) { o.TCPEstablish = true }},
	{"tcp_skip_in_flight", "skip-in-flight", (*rpc.CriuOpts).GetTcpSkipInFlight, func(r *rpc.CriuOpts, o *opts.Options) { o.SkipInFlight = true }},
	{"tcp_close", "tcp-close", (*rpc.CriuOpts).GetTcpClose, func(r *rpc.CriuOpts, o *opts.Options) { o.TCPClose = true }},
	{"evasive_devices", "evasive-devices", (*rpc.CriuOpts).GetEvasiveDevices, func(r *rpc.CriuOpts, o *opts.Options) { o.EvasiveDevs = true }},
	{"shell_job", "shell-job", (*rpc.CriuOpts).GetShellJob, func(r *rpc.CriuOpts, o *opts.Options) { o.ShellJob = true }},
	{"file_locks", "file-locks", (*rpc.CriuOpts).GetFileLocks, func(r *rpc.CriuOpts, o *opts.Options) { o.FileLocks = true }},
	{"track_mem", "track-mem", (*rpc.CriuOpts).GetTrackMem, func(r *rpc.CriuOpts, o *opts.Options) { o.TrackMem = true }},
	{"auto_dedup", "auto-dedup", (*rpc.CriuOpts).GetAutoDedup, func(r *rpc.CriuOpts, o *opts.Options) { o.AutoDedup = true }},
	{"link_remap", "link-remap", (*rpc.CriuOpts).GetLinkRemap, func(r *rpc.CriuOpts, o *opts.Options) { o.LinkRemap = true }},
	{"force_irmap", "force-irmap", (*rpc.CriuOpts).GetForceIrmap, func(r *rpc.CriuOpts, o *opts.Options) { o.ForceIrmap = true }},
	{"rst_sibling", "restore-sibling", (*rpc.CriuOpts).GetRstSibling, func(r *rpc.CriuOpts, o *opts.Options) { o.RestoreSibling = true }},
	{"weak_sysctls", "weak-sysctls", (*rpc.CriuOpts).GetWeakSysctls, func(r *rpc.CriuOpts, o *opts.Options) { o.WeakSysctls = true }},
	{"lazy_pages", "lazy-pages", (*rpc.CriuOpts).GetLazyPages, func(r *rpc.CriuOpts, o *opts.Options) { o.LazyPages = true }},
	{"skip_file_rwx_check", "skip-file-rwx-check", (*rpc.CriuOpts).GetSkipFileRwxCheck, func(r *rpc.CriuOpts, o *opts.Options) { o.SkipFileRWXCheck = true }},
	{"display_stats", "display-stats", (*rpc.CriuOpts).GetDisplayStats, func(r *rpc.CriuOpts, o *opts.Options) { o.DisplayStats = true }},
	{"root", "root", func(r *rpc.CriuOpts) bool { return r.Root != nil }, func(r *rpc.CriuOpts, o *opts.Options) { o.Root = r.GetRoot() }},
	{"parent_img", "prev-images-dir", func(r *rpc.CriuOpts) bool { return r.ParentImg != nil }, func(r *rpc.CriuOpts, o *opts.Options) { o.PrevImages = r.GetParentImg() }},
	{"freeze_cgroup", "freeze-cgroup", func(r *rpc.CriuOpts) bool { return r.FreezeCgroup != nil }, func(r *rpc.CriuOpts, o *opts.Options) { o.FreezeCgroup = r.GetFreezeCgroup() }},
	{"cgroup_props", "cgroup-props", func(r *rpc.CriuOpts) bool { return r.CgroupProps != nil }, func(r *rpc.CriuOpts, o *opts.Options) { o.CgroupProps = r.GetCgroupProps() }},
	{"cgroup_props_file", "cgroup-props-file", func(r *rpc.CriuOpts) bool { return r.CgroupPropsFile != nil }, func(r *rpc.CriuOpts, o *opts.Options) { o.CgroupPropsF = r.GetCgroupPropsFile() }},
	{"cgroup_dump_controller", "cgroup-dump-controller", func(r *rpc.CriuOpts) bool { return len(r.CgroupDumpController) > 0 }, func(r *rpc.CriuOpts, o *opts.Options) {
		o.CgroupDumpCtl = append(o.CgroupDumpCtl, r.GetCgroupDumpController()...)
	}},
	{"manage_cgroups", "manage-cgroups", func(r *rpc.CriuOpts) bool { return r.GetManageCgroups() || r.ManageCgroupsMode != nil }, func(r *rpc.CriuOpts, o *opts.Options) {
		o.ManageCgroups = strings.TrimPrefix(strings.ToLower(r.GetManageCgroupsMode().String()), "cg_")
	}},
	{"cg_root", "cgroup-root", func(r *rpc.CriuOpts) bool { return len(r.CgRoot) > 0 }, func(r *rpc.CriuOpts, o *opts.Options) {
		for _, c := range r.GetCgRoot() {
			o.CgroupRoot = append(o.CgroupRoot, c.GetCtrl()+":"+c.GetPath())
		}
	}},
	{"veths", "veth-pair", func(r *rpc.CriuOpts) bool { return len(r.Veths) > 0 }, func(r *rpc.CriuOpts, o *opts.Options) {
		for _, v := range r.GetVeths() {
			o.VethPair = append(o.VethPair, v.GetIfIn()+"="+v.GetIfOut())
		}
	}},
	{"external", "external", func(r *rpc.CriuOpts) bool { return len(r.External) > 0 }, nil}, // parsed in options
	{"ext_unix_sk", "ext-unix-sk", (*rpc.CriuOpts).GetExtUnixSk, func(r *rpc.CriuOpts, o *opts.Options) { o.ExtUnixSk = true }},
	// CRIU's RPC names single outside peers by inode: --external unix[INO].
	{"unix_sk_ino", "external", func(r *rpc.CriuOpts) bool { return len(r.UnixSkIno) > 0 }, func(r *rpc.CriuOpts, o *opts.Options) {
		for _, u := range r.GetUnixSkIno() {
			o.External = append(o.External, opts.External{Type: "unix", ID: strconv.FormatUint(uint64(u.GetInode()), 10)})
		}
	}},
	{"inherit_fd", "inherit-fd", func(r *rpc.CriuOpts) bool { return len(r.InheritFd) > 0 }, nil},
	{"ghost_limit", "ghost-limit", func(r *rpc.CriuOpts) bool { return r.GhostLimit != nil && r.GetGhostLimit() != opts.DefaultGhostLimit }, func(r *rpc.CriuOpts, o *opts.Options) {
		o.GhostLimit = uint64(r.GetGhostLimit())
	}},
	{"cpu_cap", "cpu-cap", func(r *rpc.CriuOpts) bool { return r.CpuCap != nil }, func(r *rpc.CriuOpts, o *opts.Options) {
		o.CPUCap = cpuinfo.Caps(r.GetCpuCap()).String() // CRIU's bit values
	}},
	{"network_lock", "network-lock", func(r *rpc.CriuOpts) bool { return r.NetworkLock != nil }, func(r *rpc.CriuOpts, o *opts.Options) {
		o.NetworkLock = strings.ToLower(r.GetNetworkLock().String()) // IPTABLES, NFTABLES, SKIP
	}},
	{"tls", "tls", (*rpc.CriuOpts).GetTls, func(r *rpc.CriuOpts, o *opts.Options) { o.TLS = true }},
	{"tls_cacert", "tls-cacert", func(r *rpc.CriuOpts) bool { return r.TlsCacert != nil }, func(r *rpc.CriuOpts, o *opts.Options) { o.TLSCACert = r.GetTlsCacert() }},
	{"tls_cacrl", "tls-cacrl", func(r *rpc.CriuOpts) bool { return r.TlsCacrl != nil }, func(r *rpc.CriuOpts, o *opts.Options) { o.TLSCACRL = r.GetTlsCacrl() }},
	{"tls_cert", "tls-cert", func(r *rpc.CriuOpts) bool { return r.TlsCert != nil }, func(r *rpc.CriuOpts, o *opts.Options) { o.TLSCert = r.GetTlsCert() }},
	{"tls_key", "tls-key", func(r *rpc.CriuOpts) bool { return r.TlsKey != nil }, func(r *rpc.CriuOpts, o *opts.Options) { o.TLSKey = r.GetTlsKey() }},
	{"tls_no_cn_verify", "tls-no-cn-verify", (*rpc.CriuOpts).GetTlsNoCnVerify, func(r *rpc.CriuOpts, o *opts.Options) { o.TLSNoCNVerify = true }},
}

// unsupportedFields are criu_opts fields godwit has no option for at all:
// a request that sets one is refused, naming it (CRIU's option in
// parentheses).
var unsupportedFields = []struct {
	field, cli string
	set        func(*rpc.CriuOpts) bool
}{
	{"exec_cmd", "--exec-cmd", func(r *rpc.CriuOpts) bool { return len(r.ExecCmd) > 0 }},
	{"ext_mnt", "--ext-mount-map", func(r *rpc.CriuOpts) bool { return len(r.ExtMnt) > 0 || r.GetAutoExtMnt() }},
	{"ext_sharing", "--ext-sharing", func(r *rpc.CriuOpts) bool { return r.GetExtSharing() }},
	{"ext_masters", "--ext-masters", func(r *rpc.CriuOpts) bool { return r.GetExtMasters() }},
	{"skip_mnt", "--skip-mnt", func(r *rpc.CriuOpts) bool { return len(r.SkipMnt) > 0 }},
	{"enable_fs", "--enable-fs", func(r *rpc.CriuOpts) bool { return len(r.EnableFs) > 0 }},
	{"irmap_scan_paths", "--irmap-scan-path", func(r *rpc.CriuOpts) bool { return len(r.IrmapScanPaths) > 0 }},
	{"empty_ns", "--empty-ns", func(r *rpc.CriuOpts) bool { return r.GetEmptyNs() != 0 }},
	{"join_ns", "--join-ns", func(r *rpc.CriuOpts) bool { return len(r.JoinNs) > 0 }},
	{"timeout", "--timeout", func(r *rpc.CriuOpts) bool { return r.Timeout != nil }},
	{"status_fd", "--status-fd", func(r *rpc.CriuOpts) bool { return r.StatusFd != nil }},
	{"orphan_pts_master", "--orphan-pts-master", func(r *rpc.CriuOpts) bool { return r.GetOrphanPtsMaster() }},
	{"config_file", "--config", func(r *rpc.CriuOpts) bool { return r.ConfigFile != nil }},
	{"lsm_profile", "--lsm-profile", func(r *rpc.CriuOpts) bool { return r.LsmProfile != nil }},
	{"lsm_mount_context", "--lsm-mount-context", func(r *rpc.CriuOpts) bool { return r.LsmMountContext != nil }},
	{"cgroup_yard", "--cgroup-yard", func(r *rpc.CriuOpts) bool { return r.CgroupYard != nil }},
	{"pidfd_store_sk", "pidfd_store", func(r *rpc.CriuOpts) bool { return r.PidfdStoreSk != nil }},
	{"mntns_compat_mode", "--mntns-compat-mode", func(r *rpc.CriuOpts) bool { return r.GetMntnsCompatMode() }},
	{"unprivileged", "--unprivileged", func(r *rpc.CriuOpts) bool { return r.GetUnprivileged() }},
}

// errUnsupported names a field of criu_opts the request may not set.
func errUnsupported(field, cli string) error {
	return fmt.Errorf("criu_opts.%s (%s) is not supported yet", field, cli)
}

// mapOptions turns a request's criu_opts into the CLI's options for
// command (images and work directories aside, see Conn.options), refusing
// every field the CLI would refuse (unsupported(command, name)) and every
// field godwit has no option for.
func mapOptions(command string, r *rpc.CriuOpts, unsupported func(command, option string) bool) (*opts.Options, error) {
	o := opts.New()
	if r == nil {
		r = &rpc.CriuOpts{}
	}
	for _, f := range unsupportedFields {
		if f.set(r) {
			return nil, errUnsupported(f.field, f.cli)
		}
	}
	if r.PreDumpMode != nil && command != "pre-dump" {
		// CRIU reads it only in pre-dump.
		return nil, fmt.Errorf("criu_opts.pre_dump_mode: only for pre-dump")
	}
	if r.PreDumpMode != nil {
		return nil, errUnsupported("pre_dump_mode", "--pre-dump-mode")
	}
	for _, f := range rpcOptions {
		if !f.set(r) {
			continue
		}
		if unsupported == nil || unsupported(command, f.cli) {
			return nil, errUnsupported(f.field, "--"+f.cli)
		}
		if f.apply != nil {
			f.apply(r, o)
		}
	}
	for _, e := range r.GetExternal() {
		x, err := opts.ParseExternal(e)
		if err != nil {
			return nil, fmt.Errorf("criu_opts.external: %w", err)
		}
		o.External = append(o.External, x)
	}
	for _, in := range r.GetInheritFd() {
		x, err := opts.ParseInheritFD("fd[" + strconv.Itoa(int(in.GetFd())) + "]:" + in.GetKey())
		if err != nil {
			return nil, fmt.Errorf("criu_opts.inherit_fd: %w", err)
		}
		o.InheritFD = append(o.InheritFD, x)
	}
	if ps := r.GetPs(); ps != nil {
		if command == "dump" || command == "pre-dump" {
			if unsupported == nil || unsupported(command, "page-server") {
				return nil, errUnsupported("ps", "--page-server")
			}
			o.PageServer = true
		}
		o.Address = ps.GetAddress()
		o.Port = int(ps.GetPort())
	}
	o.Tree = int(r.GetPid())
	o.Verbosity = int(r.GetLogLevel())
	switch lf := r.GetLogFile(); {
	case strings.Contains(lf, "/") || lf == "." || lf == "..":
		return nil, fmt.Errorf("criu_opts.log_file %q: no subdirectories are allowed", lf)
	case r.GetLogToStderr() && r.LogFile == nil:
		o.LogFile = "-"
	case lf != "":
		o.LogFile = lf
	default:
		o.LogFile = defaultLogFile
	}
	return o, nil
}
