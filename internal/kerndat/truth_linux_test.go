package kerndat

import (
	"bufio"
	"compress/gzip"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
)

// The tests below do not describe one machine: for each feature they derive
// what the kernel has by another route than the probe (the kernel's build
// configuration, smaps flags, device nodes) and check the probe agrees.

// kconfig reads /proc/config.gz once; nil when the kernel does not export
// its configuration.
var kconfig = sync.OnceValue(func() map[string]string {
	f, err := os.Open("/proc/config.gz")
	if err != nil {
		return nil
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		return nil
	}
	m := map[string]string{}
	sc := bufio.NewScanner(z)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok && strings.HasPrefix(k, "CONFIG_") {
			m[k] = v
		}
	}
	if sc.Err() != nil {
		return nil
	}
	return m
})

// configSays reports whether every option is built in or a module; known
// is false when the configuration cannot be read.
func configSays(opts ...string) (on, known bool) {
	c := kconfig()
	if c == nil {
		return false, false
	}
	for _, o := range opts {
		if v := c[o]; v != "y" && v != "m" {
			return false, true
		}
	}
	return true, true
}

// featureConfig names the build options a feature's kernel side needs.
var featureConfig = map[string][]string{
	"net_diag_raw":      {"CONFIG_INET_DIAG", "CONFIG_INET_RAW_DIAG"},
	"sock_diag_inet6":   {"CONFIG_INET_DIAG", "CONFIG_IPV6"},
	"sock_diag_netlink": {"CONFIG_NETLINK_DIAG"},
	"sock_diag_packet":  {"CONFIG_PACKET_DIAG"},
	"tun":               {"CONFIG_TUN"},
	"tun_ns":            {"CONFIG_TUN"},
	"userns":            {"CONFIG_USER_NS"},
	"timens":            {"CONFIG_TIME_NS"},
	"cgroupns":          {"CONFIG_CGROUPS"},
	"freezer_cgroup_v1": {"CONFIG_CGROUP_FREEZER"},
	"memfd_hugetlb":     {"CONFIG_HUGETLBFS"},
	"seccomp_suspend":   {"CONFIG_SECCOMP_FILTER", "CONFIG_CHECKPOINT_RESTORE"},
	"seccomp_filters":   {"CONFIG_SECCOMP_FILTER", "CONFIG_CHECKPOINT_RESTORE"},
	"aio_remap":         {"CONFIG_AIO"},
	"timerfd":           {"CONFIG_TIMERFD"},
	"posix_timers":      {"CONFIG_POSIX_TIMERS", "CONFIG_CHECKPOINT_RESTORE"},
	"autofs":            {"CONFIG_AUTOFS_FS"},
	"soft_dirty":        {"CONFIG_MEM_SOFT_DIRTY"},
}

// softDirtyTruth: with CONFIG_MEM_SOFT_DIRTY the kernel marks new mappings
// VM_SOFTDIRTY and smaps prints "sd" in VmFlags; without it, never.
func softDirtyTruth(t *testing.T) bool {
	t.Helper()
	es, err := procfs.ReadSmaps(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if e.HasFlag("sd") {
			return true
		}
	}
	return false
}

// tunTruth: /dev/net/tun is the misc device 10:200 and opens read-write.
func tunTruth(t *testing.T) bool {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat("/dev/net/tun", &st); err != nil {
		return false
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(st.Rdev) != 10 || unix.Minor(st.Rdev) != 200 {
		t.Fatalf("/dev/net/tun is not the tun device (mode %#o rdev %d:%d)", st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// expected says whether f must be reported supported here, and why. ok is
// false when nothing independent can tell (the result is then logged).
func expected(t *testing.T, f Feature) (want bool, why string, ok bool) {
	t.Helper()
	if c, has := needs[f.Name]; has && !c.Built {
		return false, "godwit's " + c.Name + " is not built", true
	}
	switch f.Name {
	case "compat_cr":
		return false, "godwit has no 32-bit task support", true
	case "tun", "tun_ns":
		w := tunTruth(t)
		if on, known := configSays("CONFIG_TUN"); known && on != w {
			t.Fatalf("CONFIG_TUN=%v but /dev/net/tun usable=%v", on, w)
		}
		return w, "/dev/net/tun usable", true
	}
	if opts, has := featureConfig[f.Name]; has {
		on, known := configSays(opts...)
		if known {
			return on, "kernel config " + strings.Join(opts, "+"), true
		}
		return false, "", false
	}
	// Everything else is in every kernel godwit supports (the category 1
	// features dump and restore cannot do without, and syscalls and procfs
	// fields older than Linux 6.1 with no build option of their own).
	return true, "mainline since before Linux 6.1", true
}

func TestProbesAgreeWithKernel(t *testing.T) {
	needRoot(t)
	for _, f := range All() {
		t.Run(f.Name, func(t *testing.T) {
			r := f.Probe()
			want, why, ok := expected(t, f)
			if !ok {
				t.Logf("nothing independent to compare with (no /proc/config.gz); probe says %v", r.Err)
				return
			}
			if r.OK() != want {
				t.Fatalf("probe says supported=%v (%v), but %s says %v", r.OK(), r.Err, why, want)
			}
		})
	}
}

func TestSoftDirtyAgrees(t *testing.T) {
	needRoot(t)
	truth := softDirtyTruth(t)
	if on, known := configSays("CONFIG_MEM_SOFT_DIRTY"); known && on != truth {
		t.Fatalf("CONFIG_MEM_SOFT_DIRTY=%v but smaps sd flag seen=%v", on, truth)
	}
	// The kernel side, without the pre-dump gate.
	err := probeSoftDirty()
	if (err == nil) != truth {
		t.Fatalf("soft-dirty probe: %v; smaps says soft-dirty is %v", err, truth)
	}
	if !truth && !strings.Contains(err.Error(), "CONFIG_MEM_SOFT_DIRTY is off") {
		t.Errorf("soft-dirty probe error does not name the option: %v", err)
	}
	// Through the registry it is gated on pre-dump, kernel or not.
	r, _ := Probe("soft_dirty")
	var nb *NotBuiltError
	if r.OK() || errors.As(r.Err, &nb) != truth {
		t.Fatalf("soft_dirty: %v (kernel has it: %v)", r.Err, truth)
	}
}

func TestTunAgrees(t *testing.T) {
	needRoot(t)
	truth := tunTruth(t)
	for _, n := range []string{"tun", "tun_ns"} {
		if r, _ := Probe(n); r.OK() != truth {
			t.Errorf("%s: %v; /dev/net/tun usable: %v", n, r.Err, truth)
		}
	}
}

// expectedWarnings lists, in registry order, the features of sel that
// must be reported missing here.
func expectedWarnings(t *testing.T, sel []Feature) []string {
	t.Helper()
	var out []string
	for _, f := range sel {
		want, _, ok := expected(t, f)
		if !ok {
			want = f.Probe().OK()
		}
		if !want {
			out = append(out, f.Name)
		}
	}
	return out
}
