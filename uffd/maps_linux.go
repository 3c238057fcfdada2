package uffd

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"sync"
)

// ReadVMAs lists the mappings of pid (0: this process) that a Tracker can
// follow: everything in /proc/PID/maps except the kernel's special mappings
// that cannot be registered ([vsyscall], [vvar], [vvar_vclock]).
func ReadVMAs(pid int) ([]VMA, error) {
	path := "/proc/self/maps"
	if pid != 0 {
		path = "/proc/" + strconv.Itoa(pid) + "/maps"
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	vmas, err := ParseMaps(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return vmas, nil
}

// ParseMaps parses the text of /proc/PID/maps, keeping trackable mappings.
func ParseMaps(b []byte) ([]VMA, error) {
	var out []VMA
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		f := bytes.Fields(sc.Bytes())
		if len(f) < 5 {
			return nil, fmt.Errorf("line %d: %d fields", line, len(f))
		}
		dash := bytes.IndexByte(f[0], '-')
		if dash < 0 {
			return nil, fmt.Errorf("line %d: bad range %q", line, f[0])
		}
		s, err1 := strconv.ParseUint(string(f[0][:dash]), 16, 64)
		e, err2 := strconv.ParseUint(string(f[0][dash+1:]), 16, 64)
		if err1 != nil || err2 != nil || e <= s {
			return nil, fmt.Errorf("line %d: bad range %q", line, f[0])
		}
		if len(f) >= 6 {
			switch string(f[5]) {
			case "[vsyscall]", "[vvar]", "[vvar_vclock]":
				continue
			}
		}
		out = append(out, VMA{s, e})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return out, nil
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
