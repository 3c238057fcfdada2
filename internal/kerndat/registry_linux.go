package kerndat

import "errors"

// registry lists the features in the order they are probed. Names are
// CRIU's `criu check --feature` names where CRIU has one; CRIU's unnamed
// category 1 checks and godwit's own needs have godwit names.
var registry = []Feature{
	// Category 1: dump and restore cannot work without these.
	{"map_files", Required, "/proc/PID/map_files names and opens mapped files", probeMapFiles},
	{"sock_diag_unix", Required, "NETLINK_SOCK_DIAG dump of unix sockets", probeDiagUnix},
	{"sock_diag_inet", Required, "NETLINK_SOCK_DIAG dump of TCP/IPv4 sockets", probeDiagInet},
	{"ns_last_pid", Required, "/proc/sys/kernel/ns_last_pid is writable", probeNsLastPid},
	{"sock_peek_off", Required, "SO_PEEK_OFF socket option", probeSockPeekOff},
	{"kcmp", Required, "kcmp(KCMP_FILE, KCMP_VM)", probeKcmp},
	{"prctl", Required, "PR_GET_TID_ADDRESS and the PR_SET_MM_MAP_SIZE query", probePrctl},
	{"prctl_mm_map", Required, "PR_SET_MM_MAP sets a whole mm layout", probePrctlMMMap},
	{"fcntl_owner_uids", Required, "fcntl(F_GETOWNER_UIDS)", probeFcntlOwnerUIDs},
	{"proc_stat", Required, "/proc/PID/stat has the C/R fields", probeProcStat},
	{"tcp_repair", Required, "TCP_REPAIR on an established connection (queues, window)", probeTCPRepair},
	{"fdinfo_ext", Required, "eventfd/epoll/signalfd/inotify state in fdinfo", probeFdinfoExt},
	{"vmsplice", Required, "unaligned vmsplice with SPLICE_F_GIFT", probeVmsplice},
	{"tty", Required, "pty locking", probeTTY},
	{"so_gets", Required, "SO_GET_FILTER and SO_BINDTODEVICE readable", probeSoGets},
	{"ipc", Required, "SysV IPC *_next_id sysctls", probeIPC},
	{"sigqueueinfo", Required, "rt_sigqueueinfo to self with si_code > 0", probeSigqueueinfo},
	{"ptrace_seize", Required, "PTRACE_SEIZE + PTRACE_INTERRUPT + GETREGSET NT_PRSTATUS", probePtraceSeize},
	{"ptrace_xstate", Required, "PTRACE_GETREGSET NT_X86_XSTATE", probePtraceXstate},
	{"ptrace_peeksiginfo", Required, "PTRACE_PEEKSIGINFO and PTRACE_GETSIGMASK", probePeeksiginfo},
	{"process_vm_readv", Required, "process_vm_readv of another process", probeProcessVMReadv},
	{"pidfd_getfd", Required, "pidfd_open + pidfd_getfd of a child's fd", probePidfdGetfd},
	{"memfd", Required, "memfd_create, seals, shared mapping", probeMemfd},
	{"clone3_set_tid", Required, "clone3 with set_tid makes a chosen PID", probeClone3SetTID},

	// Category 2: needed by some process trees only.
	{"mem_dirty_track", Extra, "userfaultfd WP_ASYNC + PAGEMAP_SCAN dirty tracking", probeMemDirtyTrack},
	{"soft_dirty", Extra, "soft-dirty bits in pagemap (CONFIG_MEM_SOFT_DIRTY)", probeSoftDirty},
	{"uffd", Extra, "userfaultfd MISSING mode with UFFDIO_COPY/ZEROPAGE", probeUffd},
	{"uffd-noncoop", Extra, "userfaultfd non-cooperative events", probeUffdNonCoop},
	{"lazy_pages", Extra, "userfaultfd fault service for lazy restore", probeLazyPages},
	{"seccomp_suspend", Extra, "PTRACE_O_SUSPEND_SECCOMP", probeSeccompSuspend},
	{"seccomp_filters", Extra, "PTRACE_SECCOMP_GET_FILTER", probeSeccompFilters},
	{"get_rseq_conf", Extra, "PTRACE_GET_RSEQ_CONFIGURATION", probeRseqConf},
	{"posix_timers", Extra, "/proc/PID/timers", probePosixTimers},
	{"timerfd", Extra, "timerfd fdinfo and TFD_IOC_SET_TICKS", probeTimerfd},
	{"mnt_id", Extra, "mnt_id in fdinfo", probeMntID},
	{"fdinfo_lock", Extra, "file locks in fdinfo", probeFdinfoLock},
	{"aio_remap", Extra, "mremap of an AIO ring", probeAioRemap},
	{"can_map_vdso", Extra, "arch_prctl(ARCH_MAP_VDSO_64)", probeCanMapVdso},
	{"tcp_half_closed", Extra, "TCP_REPAIR on a half-closed connection", probeTCPHalfClosed},
	{"sock_diag_inet6", Extra, "NETLINK_SOCK_DIAG dump of TCP/IPv6 sockets", probeDiagInet6},
	{"sock_diag_netlink", Extra, "NETLINK_SOCK_DIAG dump of netlink sockets", probeDiagNetlink},
	{"sock_diag_packet", Extra, "NETLINK_SOCK_DIAG dump of packet sockets", probeDiagPacket},
	{"net_diag_raw", Extra, "NETLINK_SOCK_DIAG dump of raw IPv4/IPv6 sockets", probeDiagRaw},
	{"sk_ns", Extra, "SIOCGSKNS: a socket's network namespace", probeSkNs},
	{"sk_unix_file", Extra, "SIOCUNIXFILE: a unix socket's bound file", probeSkUnixFile},
	{"sockopt_buf_lock", Extra, "SO_BUF_LOCK", probeSockoptBufLock},
	{"tun", Extra, "/dev/net/tun devices", probeTun},
	{"tun_ns", Extra, "TUNGETDEVNETNS", probeTunNs},
	{"kcmp_epoll", Extra, "kcmp(KCMP_EPOLL_TFD)", probeKcmpEpoll},
	{"pidfd_store", Extra, "pidfd_open + pidfd_getfd", probePidfdGetfd},
	{"namespaces", Extra, "new mnt/uts/ipc/net/pid/cgroup/user/time namespaces and nsfs ioctls", probeNamespaces},
	{"userns", Extra, "user namespaces", probeUserns},
	{"cgroupns", Extra, "cgroup namespaces", probeCgroupns},
	{"timens", Extra, "time namespaces", probeTimens},
	{"ns_pid", Extra, "NSpid in /proc/PID/status", probeNsPid},
	{"freezer_cgroup_v2", Extra, "cgroup v2 cgroup.freeze", probeFreezerV2},
	{"freezer_cgroup_v1", Extra, "cgroup v1 freezer controller", probeFreezerV1},
	{"memfd_hugetlb", Extra, "memfd_create(MFD_HUGETLB)", probeMemfdHugetlb},
	{"openat2", Extra, "openat2", probeOpenat2},
	{"move_mount_set_group", Extra, "move_mount(MOVE_MOUNT_SET_GROUP)", probeMoveMountSetGroup},

	// Category 3: experimental.
	{"autofs", Experimental, "autofs mounts expose pipe_ino", probeAutofs},
	{"compat_cr", Experimental, "checkpoint/restore of 32-bit tasks", probeCompatCR},
}

// probeCompatCR: godwit itself has no support for 32-bit (compat) tasks,
// whatever the kernel offers, so it says so.
func probeCompatCR() error {
	return errors.New("godwit does not checkpoint or restore 32-bit (compat) tasks")
}
