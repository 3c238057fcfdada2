package drivers

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
)

// The ttys that are not ptys of the tree: /dev/tty (the alias of the
// task's controlling terminal), /dev/console, virtual consoles and serial
// lines, and a tty left out with --external tty[rdev:dev].
//
// A console, VT or serial line has no per-open state: it is reopened by
// its path, the device checked to be the one dumped (for an alias,
// /dev/console and /dev/tty0, the device it reaches too: TIOCGDEV), and
// given the dumped termios and window size. Queued input cannot be read
// without consuming it (a tty has no peek): a line with input not read
// yet is refused.
//
// /dev/tty opened by a task reaches its controlling terminal of the time;
// it is reopened in the task once the task has its terminal again, so it
// must still reach it at dump time (checkCttyAliases).

// Device numbers (include/uapi/linux/major.h, Documentation/admin-guide/
// devices.txt): TTYAUX_MAJOR 5 (0 /dev/tty, 1 /dev/console), TTY_MAJOR
// 4 (minors 0-63 the VTs, 64-255 ttyS), and the serial drivers' majors.
const (
	ttyMajor       = 4
	ttyCttyMinor   = 0
	ttyConsMinor   = 1
	ttyVTMinors    = 64
	serialUSBMajor = 188 // ttyUSB
	serialACMMajor = 166 // ttyACM
	serialAMAMajor = 204 // ttyAMA and other low-density serial ports
	serialHVCMajor = 229 // hvc consoles
)

// otherTty tells a tty that is not a pty end by its device.
func otherTty(st *unix.Stat_t) (model.TtyKind, bool) {
	if st.Mode&unix.S_IFMT != unix.S_IFCHR {
		return 0, false
	}
	maj, min := unix.Major(st.Rdev), unix.Minor(st.Rdev)
	switch {
	case maj == ttyAuxMajor && min == ttyCttyMinor:
		return model.TtyCtty, true
	case maj == ttyAuxMajor && min == ttyConsMinor:
		return model.TtyConsole, true
	case maj == ttyMajor && min < ttyVTMinors:
		return model.TtyVT, true
	case maj == ttyMajor, maj == serialUSBMajor, maj == serialACMMajor, maj == serialAMAMajor, maj == serialHVCMajor:
		return model.TtySerial, true
	}
	return 0, false
}

// ttyAlias reports whether opening the device reaches another one.
func ttyAlias(o *model.TtyOther) bool {
	return o.Kind == model.TtyCtty || o.Kind == model.TtyConsole || o.Kind == model.TtyVT && unix.Minor(o.Rdev) == 0
}

// newDecodeDev undoes the kernel's new_encode_dev (tty_nr of
// /proc/PID/stat, TIOCGDEV).
func newDecodeDev(nr uint64) uint64 {
	return unix.Mkdev(uint32(nr>>8&0xfff), uint32(nr&0xff|nr>>12&0xfff00))
}

func devName(dev uint64) string {
	return fmt.Sprintf("%d:%d", unix.Major(dev), unix.Minor(dev))
}

