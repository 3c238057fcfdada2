package drivers

import (
	"fmt"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/abi/linux"
	"godwit/internal/model"
	"godwit/internal/procfs"
)

// timerfds: clock, time left, interval and the expirations not read yet,
// from fdinfo. Restore arms a timerfd made in godwit with the time that
// was left (the timer does not run while the task is checkpointed, as
// CRIU's), sets the unread expirations with TFD_IOC_SET_TICKS and hands it
// over.

func init() { registerFDKind(timerfdKind{}) }

type timerfdKind struct{}

func (timerfdKind) name() string                             { return "timerfd" }
func (timerfdKind) fileKind() model.FileKind                 { return model.TimerFD }
func (timerfdKind) match(target string, _ *unix.Stat_t) bool { return target == "anon_inode:[timerfd]" }
func (timerfdKind) check(int, int, uint64) error             { return nil }

func (timerfdKind) collect(_ *Files, _ int, fd *FD, f *model.File) error {
	clock, err := fdinfoUint(fd.Info, "clockid", 10)
	if err != nil {
		return err
	}
	ticks, err := fdinfoUint(fd.Info, "ticks", 10)
	if err != nil {
		return err
	}
	flags, err := fdinfoUint(fd.Info, "settime flags", 8)
	if err != nil {
		return err
	}
	t := &model.TimerFDState{Clock: int32(clock), Ticks: ticks, SettimeFlags: uint32(flags)}
	if t.ValueSec, t.ValueNsec, err = fdinfoPair(fd.Info, "it_value"); err != nil {
		return err
	}
	if t.IntervalSec, t.IntervalNsec, err = fdinfoPair(fd.Info, "it_interval"); err != nil {
		return err
	}
	if realtimeAbs(t) && (t.ValueSec != 0 || t.ValueNsec != 0) {
		// The timer runs while the task is frozen: now + the time
		// left, read one after the other, is its deadline.
		var now unix.Timespec
		if err := unix.ClockGettime(t.Clock, &now); err != nil {
			return fmt.Errorf("clock_gettime(%d): %w", t.Clock, err)
		}
		d := unix.NsecToTimespec(now.Nano() + int64(t.ValueSec)*1e9 + int64(t.ValueNsec))
		t.Deadline = &d
	}
	f.Kind, f.Path = model.TimerFD, ""
	f.TimerFD = t
	return nil
}

// realtimeAbs reports whether t is a wall-clock timer armed with an
// absolute time: its deadline is kept as that time (a time of the other
// clocks counts from the boot of one machine).
func realtimeAbs(t *model.TimerFDState) bool {
	return t.SettimeFlags&unix.TFD_TIMER_ABSTIME != 0 && (t.Clock == unix.CLOCK_REALTIME || t.Clock == unix.CLOCK_REALTIME_ALARM)
}

// fdinfoPair parses a "(sec, nsec)" fdinfo line.
func fdinfoPair(fi *procfs.FDInfo, key string) (uint64, uint64, error) {
	v, ok := fi.Get(key)
	if !ok {
		return 0, 0, fmt.Errorf("fdinfo has no %q", key)
	}
	a, b, ok := strings.Cut(strings.TrimSuffix(strings.TrimPrefix(v, "("), ")"), ",")
	x, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 64)
	y, err2 := strconv.ParseUint(strings.TrimSpace(b), 10, 64)
	if !ok || err1 != nil || err2 != nil || y >= 1e9 {
		return 0, 0, fmt.Errorf("fdinfo %q: bad value %q", key, v)
	}
	return x, y, nil
}

func (timerfdKind) open(rs *restoreFDs, what string, f *model.File) (uint64, error) {
	t := f.TimerFD
	if t == nil {
		return 0, fmt.Errorf("%s: timerfd without its state", what)
	}
	tfd, err := unix.TimerfdCreate(int(t.Clock), unix.TFD_CLOEXEC|int(f.Flags&unix.O_NONBLOCK))
	if err != nil {
		return 0, fmt.Errorf("%s: timerfd_create(clock %d): %w", what, t.Clock, err)
	}
	defer unix.Close(tfd)
	spec := unix.ItimerSpec{
		Value:    unix.Timespec{Sec: int64(t.ValueSec), Nsec: int64(t.ValueNsec)},
		Interval: unix.Timespec{Sec: int64(t.IntervalSec), Nsec: int64(t.IntervalNsec)},
	}
	if spec.Value == (unix.Timespec{}) && spec.Interval != (unix.Timespec{}) {
		// A periodic timer that expired and was not read: fdinfo shows
		// no time left until a read moves it on. Its next expiry is
		// within one interval; arming it one interval out adds no
		// expiration the task did not have.
		spec.Value = spec.Interval
	}
	if t.Deadline != nil {
		// Absolute on the wall clock: the same time, passed already
		// or not (then it fires at once, as after a suspend).
		spec.Value = *t.Deadline
		if err := unix.TimerfdSettime(tfd, unix.TFD_TIMER_ABSTIME|int(t.SettimeFlags&unix.TFD_TIMER_CANCEL_ON_SET), &spec, nil); err != nil {
			return 0, fmt.Errorf("%s: timerfd_settime: %w", what, err)
		}
	} else if spec.Value != (unix.Timespec{}) {
		flags := 0
		if t.SettimeFlags&(unix.TFD_TIMER_ABSTIME|unix.TFD_TIMER_CANCEL_ON_SET) != 0 {
			// An absolute timer (cancel-on-set is one too) of a clock
			// other than the wall clock, or from a CRIU image, stays
			// absolute, so that a later step of its clock moves its
			// expiry as it did: now + the time left, as CRIU does.
			var now unix.Timespec
			if err := unix.ClockGettime(t.Clock, &now); err != nil {
				return 0, fmt.Errorf("%s: clock_gettime(%d): %w", what, t.Clock, err)
			}
			ns := now.Nano() + spec.Value.Nano()
			spec.Value = unix.NsecToTimespec(ns)
			flags = unix.TFD_TIMER_ABSTIME | int(t.SettimeFlags&unix.TFD_TIMER_CANCEL_ON_SET)
		}
		if err := unix.TimerfdSettime(tfd, flags, &spec, nil); err != nil {
			return 0, fmt.Errorf("%s: timerfd_settime: %w", what, err)
		}
	}
	if t.Ticks != 0 {
		ticks := t.Ticks
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(tfd), linux.TfdIocSetTicks, uintptr(unsafe.Pointer(&ticks))); e != 0 {
			return 0, fmt.Errorf("%s: TFD_IOC_SET_TICKS %d: %w", what, ticks, e)
		}
	}
	return rs.install(what, tfd)
}
