package uffd

import (
	"bytes"
	"os"
	"sync"

	"godwit/internal/procfs"
)

// ReadVMAs lists the mappings of pid (0: this process) that a Tracker can
// follow: everything in /proc/PID/maps except the kernel's special mappings
// that cannot be registered ([vsyscall], [vvar], [vvar_vclock]).
// internal/procfs owns the maps parser (and its fuzzer).
func ReadVMAs(pid int) ([]VMA, error) {
	if pid == 0 {
		pid = os.Getpid()
	}
	ms, err := procfs.ReadMaps(pid)
	if err != nil {
		return nil, err
	}
	return Trackable(ms), nil
}

// Trackable keeps the mappings a Tracker can register, as VMAs.
func Trackable(ms []procfs.Mapping) []VMA {
	out := make([]VMA, 0, len(ms))
	for _, m := range ms {
		switch m.Path {
		case "[vsyscall]", "[vvar]", "[vvar_vclock]":
			continue
		}
		if m.End > m.Start {
			out = append(out, VMA{m.Start, m.End})
		}
	}
	return out
}

var swapOnce = sync.OnceValue(func() bool {
	b, err := os.ReadFile("/proc/swaps")
	if err != nil {
		return true // cannot tell: assume swap, over-report
	}
	return bytes.Count(b, []byte("\n")) > 1
})

// swapEnabled says whether any swap area is active (read once).
func swapEnabled() bool { return swapOnce() }
