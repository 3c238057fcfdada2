package drivers

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"godwit/internal/inject"
	"godwit/internal/model"
	"godwit/internal/procfs"
)

// Unix98 ptys: the master (/dev/ptmx) and slave (/dev/pts/N) ends, with
// the pty's index, termios (and locked termios), window size, packet
// mode, lock, exclusive mode, the owner and mode of /dev/pts/N, and the
// session whose controlling terminal it is with its foreground group.
//
// Queued bytes cannot be read without consuming them (a tty has no peek),
// so a pty with bytes queued in either direction is refused. The kernel
// moves written bytes to the reader's queue from a work item: a poll of
// each end runs it first, so that the counts are exact. One case stays
// invisible: in canonical mode, TIOCINQ counts whole lines only, and a
// partial line typed but not ended is not reported by any call (poll
// waits for a whole line too; only EXTPROC or ICANON off would count it,
// and setting either changes the state: turning ICANON back on pushes
// the partial line as a line of its own). It cannot be detected, so it
// cannot be refused: such bytes are lost. An end whose output is stopped
// (tcflow TCOOFF, ^S) is refused (refuseStopped).
//
// A pty is restored by opening /dev/ptmx until the kernel hands out the
// dumped index (it gives the lowest free one: the lower ones opened on
// the way are closed again); an index in use here refuses the restore.
// A slave whose master is outside the tree (the terminal a shell job runs
// on) is reopened by its path, only with --shell-job on both sides.

func init() { registerFDKind(ttyKind{}) }

// Device numbers of Unix98 ptys (include/uapi/linux/major.h): the
// multiplexer /dev/ptmx is 5:2, the slaves have majors 136 to 143.
const (
	ttyAuxMajor     = 5
	ptmxMinor       = 2
	ptySlaveMajor   = 136
	ptySlaveMajors  = 8
	ptyMinorsPerMaj = 256
)

// ptyKeyMaster and ptyKeySlave key, in a restore's table of godwit's
// copies of objects (restoreFDs.ghosts, by device and inode), godwit's
// master and a slave it holds open, by pty index: no device number is
// all ones.
const (
	ptyKeyMaster = ^uint64(0) - 1
	ptyKeySlave  = ^uint64(0) - 2
)

type ttyKind struct{}

func (ttyKind) name() string             { return "tty" }
func (ttyKind) fileKind() model.FileKind { return model.Tty }
func (ttyKind) match(_ string, st *unix.Stat_t) bool {
	if _, _, ok := ptyEnd(st); ok {
		return true
	}
	_, ok := otherTty(st)
	return ok
}
func (ttyKind) check(int, int, uint64) error { return nil }

// ptyEnd tells a pty end by its device: the master, or the slave of
// index idx.
func ptyEnd(st *unix.Stat_t) (master bool, idx uint32, ok bool) {
	if st.Mode&unix.S_IFMT != unix.S_IFCHR {
		return false, 0, false
	}
	maj, min := unix.Major(st.Rdev), unix.Minor(st.Rdev)
	switch {
	case maj == ttyAuxMajor && min == ptmxMinor:
		return true, 0, true
	case maj >= ptySlaveMajor && maj < ptySlaveMajor+ptySlaveMajors && min < ptyMinorsPerMaj:
		return false, (maj-ptySlaveMajor)*ptyMinorsPerMaj + min, true
	}
	return false, 0, false
}

// pty returns the tree's state of pty idx, adding it once.
func (fl *Files) pty(idx uint32) *model.PtyState {
	if fl.ptys == nil {
		fl.ptys = map[uint32]*model.PtyState{}
	}
	p := fl.ptys[idx]
	if p == nil {
		p = &model.PtyState{Index: idx}
		fl.ptys[idx] = p
	}
	return p
}

