package drivers

import (
	"fmt"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/abi/linux"
	"godwit/internal/model"
)

// epoll instances: every registration (fd number, events, data) from
// fdinfo's tfd lines. A registration names the fd it was added with; it is
// restored only when that number still holds the registered file in the
// task (kcmp KCMP_EPOLL_TFD), since the restore adds it by that number.
// Restore makes the instance in the task and adds the targets once every
// fd is in place, so targets with higher numbers and other epoll
// instances work. A level-triggered target's readiness is recomputed on
// add; an edge-triggered one that is ready reports one edge again (a
// spurious wakeup, which edge-triggered readers such as Go's netpoller
// tolerate; CRIU does the same).

func init() { registerFDKind(epollKind{}) }

type epollKind struct{}

func (epollKind) name() string                             { return "eventpoll" }
func (epollKind) fileKind() model.FileKind                 { return model.Epoll }
func (epollKind) match(target string, _ *unix.Stat_t) bool { return target == "anon_inode:[eventpoll]" }
func (epollKind) check(int, int, uint64) error             { return nil }

func (epollKind) collect(_ *Files, pid int, fd *FD, f *model.File) error {
	st := &model.EpollState{}
	seen := map[int]bool{}
	for _, kv := range fd.Info.Extra {
		if kv.Key != "tfd" {
			continue
		}
		t, err := parseEpollTarget(kv.Value)
		if err != nil {
			return err
		}
		if seen[t.FD] {
			return fmt.Errorf("fd %d is registered twice (two files once at that number): not restorable by number", t.FD)
		}
		seen[t.FD] = true
		slot := linux.KcmpEpollSlot{Efd: uint32(fd.Num), Tfd: uint32(t.FD)}
		r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(pid), uintptr(pid), linux.KcmpEpollTFD, uintptr(t.FD), uintptr(unsafe.Pointer(&slot)), 0)
		if e != 0 || r != 0 {
			return fmt.Errorf("target fd %d no longer holds the registered file (closed or replaced after epoll_ctl): not restorable", t.FD)
		}
		st.Targets = append(st.Targets, t)
	}
	f.Kind, f.Path = model.Epoll, ""
	f.Epoll = st
	return nil
}

// parseEpollTarget parses the rest of a "tfd: N events: X data: X pos:N
// ino:X sdev:X" fdinfo line.
func parseEpollTarget(v string) (model.EpollTarget, error) {
	var t model.EpollTarget
	fs := strings.Fields(v)
	bad := func() (model.EpollTarget, error) { return t, fmt.Errorf("fdinfo: bad epoll target %q", v) }
	if len(fs) < 5 || fs[1] != "events:" || fs[3] != "data:" {
		return bad()
	}
	n, err1 := strconv.Atoi(fs[0])
	ev, err2 := strconv.ParseUint(fs[2], 16, 32)
	data, err3 := strconv.ParseUint(fs[4], 16, 64)
	if err1 != nil || err2 != nil || err3 != nil || n < 0 {
		return bad()
	}
	t.FD, t.Events, t.Data = n, uint32(ev), data
	return t, nil
}

func (epollKind) open(rs *restoreFDs, what string, f *model.File) (uint64, error) {
	if f.Epoll == nil {
		return 0, fmt.Errorf("%s: epoll without its state", what)
	}
	fd, err := rs.s.Call(what+": epoll_create1", unix.SYS_EPOLL_CREATE1, 0)
	if err != nil {
		return 0, err
	}
	if f.Flags&unix.O_NONBLOCK != 0 {
		if _, err := rs.s.Call(what+": F_SETFL", unix.SYS_FCNTL, fd, unix.F_SETFL, unix.O_NONBLOCK); err != nil {
			return 0, err
		}
	}
	return fd, nil
}

// scratchEpollEvent is where the restore side puts a struct epoll_event.
const scratchEpollEvent = scratchPassEnd

// finish adds every target, by its number, now that every fd is there.
func (epollKind) finish(rs *restoreFDs, what string, fd uint64, f *model.File) error {
	for _, t := range f.Epoll.Targets {
		// struct epoll_event is packed on x86-64: events, then data.
		ev := le.AppendUint32(nil, t.Events)
		ev = le.AppendUint64(ev, t.Data)
		a, err := rs.s.Put(scratchEpollEvent, ev)
		if err != nil {
			return err
		}
		if _, err := rs.s.Call(fmt.Sprintf("%s: epoll_ctl add fd %d", what, t.FD), unix.SYS_EPOLL_CTL, fd, unix.EPOLL_CTL_ADD, uint64(t.FD), a); err != nil {
			return err
		}
	}
	return nil
}