// collectOther fills f, a description (godwit's copy c) of a tty of kind k.
func collectOther(c int, k model.TtyKind, fd *FD, f *model.File) error {
	o := &model.TtyOther{Kind: k, Rdev: fd.Stat.Rdev, Dev: fd.Stat.Dev}
	if ttyAlias(o) {
		real, err := unix.IoctlGetUint32(c, unix.TIOCGDEV)
		if err != nil {
			return fmt.Errorf("TIOCGDEV: %w (the terminal it reached is gone: not supported)", err)
		}
		o.Real = newDecodeDev(uint64(real))
	}
	if k != model.TtyCtty {
		// The controlling terminal's state is its own (a pty of the
		// tree); a line's is read here.
		t, err := unix.IoctlGetTermios(c, unix.TCGETS2)
		if err != nil {
			return fmt.Errorf("TCGETS2: %w", err)
		}
		ws, err := unix.IoctlGetWinsize(c, unix.TIOCGWINSZ)
		if err != nil {
			return fmt.Errorf("TIOCGWINSZ: %w", err)
		}
		o.Termios, o.Winsize = *t, *ws
		pfd := []unix.PollFd{{Fd: int32(c), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, 0); err != nil {
			return fmt.Errorf("poll: %w", err)
		}
		if q, err := unix.IoctlGetInt(c, unix.TIOCINQ); err != nil {
			return fmt.Errorf("TIOCINQ: %w", err)
		} else if q > 0 {
			return fmt.Errorf("%d bytes of input not read yet (a tty cannot be peeked): not supported", q)
		}
	}
	f.Kind, f.Size, f.BuildID = model.Tty, nil, nil
	f.Tty = &model.TtyFile{Other: o}
	return nil
}

// checkCttyAliases refuses a /dev/tty description that the restore would
// not reopen onto the same terminal: held by a task without a
// controlling terminal, or reaching another terminal than the task's.
func (fl *Files) checkCttyAliases(t *model.Tree) error {
	for _, k := range t.Tasks {
		for _, e := range k.FDs {
			f := t.Files[e.File]
			if f == nil || f.Tty == nil || f.Tty.Other == nil || f.Tty.Other.Kind != model.TtyCtty {
				continue
			}
			real := f.Tty.Other.Real
			dev, ok := fl.cttys[k.Pid]
			switch {
			case !ok:
				return fmt.Errorf("task %d fd %d: /dev/tty reaching %s, but the task has no controlling terminal now: not supported", k.Pid, e.Num, devName(real))
			case dev != real:
				return fmt.Errorf("task %d fd %d: /dev/tty reaching %s, which is no longer the task's controlling terminal (%s): not supported", k.Pid, e.Num, devName(real), devName(dev))
			}
		}
	}
	return nil
}

// openOther makes a description of a tty that is not a pty of the tree.
func openOther(rs *restoreFDs, what string, f *model.File, flags int) (uint64, error) {
	o := f.Tty.Other
	switch o.Kind {
	case model.TtyExternal:
		key := externalTTYKey(o.Rdev, o.Dev)
		return 0, fmt.Errorf("%s: external tty %s: give it to the restore with --inherit-fd fd[N]:%s", what, key, key)
	case model.TtyCtty:
		return openCtty(rs, what, f, flags)
	case model.TtyConsole, model.TtyVT, model.TtySerial:
	default:
		return 0, fmt.Errorf("%s: tty of kind %d unknown to godwit", what, o.Kind)
	}
	fd, err := reopenTty(f.Path, o.Rdev, flags)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	defer unix.Close(fd)
	if ttyAlias(o) {
		real, err := unix.IoctlGetUint32(fd, unix.TIOCGDEV)
		if err != nil {
			return 0, fmt.Errorf("%s: %s: TIOCGDEV: %w", what, f.Path, err)
		}
		if r := newDecodeDev(uint64(real)); r != o.Real {
			return 0, fmt.Errorf("%s: %s reaches %s here, not %s as dumped", what, f.Path, devName(r), devName(o.Real))
		}
	}
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS2)
	if err != nil {
		return 0, fmt.Errorf("%s: %s: TCGETS2: %w", what, f.Path, err)
	}
	if !sameTermios(t, &o.Termios) {
		want := o.Termios
		if err := unix.IoctlSetTermios(fd, unix.TCSETS2, &want); err != nil {
			return 0, fmt.Errorf("%s: %s: set termios: %w", what, f.Path, err)
		}
		if t, err = unix.IoctlGetTermios(fd, unix.TCGETS2); err != nil || !sameTermios(t, &o.Termios) {
			return 0, fmt.Errorf("%s: %s: termios read back as %+v, want %+v", what, f.Path, t, o.Termios)
		}
	}
	ws, err := unix.IoctlGetWinsize(fd, unix.TIOCGWINSZ)
	if err != nil {
		return 0, fmt.Errorf("%s: %s: TIOCGWINSZ: %w", what, f.Path, err)
	}
	if *ws != o.Winsize {
		if err := unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &o.Winsize); err != nil {
			return 0, fmt.Errorf("%s: %s: set window size: %w", what, f.Path, err)
		}
	}
	if err := setTtyFlags(fd, flags); err != nil {
		return 0, fmt.Errorf("%s: %s: %w", what, f.Path, err)
	}
	return rs.install(what, fd)
}