func (ttyKind) collect(fl *Files, pid int, fd *FD, f *model.File) error {
	if fl.ExtTTY[[2]uint64{fd.Stat.Rdev, fd.Stat.Dev}] {
		// Left out: the restore is given it (--inherit-fd).
		f.Kind, f.Size, f.BuildID = model.Tty, nil, nil
		f.Tty = &model.TtyFile{Other: &model.TtyOther{Kind: model.TtyExternal, Rdev: fd.Stat.Rdev, Dev: fd.Stat.Dev}}
		return nil
	}
	c, err := grabFD(pid, fd.Num)
	if err != nil {
		return err
	}
	defer unix.Close(c)
	if k, ok := otherTty(&fd.Stat); ok {
		return collectOther(c, k, fd, f)
	}
	master, idx, _ := ptyEnd(&fd.Stat)
	if master {
		n, err := unix.IoctlGetUint32(c, unix.TIOCGPTN)
		if err != nil {
			return fmt.Errorf("TIOCGPTN: %w", err)
		}
		idx = n
	}
	p := fl.pty(idx)
	// Either end reads the pair's termios and window size (on the
	// master, the kernel answers for the slave).
	t, err := unix.IoctlGetTermios(c, unix.TCGETS2)
	if err != nil {
		return fmt.Errorf("TCGETS2: %w", err)
	}
	lt, err := unix.IoctlGetTermios(c, unix.TIOCGLCKTRMIOS)
	if err != nil {
		return fmt.Errorf("TIOCGLCKTRMIOS: %w", err)
	}
	ws, err := unix.IoctlGetWinsize(c, unix.TIOCGWINSZ)
	if err != nil {
		return fmt.Errorf("TIOCGWINSZ: %w", err)
	}
	p.Termios, p.LockedTermios, p.Winsize = *t, *lt, *ws
	// Run the pending move of written bytes into this end's queue,
	// then count them.
	pfd := []unix.PollFd{{Fd: int32(c), Events: unix.POLLIN}}
	if _, err := unix.Poll(pfd, 0); err != nil {
		return fmt.Errorf("poll: %w", err)
	}
	q, err := unix.IoctlGetInt(c, unix.TIOCINQ)
	if err != nil {
		return fmt.Errorf("TIOCINQ: %w", err)
	}
	path := fmt.Sprintf("/dev/pts/%d", idx)
	if err := refuseStopped(c, idx, master); err != nil {
		return err
	}
	if master {
		if q > 0 {
			return fmt.Errorf("pty %d: %d bytes the slave wrote are not read yet through the master (a tty cannot be peeked): not supported", idx, q)
		}
		if p.HasMaster {
			return fmt.Errorf("pty %d: two master descriptions", idx)
		}
		p.HasMaster = true
		lk, err := unix.IoctlGetInt(c, unix.TIOCGPTLCK)
		if err != nil {
			return fmt.Errorf("TIOCGPTLCK: %w", err)
		}
		pk, err := unix.IoctlGetInt(c, unix.TIOCGPKT)
		if err != nil {
			return fmt.Errorf("TIOCGPKT: %w", err)
		}
		p.Locked, p.Packet = lk != 0, pk != 0
		p.SlaveClosed = pfd[0].Revents&unix.POLLHUP != 0
		// The slave's session and foreground group (the master asks
		// for its peer); ENOTTY: it is no one's terminal.
		if sid, err := unix.IoctlGetInt(c, unix.TIOCGSID); err == nil {
			pg, err := unix.IoctlGetInt(c, unix.TIOCGPGRP)
			if err != nil {
				return fmt.Errorf("TIOCGPGRP: %w", err)
			}
			p.Sid, p.Pgrp = sid, pg
		} else if !errors.Is(err, unix.ENOTTY) {
			return fmt.Errorf("TIOCGSID: %w", err)
		}
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			return fmt.Errorf("stat %s: %w", path, err)
		}
		p.UID, p.GID, p.Mode, p.ModeKnown = st.Uid, st.Gid, st.Mode&0o7777, true
		path = "/dev/ptmx"
	} else {
		if q > 0 {
			return fmt.Errorf("pty %d: %d bytes of input not read yet (a tty cannot be peeked): not supported", idx, q)
		}
		ex, err := unix.IoctlGetInt(c, unix.TIOCGEXCL)
		if err != nil {
			return fmt.Errorf("TIOCGEXCL: %w", err)
		}
		p.Exclusive, p.Slave = ex != 0, true
		if !p.HasMaster {
			p.UID, p.GID, p.Mode, p.ModeKnown = fd.Stat.Uid, fd.Stat.Gid, fd.Stat.Mode&0o7777, true
		}
	}
	f.Kind, f.Path, f.Size, f.BuildID = model.Tty, path, nil, nil
	f.Tty = &model.TtyFile{Master: master, Pty: p}
	return nil
}

