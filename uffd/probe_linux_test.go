package uffd

import (
	"os"
	"testing"
)

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (userfaultfd of kernel faults, pidfd_getfd, /proc/PID/pagemap of others)")
	}
}

func TestProbe(t *testing.T) {
	needRoot(t)
	p := Probe()
	if p.Available != nil {
		t.Fatalf("userfaultfd unavailable: %v", p.Available)
	}
	t.Logf("features offered: %s", FeatureNames(p.Features))
	for name, err := range map[string]error{
		"uffd": p.Basic(), "uffd-noncoop": p.NonCoop(), "lazy_pages": p.LazyPages(), "mem_dirty_track": p.DirtyTrack(),
	} {
		// This machine (DESIGN.md) has every one of them.
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}
