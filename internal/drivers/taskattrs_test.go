package drivers

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestCPUList parses kernel CPU lists and names sets as the kernel does.
func TestCPUList(t *testing.T) {
	for _, c := range []struct{ in, out string }{
		{"0", "0"}, {"0-3", "0-3"}, {"0-1,3,5-7", "0-1,3,5-7"}, {"", "none"}, {"1023", "1023"},
	} {
		s, err := parseCPUList(c.in)
		if err != nil {
			t.Fatalf("%q: %v", c.in, err)
		}
		if got := cpuList(&s); got != c.out {
			t.Errorf("%q: named %q, want %q", c.in, got, c.out)
		}
		w := cpuWords(&s)
		var back unix.CPUSet
		for i, x := range w {
			for b := range 64 {
				if x&(1<<b) != 0 {
					back.Set(i*64 + b)
				}
			}
		}
		if back != s {
			t.Errorf("%q: words %x do not give the set back", c.in, w)
		}
	}
	for _, bad := range []string{"x", "3-1", "-1", "1024", "0-", "1,,2"} {
		if _, err := parseCPUList(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
