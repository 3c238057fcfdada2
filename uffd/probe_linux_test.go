package uffd

import (
	"bufio"
	"compress/gzip"
	"os"
	"strings"
	"testing"
)

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (userfaultfd of kernel faults, pidfd_getfd, /proc/PID/pagemap of others)")
	}
}

// kernelConfig reads the running kernel's build options from
// /proc/config.gz; nil when the kernel does not export them.
func kernelConfig(t *testing.T) map[string]string {
	t.Helper()
	f, err := os.Open("/proc/config.gz")
	if err != nil {
		return nil
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("/proc/config.gz: %v", err)
	}
	m := map[string]string{}
	sc := bufio.NewScanner(z)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			m[k] = v
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("/proc/config.gz: %v", err)
	}
	return m
}

// TestProbe checks the probe against what the kernel says by other routes:
// the vm.unprivileged_userfaultfd sysctl exists exactly when the kernel has
// CONFIG_USERFAULTFD, and WP_ASYNC needs CONFIG_PTE_MARKER_UFFD_WP.
func TestProbe(t *testing.T) {
	needRoot(t)
	p := Probe()
	t.Logf("features offered: %s", FeatureNames(p.Features))
	_, err := os.Stat("/proc/sys/vm/unprivileged_userfaultfd")
	hasUffd := err == nil
	cfg := kernelConfig(t)
	if cfg != nil && (cfg["CONFIG_USERFAULTFD"] == "y") != hasUffd {
		t.Fatalf("CONFIG_USERFAULTFD=%q but vm.unprivileged_userfaultfd present: %v", cfg["CONFIG_USERFAULTFD"], hasUffd)
	}
	if (p.Available == nil) != hasUffd {
		t.Fatalf("probe: available=%v (%v), kernel has userfaultfd: %v", p.Available == nil, p.Available, hasUffd)
	}
	// MISSING mode, the non-cooperative events and lazy restore's fault
	// service are all in every kernel with userfaultfd that godwit runs on.
	for name, err := range map[string]error{"uffd": p.Basic(), "uffd-noncoop": p.NonCoop(), "lazy_pages": p.LazyPages()} {
		if (err == nil) != hasUffd {
			t.Errorf("%s: %v; kernel has userfaultfd: %v", name, err, hasUffd)
		}
	}
	if cfg == nil {
		t.Logf("no /proc/config.gz: dirty tracking probe (%v) not compared", p.DirtyTrack())
		return
	}
	wp := hasUffd && cfg["CONFIG_PTE_MARKER_UFFD_WP"] == "y"
	if (p.DirtyTrack() == nil) != wp {
		t.Errorf("mem_dirty_track: %v; kernel config has uffd-wp markers: %v", p.DirtyTrack(), wp)
	}
}