// refuseStopped fails when end c of pty idx cannot be written to: its
// output was stopped (tcflow TCOOFF, or ^S with IXON), which no image
// field keeps and no ioctl reads. A pty's write room is 0 when it is
// stopped, or when the other end's queue is full (which the dump refuses
// anyway as unread bytes); poll reports POLLOUT from it, with no side
// effect. A hung-up end answers POLLHUP or POLLERR.
func refuseStopped(c int, idx uint32, master bool) error {
	pfd := []unix.PollFd{{Fd: int32(c), Events: unix.POLLOUT}}
	if _, err := unix.Poll(pfd, 0); err != nil {
		return fmt.Errorf("poll: %w", err)
	}
	if pfd[0].Revents&(unix.POLLOUT|unix.POLLHUP|unix.POLLERR) != 0 {
		return nil
	}
	end := "slave"
	if master {
		end = "master"
	}
	return fmt.Errorf("pty %d: its %s cannot be written to now (output stopped by tcflow TCOOFF or ^S, or the other end's queue full): not supported yet", idx, end)
}

// CheckFiles refuses, once the whole tree is collected, the files whose
// restore depends on other tasks and that the tree does not hold: ptys
// and controlling terminals (CheckTTYs, checkCttys), pidfds and /proc
// files of processes outside the tree, and unix sockets whose peer is
// outside it unless ext allows them (it marks those External).
func (fl *Files) CheckFiles(t *model.Tree, shellJob bool, ext ExtUnix) error {
	if err := fl.checkFDs(t); err != nil {
		return err
	}
	if err := CheckTTYs(t, shellJob); err != nil {
		return err
	}
	if err := fl.checkCttys(t, shellJob); err != nil {
		return err
	}
	if err := checkPidfds(t); err != nil {
		return err
	}
	return checkUnixPeers(t, ext)
}

// CheckTTYs refuses, once the whole tree is collected, the ptys it cannot
// restore exactly: a slave whose master is outside the tree (a shell job's
// terminal: only with --shell-job), a master whose slave is open outside
// the tree (or not opened yet), and a controlling terminal whose session
// leader is outside the tree (only with --shell-job).
func CheckTTYs(t *model.Tree, shellJob bool) error {
	pids := map[int]bool{}
	for _, k := range t.Tasks {
		pids[k.Pid] = true
	}
	for _, k := range t.Tasks {
		for _, e := range k.FDs {
			f := t.Files[e.File]
			if f == nil || f.Kind != model.Tty || f.Tty == nil {
				continue
			}
			p := f.Tty.Pty
			if p == nil {
				continue // another tty: checkCttys, and the restore, check it
			}
			var err error
			switch {
			case !p.HasMaster && !shellJob:
				err = fmt.Errorf("its master is outside the tree (a shell job's terminal): dump and restore with --shell-job")
			case p.HasMaster && !p.Slave && !p.SlaveClosed:
				err = fmt.Errorf("its slave /dev/pts/%d is open outside the tree, or not opened yet: not supported", p.Index)
			case p.Sid != 0 && !pids[p.Sid] && !shellJob:
				err = fmt.Errorf("the controlling terminal of session %d, whose leader is not in the tree: dump and restore with --shell-job", p.Sid)
			}
			if err != nil {
				return fmt.Errorf("task %d fd %d: tty %s: pty %d: %w", k.Pid, e.Num, f.Path, p.Index, err)
			}
		}
	}
	return nil
}

