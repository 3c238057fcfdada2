package drivers

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"godwit/internal/inject"
)

// membarrier(2) commands (include/uapi/linux/membarrier.h; x/sys/unix has
// none of them).
const (
	membarrierCmdQuery                   = 0
	membarrierCmdRegisterGlobalExpedited = 1 << 2
	membarrierCmdPrivateExpedited        = 1 << 3
	membarrierCmdRegisterPrivateExp      = 1 << 4
	membarrierCmdPrivateExpSyncCore      = 1 << 5
	membarrierCmdRegisterPrivateExpSync  = 1 << 6
	membarrierCmdPrivateExpRseq          = 1 << 7
	membarrierCmdRegisterPrivateExpRseq  = 1 << 8
	membarrierCmdGetRegistrations        = 1 << 9 // Linux 6.3+
)

// membarrierRegistrations are the MEMBARRIER_CMD_REGISTER_* commands
// godwit restores.
const membarrierRegistrations = membarrierCmdRegisterGlobalExpedited | membarrierCmdRegisterPrivateExp |
	membarrierCmdRegisterPrivateExpSync | membarrierCmdRegisterPrivateExpRseq

// membarrierProbes pairs each private expedited command with the command
// that registers for it. The kernel keeps the registrations in
// mm->membarrier_state, which nothing exports; but each private command
// fails with EPERM in an mm not registered for it, and is otherwise a
// harmless barrier (every thread is stopped): so the dump probes them by
// effect, injected into the task.
//
// MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED leaves no such trace (the
// global command succeeds in any mm, registered or not): without
// MEMBARRIER_CMD_GET_REGISTRATIONS it cannot be detected, and a restored
// task is not registered for it.
var membarrierProbes = []struct {
	cmd, register uint64
	name          string
}{
	{membarrierCmdPrivateExpedited, membarrierCmdRegisterPrivateExp, "private expedited"},
	{membarrierCmdPrivateExpSyncCore, membarrierCmdRegisterPrivateExpSync, "private expedited sync-core"},
	{membarrierCmdPrivateExpRseq, membarrierCmdRegisterPrivateExpRseq, "private expedited rseq"},
}

// membarrierDriver dumps and restores the mm's membarrier registrations
// (kept in the godwit image: CRIU has no field for them).
type membarrierDriver struct{}

func (membarrierDriver) Name() string    { return "membarrier" }
func (membarrierDriver) After() []string { return []string{PhaseThreads} }

// CollectInjected reads the mm's registrations with one call
// (MEMBARRIER_CMD_GET_REGISTRATIONS, which sees the global expedited one
// too); before Linux 6.3, which lacks it, it probes each private
// expedited registration by effect (four calls).
func (membarrierDriver) CollectInjected(d *Dump, s *inject.Session) error {
	regs, err := s.Call("membarrier(GET_REGISTRATIONS)", unix.SYS_MEMBARRIER, membarrierCmdGetRegistrations, 0, 0)
	if err == nil {
		return setMembarrier(d, regs)
	}
	if e, ok := inject.Errno(err); !ok || e != unix.EINVAL && e != unix.ENOSYS {
		return err
	}
	supported, err := s.Call("membarrier(QUERY)", unix.SYS_MEMBARRIER, membarrierCmdQuery, 0, 0)
	if err != nil {
		if e, ok := inject.Errno(err); ok && e == unix.ENOSYS {
			return nil
		}
		return err
	}
	for _, p := range membarrierProbes {
		if supported&p.cmd == 0 {
			continue
		}
		_, err := s.Call("membarrier("+p.name+")", unix.SYS_MEMBARRIER, p.cmd, 0, 0)
		if err == nil {
			d.Task.MM.Membarrier |= uint32(p.register)
			continue
		}
		if e, ok := inject.Errno(err); !ok || e != unix.EPERM {
			return fmt.Errorf("probe membarrier registration: %w", err)
		}
	}
	return nil
}

// Restore registers the mm again for each command it was registered for.
func (membarrierDriver) Restore(r *Restore, s *inject.Session) error {
	m := uint64(r.Task.MM.Membarrier)
	if m == 0 {
		return nil
	}
	for _, p := range membarrierProbes {
		if m&p.register == 0 {
			continue
		}
		m &^= p.register
		if _, err := s.Call("membarrier(register "+p.name+")", unix.SYS_MEMBARRIER, p.register, 0, 0); err != nil {
			return err
		}
	}
	if m&membarrierCmdRegisterGlobalExpedited != 0 {
		m &^= membarrierCmdRegisterGlobalExpedited
		if _, err := s.Call("membarrier(register global expedited)", unix.SYS_MEMBARRIER, membarrierCmdRegisterGlobalExpedited, 0, 0); err != nil {
			return err
		}
	}
	if m != 0 {
		return errors.New("membarrier: unknown registrations in the images")
	}
	return nil
}

// PlanInjected reads the registrations (GET_REGISTRATIONS); a kernel
// without it fails the call, and CollectInjected probes instead.
func (membarrierDriver) PlanInjected(d *Dump, s *inject.Session) (Planned, bool) {
	return Planned{Calls: []inject.Call{inject.C("membarrier(GET_REGISTRATIONS)", unix.SYS_MEMBARRIER, membarrierCmdGetRegistrations, 0, 0)},
		Done: func(got []uint64, _ []byte) error { return setMembarrier(d, got[0]) }}, true
}

// setMembarrier records the registrations GET_REGISTRATIONS returned.
func setMembarrier(d *Dump, regs uint64) error {
	if regs&^membarrierRegistrations != 0 {
		return fmt.Errorf("membarrier registrations %#x unknown to godwit: cannot be restored", regs&^membarrierRegistrations)
	}
	d.Task.MM.Membarrier = uint32(regs)
	return nil
}
