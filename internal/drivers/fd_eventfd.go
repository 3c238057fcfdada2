package drivers

import (
	"encoding/binary"
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
	"godwit/internal/procfs"
)

// eventfds: the counter and the semaphore mode, from fdinfo. Restore makes
// the eventfd in godwit, adds the counter with a write, and hands it over.

func init() { registerFDKind(eventfdKind{}) }

type eventfdKind struct{}

func (eventfdKind) name() string                             { return "eventfd" }
func (eventfdKind) fileKind() model.FileKind                 { return model.EventFD }
func (eventfdKind) match(target string, _ *unix.Stat_t) bool { return target == "anon_inode:[eventfd]" }
func (eventfdKind) check(int, int, uint64) error             { return nil }

func (eventfdKind) collect(_ *Files, _ int, fd *FD, f *model.File) error {
	cnt, err := fdinfoUint(fd.Info, "eventfd-count", 16)
	if err != nil {
		return err
	}
	sem, err := fdinfoUint(fd.Info, "eventfd-semaphore", 10)
	if err != nil {
		return err
	}
	f.Kind, f.Path = model.EventFD, ""
	f.EventFD = &model.EventFDState{Counter: cnt, Semaphore: sem != 0}
	return nil
}

func (eventfdKind) open(rs *restoreFDs, what string, f *model.File) (uint64, error) {
	st := f.EventFD
	if st == nil {
		return 0, fmt.Errorf("%s: eventfd without its state", what)
	}
	flags := unix.EFD_CLOEXEC | int(f.Flags&unix.O_NONBLOCK)
	if st.Semaphore {
		flags |= unix.EFD_SEMAPHORE
	}
	// eventfd2 takes an unsigned int: the 64-bit counter goes in by write.
	efd, err := unix.Eventfd(0, flags)
	if err != nil {
		return 0, fmt.Errorf("%s: eventfd: %w", what, err)
	}
	defer unix.Close(efd)
	if st.Counter != 0 {
		var b [8]byte
		binary.NativeEndian.PutUint64(b[:], st.Counter)
		if _, err := unix.Write(efd, b[:]); err != nil {
			return 0, fmt.Errorf("%s: set eventfd counter %d: %w", what, st.Counter, err)
		}
	}
	return rs.install(what, efd)
}

// fdinfoUint parses fdinfo line key as an unsigned number in base.
func fdinfoUint(fi *procfs.FDInfo, key string, base int) (uint64, error) {
	v, ok := fi.Get(key)
	if !ok {
		return 0, fmt.Errorf("fdinfo has no %q", key)
	}
	n, err := strconv.ParseUint(v, base, 64)
	if err != nil {
		return 0, fmt.Errorf("fdinfo %q: %w", key, err)
	}
	return n, nil
}