func (ttyKind) open(rs *restoreFDs, what string, f *model.File) (uint64, error) {
	flags := int(f.Flags)&^(unix.O_CREAT|unix.O_TRUNC|unix.O_EXCL|unix.O_CLOEXEC) | unix.O_NOCTTY | unix.O_CLOEXEC
	if f.Tty != nil && f.Tty.Pty == nil && f.Tty.Other != nil {
		return openOther(rs, what, f, flags)
	}
	if f.Tty == nil || f.Tty.Pty == nil {
		return 0, fmt.Errorf("%s: tty without its state", what)
	}
	p := f.Tty.Pty
	if !p.HasMaster {
		return openExternalSlave(rs, what, f, flags)
	}
	m, err := ptyMaster(rs, what, f, p)
	if err != nil {
		return 0, err
	}
	var fd int
	if f.Tty.Master {
		// The master's one description: godwit's, with its flags.
		if _, err := unix.FcntlInt(uintptr(m), unix.F_SETFL, flags&^unix.O_ACCMODE); err != nil {
			return 0, fmt.Errorf("%s: set flags %#o: %w", what, flags, err)
		}
		return rs.install(what, m)
	}
	path := fmt.Sprintf("/dev/pts/%d", p.Index)
	if fd, err = unix.Open(path, flags, 0); err != nil {
		return 0, fmt.Errorf("%s: open %s: %w", what, path, err)
	}
	defer unix.Close(fd)
	return rs.install(what, fd)
}

// finish locks the pty again once every slave description of the task
// is open.
func (ttyKind) finish(rs *restoreFDs, what string, fd uint64, f *model.File) error {
	if !f.Tty.Master || !f.Tty.Pty.Locked {
		return nil
	}
	m, ok := rs.ghosts[[2]uint64{ptyKeyMaster, uint64(f.Tty.Pty.Index)}]
	if !ok {
		return fmt.Errorf("%s: pty %d: godwit's master is gone", what, f.Tty.Pty.Index)
	}
	if err := unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 1); err != nil {
		return fmt.Errorf("%s: lock pty %d: %w", what, f.Tty.Pty.Index, err)
	}
	return nil
}

// ptyMaster returns godwit's descriptor of the master of pty p: made by
// this task's restore, taken from another task of the tree, or made now.
func ptyMaster(rs *restoreFDs, what string, f *model.File, p *model.PtyState) (int, error) {
	key := [2]uint64{ptyKeyMaster, uint64(p.Index)}
	if m, ok := rs.ghosts[key]; ok {
		return m, nil
	}
	for id, at := range rs.r.Opened {
		of := rs.r.Tree.Files[id]
		if at.Pid == rs.r.Task.Pid || of == nil || of.Tty == nil || of.Tty.Pty != p || !of.Tty.Master {
			continue
		}
		m, err := grabFD(at.Pid, at.FD)
		if err != nil {
			return -1, fmt.Errorf("%s: pty %d master held by %d fd %d: %w", what, p.Index, at.Pid, at.FD, err)
		}
		rs.ghosts[key] = m
		return m, nil
	}
	if h := rs.r.Held; h != nil && h.ptys[p.Index] != nil && h.ptys[p.Index][0] >= 0 {
		// Made before the tree's fds (EarlyCtty); the slave stays with
		// Held. The task that holds the master takes it; another task
		// (opening a slave) uses a copy, closed at its end, and leaves
		// Held's: the master's last close would hang the terminal up.
		m := h.ptys[p.Index][0]
		if !f.Tty.Master {
			c, err := unix.FcntlInt(uintptr(m), unix.F_DUPFD_CLOEXEC, 0)
			if err != nil {
				return -1, fmt.Errorf("%s: pty %d: copy godwit's master: %w", what, p.Index, err)
			}
			rs.ghosts[key] = c
			return c, nil
		}
		h.ptys[p.Index][0] = -1
		rs.ghosts[key] = m
		return m, nil
	}
	if !f.Tty.Master && !holdsMaster(rs.r.Task, rs.r.Tree, p) {
		return -1, fmt.Errorf("%s: pty %d: its slave is restored before the task that holds its master: not supported yet", what, p.Index)
	}
	m, err := makePty(rs, what, p)
	if err != nil {
		return -1, err
	}
	rs.ghosts[key] = m
	return m, nil
}

