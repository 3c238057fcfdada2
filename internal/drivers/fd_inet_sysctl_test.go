package drivers

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// The default TTL and tcp_notsent_lowat are read once per dump, not once
// per process: a dump after the sysctls change sees the new values. The
// sysctls are changed in a child test process in a network namespace of
// its own (a thread of this process that joined another netns could be
// its main thread, whose netns is /proc/PID/net for the other tests).
func TestInetSysctlsPerDump(t *testing.T) {
	if os.Getenv("GODWIT_TEST_NETNS_CHILD") == "1" {
		if msg := inetSysctlsPerDump(); msg != "" {
			t.Fatal(msg)
		}
		return
	}
	c := exec.Command(os.Args[0], "-test.run=^TestInetSysctlsPerDump$", "-test.count=1", "-test.v")
	c.Env = append(os.Environ(), "GODWIT_TEST_NETNS_CHILD=1")
	c.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	out, err := c.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestInetSysctlsPerDump") {
		t.Fatalf("child in its own netns: %v\n%s", err, out)
	}
	// This process's namespace was left alone.
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_default_ttl"); err != nil || string(b) == "71\n" {
		t.Fatalf("the test's own netns has ip_default_ttl %q (%v)", b, err)
	}
}

func inetSysctlsPerDump() string {
	set := func(ttl, lowat int) string {
		for f, v := range map[string]int{"/proc/sys/net/ipv4/ip_default_ttl": ttl, "/proc/sys/net/ipv4/tcp_notsent_lowat": lowat} {
			if err := os.WriteFile(f, []byte(strconv.Itoa(v)), 0); err != nil {
				return err.Error()
			}
		}
		return ""
	}
	if e := set(70, 5000); e != "" {
		return e
	}
	d1 := newInetDump()
	if ttl, lw := d1.defaultTTL(), d1.notsentLowat(0); ttl != 70 || lw != 5000 {
		return "first dump: ttl " + strconv.Itoa(int(ttl)) + ", notsent lowat " + strconv.Itoa(lw) + ", want 70, 5000"
	}
	if e := set(71, 6000); e != "" {
		return e
	}
	d2 := newInetDump()
	if ttl, lw := d2.defaultTTL(), d2.notsentLowat(0); ttl != 71 || lw != 6000 {
		return "second dump: ttl " + strconv.Itoa(int(ttl)) + ", notsent lowat " + strconv.Itoa(lw) + ", want 71, 6000 (a stale value)"
	}
	if lw := d2.notsentLowat(123); lw != 123 {
		return "an explicit TCP_NOTSENT_LOWAT " + strconv.Itoa(lw) + ", want 123"
	}
	return ""
}
