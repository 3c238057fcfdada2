package kerndat

import (
	"os"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/ptrace"
)

// A probe whose injected syscall never returns ends with an error when the
// watchdog kills its puppet, and leaves no puppet behind.
func TestPuppetWatchdog(t *testing.T) {
	needRoot(t)
	saved := puppetTimeout
	puppetTimeout = 100 * time.Millisecond
	defer func() { puppetTimeout = saved }()
	var pid int
	err := inPuppet(func(p int, s *ptrace.Session, _ uint64) error {
		pid = p
		_, err := s.Syscall(unix.SYS_PAUSE)
		return err
	})
	if err == nil {
		t.Fatal("pause in a puppet returned without error")
	}
	t.Logf("probe error: %v", err)
	if pid == 0 {
		t.Fatal("puppet never started")
	}
	if _, serr := os.Stat("/proc/" + strconv.Itoa(pid)); serr == nil {
		unix.Kill(pid, unix.SIGKILL)
		t.Fatalf("puppet %d still exists after the probe", pid)
	}
}