func holdsMaster(k *model.Task, t *model.Tree, p *model.PtyState) bool {
	for _, e := range k.FDs {
		if f := t.Files[e.File]; f != nil && f.Tty != nil && f.Tty.Master && f.Tty.Pty == p {
			return true
		}
	}
	return false
}

// makePty makes pty p again and returns godwit's master. Its slave stays
// open in godwit until the task's fds are all in place (closing the last
// slave hangs the master up), or is closed at once where the dump saw it
// closed.
func makePty(rs *restoreFDs, what string, p *model.PtyState) (int, error) {
	m, s, err := makePtyPair(what, p)
	if err != nil {
		return -1, err
	}
	if p.SlaveClosed {
		unix.Close(s)
	} else {
		rs.ghosts[[2]uint64{ptyKeySlave, uint64(p.Index)}] = s
	}
	return m, nil
}

// makePtyPair makes pty p again with its state, and returns godwit's
// master and a slave.
func makePtyPair(what string, p *model.PtyState) (m, s int, err error) {
	var lower []int
	defer func() {
		for _, fd := range lower {
			unix.Close(fd)
		}
	}()
	for {
		fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, -1, fmt.Errorf("%s: open /dev/ptmx: %w", what, err)
		}
		n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
		if err != nil {
			unix.Close(fd)
			return -1, -1, fmt.Errorf("%s: TIOCGPTN: %w", what, err)
		}
		if n == p.Index {
			m = fd
			break
		}
		if n > p.Index {
			unix.Close(fd)
			return -1, -1, fmt.Errorf("%s: pty %d is in use here (/dev/pts/%d exists)", what, p.Index, p.Index)
		}
		lower = append(lower, fd) // a lower free index: hold it until ours comes
	}
	defer func() {
		if err != nil {
			unix.Close(m)
		}
	}()
	if err := unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 0); err != nil {
		return -1, -1, fmt.Errorf("%s: unlock pty %d: %w", what, p.Index, err)
	}
	path := fmt.Sprintf("/dev/pts/%d", p.Index)
	s, err = unix.Open(path, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, -1, fmt.Errorf("%s: open %s: %w", what, path, err)
	}
	t, lt := p.Termios, p.LockedTermios
	switch {
	case unix.IoctlSetTermios(s, unix.TCSETS2, &t) != nil:
		err = fmt.Errorf("set termios")
	case unix.IoctlSetTermios(s, unix.TIOCSLCKTRMIOS, &lt) != nil:
		err = fmt.Errorf("set locked termios")
	case unix.IoctlSetWinsize(s, unix.TIOCSWINSZ, &p.Winsize) != nil:
		err = fmt.Errorf("set window size")
	}
	if err == nil {
		if got, gerr := unix.IoctlGetTermios(s, unix.TCGETS2); gerr != nil || !sameTermios(got, &t) {
			err = fmt.Errorf("termios read back as %+v, want %+v", got, t)
		}
	}
	if err == nil && p.Packet {
		err = unix.IoctlSetPointerInt(m, unix.TIOCPKT, 1)
	}
	if err == nil && p.Exclusive {
		err = unix.IoctlSetInt(s, unix.TIOCEXCL, 0)
	}
	if err == nil {
		// An unknown mode (a CRIU-written image) leaves the new node's.
		if err = unix.Fchown(s, int(p.UID), int(p.GID)); err == nil && p.ModeKnown {
			err = unix.Fchmod(s, p.Mode&0o7777)
		}
	}
	if err != nil {
		unix.Close(s)
		return -1, -1, fmt.Errorf("%s: pty %d: %w", what, p.Index, err)
	}
	return m, s, nil
}

