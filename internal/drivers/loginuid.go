package drivers

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"godwit/internal/inject"
	"godwit/internal/model"
	"godwit/internal/procfs"
)

// loginuidDriver dumps and restores the audit login uid
// (/proc/PID/loginuid). The kernel lets only a thread itself write its own
// loginuid (proc_loginuid_write refuses any other writer), and each
// thread has its own copy, inherited at clone from the puppet: so it is
// written in every thread, by an injected write to
// /proc/thread-self/loginuid, before the credentials drop
// CAP_AUDIT_CONTROL.
type loginuidDriver struct{}

func (loginuidDriver) Name() string    { return "loginuid" }
func (loginuidDriver) After() []string { return []string{PhaseThreads} }

// Collect reads the leader's loginuid; a kernel without audit has no
// file, and the task none to restore.
func (loginuidDriver) Collect(d *Dump) error {
	b, err := os.ReadFile(procfs.Path(d.Pid, "loginuid"))
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return fmt.Errorf("loginuid: %w", err)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
	if err != nil {
		return fmt.Errorf("loginuid %q: %w", b, err)
	}
	lu := uint32(v)
	d.Task.Loginuid = &lu
	return nil
}

// RestoreThread writes the loginuid where the thread's (the puppet's,
// inherited from godwit) differs.
func (loginuidDriver) RestoreThread(r *Restore, s *inject.Session, t *model.Thread) error {
	lu := r.Task.Loginuid
	if lu == nil {
		return nil
	}
	want := strconv.FormatUint(uint64(*lu), 10)
	if b, err := os.ReadFile(procfs.TaskPath(r.Task.Pid, t.Tid, "loginuid")); err == nil && strings.TrimSpace(string(b)) == want {
		return nil
	}
	fd, err := s.Openat("loginuid", "/proc/thread-self/loginuid", unix.O_WRONLY|unix.O_CLOEXEC)
	if err != nil {
		return err
	}
	a, err := s.Put(512, []byte(want))
	if err == nil {
		var n uint64
		n, err = s.Call("write loginuid "+want, unix.SYS_WRITE, fd, a, uint64(len(want)))
		if err == nil && n != uint64(len(want)) {
			err = fmt.Errorf("write loginuid %s: short write %d", want, n)
		}
	}
	if _, cerr := s.Call("close loginuid", unix.SYS_CLOSE, fd); cerr != nil && err == nil {
		err = cerr
	}
	return err
}
