package drivers

import (
	"fmt"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
)

// signalfds: the mask, from fdinfo. A signalfd reads the queue of the task
// that reads it, not of its maker, so godwit makes it and hands it over.

func init() { registerFDKind(signalfdKind{}) }

type signalfdKind struct{}

func (signalfdKind) name() string             { return "signalfd" }
func (signalfdKind) fileKind() model.FileKind { return model.SignalFD }
func (signalfdKind) match(target string, _ *unix.Stat_t) bool {
	return target == "anon_inode:[signalfd]"
}
func (signalfdKind) check(int, int, uint64) error { return nil }

func (signalfdKind) collect(_ *Files, _ int, fd *FD, f *model.File) error {
	mask, err := fdinfoUint(fd.Info, "sigmask", 16)
	if err != nil {
		return err
	}
	f.Kind, f.Path = model.SignalFD, ""
	f.SignalFD = &model.SignalFDState{Mask: mask}
	return nil
}

func (signalfdKind) open(rs *restoreFDs, what string, f *model.File) (uint64, error) {
	if f.SignalFD == nil {
		return 0, fmt.Errorf("%s: signalfd without its state", what)
	}
	set := unix.Sigset_t{Val: [16]uint64{f.SignalFD.Mask}}
	sfd, err := unix.Signalfd(-1, &set, unix.SFD_CLOEXEC|int(f.Flags&unix.O_NONBLOCK))
	if err != nil {
		return 0, fmt.Errorf("%s: signalfd: %w", what, err)
	}
	defer unix.Close(sfd)
	return rs.install(what, sfd)
}