// EarlyCtty makes, for session leader k (just made, before its
// children), the pty of the tree that is its session's controlling
// terminal when the session's members have it too: they inherit it only
// if the leader has it when it makes them. h keeps godwit's master and a
// slave; the slave path is returned for the leader to open and make its
// terminal (TIOCSCTTY). "" when k needs no terminal now.
func EarlyCtty(t *model.Tree, k *model.Task, h *Held) (string, error) {
	var p *model.PtyState
	for _, f := range t.Files {
		if f.Tty != nil && f.Tty.Pty != nil && f.Tty.Pty.Sid == k.Pid && f.Tty.Pty.HasMaster && f.Tty.Pty.MembersCtty {
			p = f.Tty.Pty
			break
		}
	}
	if p == nil {
		return "", nil
	}
	what := fmt.Sprintf("task %d: controlling terminal of its session", k.Pid)
	m, s, err := makePtyPair(what, p)
	if err != nil {
		return "", err
	}
	h.ptys[p.Index] = &[2]int{m, s}
	return fmt.Sprintf("/dev/pts/%d", p.Index), nil
}

func sameTermios(a, b *unix.Termios) bool {
	return a.Iflag == b.Iflag && a.Oflag == b.Oflag && a.Cflag == b.Cflag && a.Lflag == b.Lflag &&
		a.Line == b.Line && a.Cc == b.Cc && a.Ispeed == b.Ispeed && a.Ospeed == b.Ospeed
}