// ttySetflMask is what F_SETFL can change of a description's flags
// (SETFL_MASK in fs/fcntl.c).
const ttySetflMask = unix.O_APPEND | unix.O_NONBLOCK | unix.O_DIRECT | unix.O_NOATIME | unix.O_ASYNC

// ttyReopenFlags are the flags of the open that reaches a console, VT or
// serial line: the dumped ones, with O_NONBLOCK (a serial line waiting for
// carrier would block a blocking open, and the restore with it) and
// O_NOCTTY (godwit must not take it as its own terminal).
func ttyReopenFlags(dumped int) int {
	return dumped | unix.O_NONBLOCK | unix.O_NOCTTY | unix.O_CLOEXEC
}

// reopenTty opens path without following a link and without opening the
// device (O_PATH), checks it is the character device rdev, and only then
// opens it, through that fd, with ttyReopenFlags.
func reopenTty(path string, rdev uint64, dumped int) (int, error) {
	p, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(p)
	var st unix.Stat_t
	if err := unix.Fstat(p, &st); err != nil {
		return -1, fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != rdev {
		return -1, fmt.Errorf("%s is device %s (mode %#o) here, not %s as dumped", path, devName(st.Rdev), st.Mode&unix.S_IFMT, devName(rdev))
	}
	fd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(p), ttyReopenFlags(dumped), 0)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", path, err)
	}
	return fd, nil
}

// setTtyFlags gives the description opened by reopenTty the dumped status
// flags (O_NONBLOCK off again if it was) and checks them.
func setTtyFlags(fd, dumped int) error {
	want := dumped & ttySetflMask
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, want); err != nil {
		return fmt.Errorf("F_SETFL %#x: %w", want, err)
	}
	got, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return fmt.Errorf("F_GETFL: %w", err)
	}
	if got&ttySetflMask != want {
		return fmt.Errorf("status flags read back as %#x, want %#x", got&ttySetflMask, want)
	}
	return nil
}

// openCtty opens /dev/tty in the task, once it has its controlling
// terminal: a session leader whose terminal is a pty of the tree gets it
// now (the ctty driver, later, finds it done).
func openCtty(rs *restoreFDs, what string, f *model.File, flags int) (uint64, error) {
	if p := sessionPty(rs.r); p != nil {
		if _, err := ptyMaster(rs, what, &model.File{Tty: &model.TtyFile{Pty: p}}, p); err != nil {
			return 0, err
		}
		if err := giveCtty(rs.r, rs.s, p, false); err != nil {
			return 0, err
		}
	}
	fd, err := rs.s.Openat(what, "/dev/tty", flags&^unix.O_CLOEXEC)
	if err != nil {
		return 0, fmt.Errorf("%s (the task's controlling terminal): %w", what, err)
	}
	c, err := grabFD(rs.s.Pid(), int(fd))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	defer unix.Close(c)
	real, err := unix.IoctlGetUint32(c, unix.TIOCGDEV)
	if err != nil {
		return 0, fmt.Errorf("%s: /dev/tty: TIOCGDEV: %w", what, err)
	}
	// With --shell-job the terminal is godwit's, another one by design.
	if r := newDecodeDev(uint64(real)); r != f.Tty.Other.Real && !rs.r.ShellJob {
		return 0, fmt.Errorf("%s: /dev/tty reaches %s here, not %s as dumped", what, devName(r), devName(f.Tty.Other.Real))
	}
	return fd, nil
}

// externalTTYKey is the resource name of an external tty, as CRIU spells
// it: tty[RDEV:DEV], both in hex.
func externalTTYKey(rdev, dev uint64) string {
	return fmt.Sprintf("tty[%x:%x]", rdev, dev)
}

// ParseExternalTTY reads the RDEV:DEV of --external tty[RDEV:DEV] and
// --inherit-fd fd[N]:tty[RDEV:DEV] (hex, as CRIU prints them).
func ParseExternalTTY(id string) (rdev, dev uint64, err error) {
	a, b, ok := strings.Cut(id, ":")
	if ok {
		if rdev, err = strconv.ParseUint(a, 16, 64); err == nil {
			dev, err = strconv.ParseUint(b, 16, 64)
		}
	}
	if !ok || err != nil {
		return 0, 0, fmt.Errorf("tty[%s]: want tty[RDEV:DEV], both in hex", id)
	}
	return rdev, dev, nil
}
