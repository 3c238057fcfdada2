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
		if epollDisabled(t.Events) {
			if err := epollCanDisable(pid, t.FD); err != nil {
				return fmt.Errorf("target fd %d: a fired EPOLLONESHOT registration (disabled): %w", t.FD, err)
			}
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

// epollPrivateBits are the event bits a fired EPOLLONESHOT registration
// keeps (EP_PRIVATE_BITS, fs/eventpoll.c): the kernel clears the others,
// and no epoll_ctl can (ADD and MOD always add EPOLLERR|EPOLLHUP).
const epollPrivateBits = unix.EPOLLWAKEUP | unix.EPOLLONESHOT | unix.EPOLLET | unix.EPOLLEXCLUSIVE

// epollAll is every event a file may report: a disabled one-shot
// registration is added with them, so that its file's first event
// disables it.
const epollAll = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLPRI | unix.EPOLLRDHUP | unix.EPOLLRDNORM |
	unix.EPOLLRDBAND | unix.EPOLLWRNORM | unix.EPOLLWRBAND | unix.EPOLLMSG

// epollDisabled reports whether a registration's events are those of an
// EPOLLONESHOT one that fired: nothing left but the private bits.
func epollDisabled(events uint32) bool {
	return events&unix.EPOLLONESHOT != 0 && events&^uint32(epollPrivateBits) == 0
}

// epollCanDisable checks that fd n of pid reports some event now (a
// poll of godwit's copy, which consumes nothing): the restore disables
// its one-shot registration again by letting it fire once.
func epollCanDisable(pid, n int) error {
	cp, err := grabFD(pid, n)
	if err != nil {
		return err
	}
	defer unix.Close(cp)
	p := []unix.PollFd{{Fd: int32(cp), Events: epollAll}}
	if k, err := unix.Poll(p, 0); err != nil || k != 1 {
		return fmt.Errorf("its file reports no event now, so the restore cannot disable it again (%v)", err)
	}
	return nil
}

// finish adds every target, by its number, now that every fd is there.
// Fired (disabled) one-shot registrations come first, each added with
// every event and fired once by an epoll_wait of godwit's copy, while
// no other registration can be consumed by it.
func (epollKind) finish(rs *restoreFDs, what string, fd uint64, f *model.File) error {
	var disabled []model.EpollTarget
	for _, t := range f.Epoll.Targets {
		if epollDisabled(t.Events) {
			disabled = append(disabled, t)
		}
	}
	if len(disabled) > 0 {
		if err := epollAddDisabled(rs, what, fd, disabled); err != nil {
			return err
		}
	}
	for _, t := range f.Epoll.Targets {
		if epollDisabled(t.Events) {
			continue
		}
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

// epollAddDisabled adds the fired one-shot registrations ts to the empty
// epoll fd of the task and fires each once, leaving it disabled as the
// kernel left it (its private bits, its data).
func epollAddDisabled(rs *restoreFDs, what string, fd uint64, ts []model.EpollTarget) error {
	for _, t := range ts {
		ev := le.AppendUint32(nil, t.Events|epollAll)
		ev = le.AppendUint64(ev, t.Data)
		a, err := rs.s.Put(scratchEpollEvent, ev)
		if err != nil {
			return err
		}
		if _, err := rs.s.Call(fmt.Sprintf("%s: epoll_ctl add fd %d (one-shot, to disable)", what, t.FD), unix.SYS_EPOLL_CTL, fd, unix.EPOLL_CTL_ADD, uint64(t.FD), a); err != nil {
			return err
		}
	}
	ep, err := grabFD(rs.s.Pid(), int(fd))
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer unix.Close(ep)
	evs := make([]unix.EpollEvent, len(ts)+1)
	n, err := unix.EpollWait(ep, evs, 0)
	if err != nil {
		return fmt.Errorf("%s: epoll_wait to disable one-shot registrations: %w", what, err)
	}
	if n != len(ts) {
		return fmt.Errorf("%s: %d of %d fired EPOLLONESHOT registrations fire now: the others cannot be disabled again", what, n, len(ts))
	}
	return nil
}
