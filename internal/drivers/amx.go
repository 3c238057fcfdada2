package drivers

import (
	"errors"

	"golang.org/x/sys/unix"

	"godwit/internal/inject"
	"godwit/internal/model"
	"godwit/internal/xstate"
)

// arch_prctl codes for dynamic XSAVE features (arch/x86/include/uapi/asm/prctl.h).
const (
	archGetXcompPerm = 0x1022
	archReqXcompPerm = 0x1023
)

// amxDriver dumps and restores AMX: the task's permission to use tile
// data (ARCH_REQ_XCOMP_PERM, process-wide) and each thread's tile state
// (XTILECFG, XTILEDATA), which CRIU's fpregs cannot carry: both go to the
// godwit image. The permission is asked for again before the registers;
// the restorer lays the tiles over each thread's XSAVE buffer with the
// rest of its FPU state (xstate.PutTiles).
type amxDriver struct{}

func (amxDriver) Name() string    { return "amx" }
func (amxDriver) After() []string { return []string{PhaseThreads} }

// CollectThread takes the tile state in use out of the thread's XSAVE
// buffer.
func (amxDriver) CollectThread(d *Dump, th *model.Thread) error {
	cfg, data, err := xstate.Tiles(th.XState)
	if err != nil {
		return err
	}
	if cfg != nil {
		th.Tiles = &model.Tiles{Cfg: cfg, Data: data}
	}
	return nil
}

// CollectInjected reads the task's dynamic-feature permission.
func (amxDriver) CollectInjected(d *Dump, s *inject.Session) error {
	if _, err := s.Call("arch_prctl(ARCH_GET_XCOMP_PERM)", unix.SYS_ARCH_PRCTL, archGetXcompPerm, s.Scratch()+scratchXcomp); err != nil {
		if e, ok := inject.Errno(err); ok && e == unix.EINVAL {
			return nil // no XSAVE: no dynamic feature
		}
		return err
	}
	var b [8]byte
	if err := s.Read(scratchXcomp, b[:]); err != nil {
		return err
	}
	setXcompPerm(d, le.Uint64(b[:]))
	return nil
}

// PlanInjected reads ARCH_GET_XCOMP_PERM; without XSAVE the call fails
// and CollectInjected tells that from an error.
func (amxDriver) PlanInjected(d *Dump, s *inject.Session) (Planned, bool) {
	return Planned{Calls: []inject.Call{inject.C("arch_prctl(ARCH_GET_XCOMP_PERM)", unix.SYS_ARCH_PRCTL, archGetXcompPerm, s.Scratch()+scratchXcomp)},
		Done: func(_ []uint64, scratch []byte) error {
			setXcompPerm(d, le.Uint64(scratch[scratchXcomp:]))
			return nil
		}}, true
}

// setXcompPerm records the dynamic features the task was permitted,
// where AMX tile data is among them.
func setXcompPerm(d *Dump, perm uint64) {
	if perm&(1<<xstate.XfeatTileData) != 0 {
		d.Task.XcompPerm = perm
	}
}

// Restore asks for tile data permission again.
func (amxDriver) Restore(r *Restore, s *inject.Session) error {
	if r.Task.XcompPerm&(1<<xstate.XfeatTileData) == 0 {
		for _, t := range r.Task.Threads {
			if t.Tiles != nil {
				return errors.New("amx: tile state without the permission to use it")
			}
		}
		return nil
	}
	_, err := s.Call("arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)", unix.SYS_ARCH_PRCTL, archReqXcompPerm, xstate.XfeatTileData)
	return err
}