// openExternalSlave reopens the slave of a pty outside the tree (a shell
// job's terminal, still there: its master is the shell's) by its path.
func openExternalSlave(rs *restoreFDs, what string, f *model.File, flags int) (uint64, error) {
	p := f.Tty.Pty
	if !rs.r.ShellJob {
		return 0, fmt.Errorf("%s: /dev/pts/%d, whose master is outside the tree: restore with --shell-job", what, p.Index)
	}
	path := fmt.Sprintf("/dev/pts/%d", p.Index)
	fd, err := unix.Open(path, flags, 0)
	if err != nil {
		return 0, fmt.Errorf("%s: reopen the shell job's terminal %s: %w", what, path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("%s: stat %s: %w", what, path, err)
	}
	if master, idx, ok := ptyEnd(&st); !ok || master || idx != p.Index {
		return 0, fmt.Errorf("%s: %s is not the slave of pty %d", what, path, p.Index)
	}
	return rs.install(what, fd)
}

// cttyDriver gives a session leader its controlling terminal back (a pty
// of the tree) and the terminal its foreground process group, once the
// leader's fds are in place: TIOCSCTTY on an fd of the pty (either end:
// on the master the kernel acts for the slave), else on the slave opened
// for the purpose.
// The terminal's state is collected with the fds (ttyKind.collect); the
// driver collects which tasks have one (checkCttys).
type cttyDriver struct{}

// Collect notes the task's controlling terminal, if any.
func (cttyDriver) Collect(d *Dump) error {
	st, err := procfs.ReadStat(d.Pid)
	if err != nil {
		return err
	}
	if st.TtyNr == 0 {
		return nil
	}
	if d.Files.cttys == nil {
		d.Files.cttys = map[int]uint64{}
	}
	d.Files.cttys[d.Pid] = newDecodeDev(uint64(st.TtyNr))
	return nil
}

// checkCttys refuses a task whose controlling terminal the restore would
// not give back: one outside the tree (a shell job's: only with
// --shell-job), and a member (not the leader) of a session whose terminal
// is a pty of the tree (the terminal is given to the leader once the
// tree is made, which its members, made before, do not inherit).
func (fl *Files) checkCttys(t *model.Tree, shellJob bool) error {
	if err := fl.checkCttyAliases(t); err != nil {
		return err
	}
	for _, k := range t.Tasks {
		dev, ok := fl.cttys[k.Pid]
		if !ok {
			continue
		}
		var st unix.Stat_t
		st.Mode, st.Rdev = unix.S_IFCHR, dev
		master, idx, isPty := ptyEnd(&st)
		name := fmt.Sprintf("%d:%d", unix.Major(dev), unix.Minor(dev))
		if isPty && !master {
			name = fmt.Sprintf("/dev/pts/%d", idx)
		}
		p := fl.ptys[idx]
		switch {
		case isPty && !master && p != nil && p.HasMaster && p.Sid == k.Sid && k.Pid == k.Sid:
		case isPty && !master && p != nil && p.HasMaster && p.Sid == k.Sid:
			// A member: it inherits the terminal, given to the leader
			// before it makes the session's tasks (EarlyCtty).
			p.MembersCtty = true
		case shellJob:
		default:
			return fmt.Errorf("task %d: its controlling terminal %s is outside the tree: dump and restore with --shell-job", k.Pid, name)
		}
	}
	// Then every member must have it: they all inherit it.
	for _, p := range fl.ptys {
		if !p.MembersCtty {
			continue
		}
		for _, k := range t.Tasks {
			if k.Sid != p.Sid || k.Pid == k.Sid || k.State != model.Alive && k.State != model.Stopped {
				continue
			}
			if dev, ok := fl.cttys[k.Pid]; !ok || dev != unix.Mkdev(ptySlaveMajor+p.Index/ptyMinorsPerMaj, p.Index%ptyMinorsPerMaj) {
				return fmt.Errorf("task %d: a member of session %d without its controlling terminal /dev/pts/%d, which other members have: not supported (the restore gives it to every member)", k.Pid, p.Sid, p.Index)
			}
		}
	}
	return nil
}

func (cttyDriver) Name() string    { return "ctty" }
func (cttyDriver) After() []string { return []string{"files"} }

// Scratch offset of the foreground group for TIOCSPGRP (after the paths
// openat puts at 0).
const scratchCttyPgrp = 1024

func (cttyDriver) Restore(r *Restore, s *inject.Session) error {
	p := sessionPty(r)
	if p == nil {
		return nil
	}
	return giveCtty(r, s, p, true)
}

// sessionPty is the pty of the tree that is the controlling terminal of
// the session the task leads, nil if none is (or the task takes
// godwit's session and terminal: --shell-job).
func sessionPty(r *Restore) *model.PtyState {
	if r.ShellJob && r.Task.Pid == r.Tree.Root().Pid {
		return nil // godwit's session and terminal
	}
	for _, f := range r.Tree.Files {
		if f.Tty != nil && f.Tty.Pty != nil && f.Tty.Pty.Sid == r.Task.Pid && f.Tty.Pty.HasMaster {
			return f.Tty.Pty
		}
	}
	return nil
}

// giveCtty makes pty p the controlling terminal of the task, a session
// leader, with its foreground group: TIOCSCTTY (a no-op when it is so
// already) on an fd of the pty when ownFDs (every fd of the task is in
// place), else on the slave opened for the purpose.
func giveCtty(r *Restore, s *inject.Session, p *model.PtyState, ownFDs bool) error {
	what := fmt.Sprintf("controlling terminal /dev/pts/%d", p.Index)
	fd, opened := ^uint64(0), false
	for _, e := range r.Task.FDs {
		if f := r.Tree.Files[e.File]; ownFDs && f != nil && f.Tty != nil && f.Tty.Pty == p {
			fd = uint64(e.Num)
			break
		}
	}
	if fd == ^uint64(0) {
		var err error
		if fd, err = s.Openat(what, fmt.Sprintf("/dev/pts/%d", p.Index), unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC); err != nil {
			return err
		}
		opened = true
	}
	_, err := s.Call(what+": TIOCSCTTY", unix.SYS_IOCTL, fd, unix.TIOCSCTTY, 0)
	if err == nil && p.Pgrp != 0 {
		var a uint64
		if a, err = s.Put(scratchCttyPgrp, le.AppendUint32(nil, uint32(p.Pgrp))); err == nil {
			_, err = s.Call(fmt.Sprintf("%s: TIOCSPGRP %d", what, p.Pgrp), unix.SYS_IOCTL, fd, unix.TIOCSPGRP, a)
		}
	}
	if opened {
		if _, cerr := s.Call(what+": close", unix.SYS_CLOSE, fd); cerr != nil && err == nil {
			err = cerr
		}
	}
	return err
}
