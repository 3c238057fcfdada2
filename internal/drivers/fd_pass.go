package drivers

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"godwit/internal/inject"
	"godwit/internal/model"
)

// restoreFDs is one task's fd restore: the injection session, the kinds'
// objects made in godwit (a pipe's two ends), and the channel that hands
// godwit's descriptors to the task.
type restoreFDs struct {
	r *Restore
	s *inject.Session
	// sock is godwit's end of the channel, taskSock the task's (-1, 0
	// until the first descriptor is passed).
	sock     int
	taskSock uint64
	pipes    map[uint64]*livePipe
	fifos    map[uint64]bool   // FIFOs refilled
	socks    map[uint32]int    // unix sockets made, by inode
	ghosts   map[[2]uint64]int // deleted files made, by device and inode
	// elsewhere indexes what other tasks of the tree already hold, by
	// object (objectKey), built on first use; unixByIno this task's unix
	// sockets by inode.
	elsewhere map[string]OpenedAt
	unixByIno map[uint32]*model.File
	// listeners are the tree's TCP listeners by port, mine the files
	// this task holds (fd_inet.go), built on first use.
	listeners map[uint16][]model.ID
	mine      map[model.ID]bool
	group     fdGroup // fds placed by one batch (tryQueue)
	// deferCloexec: the fd being queued is close-on-exec.
	deferCloexec bool
	// moves: the channel's moves are queued in the session (Later)
	// and the fd table was not known when they were.
	moves bool
	// pidfds are godwit's pidfds of other tasks of the tree, by pid.
	pidfds map[int]int
}

// objectKey names the kernel object behind f that several descriptions
// (in several tasks) can share: a pipe, a FIFO, a deleted inode; "" for
// the others.
func objectKey(f *model.File) string {
	switch {
	case f.Kind == model.Pipe && f.Pipe != nil:
		return fmt.Sprintf("pipe:%d", f.Pipe.ID)
	case f.Kind == model.Path && f.Pipe != nil:
		return fmt.Sprintf("fifo:%d", f.Pipe.ID)
	case f.Kind == model.Ghost && f.Ghost != nil:
		return fmt.Sprintf("ghost:%d:%d", f.Ghost.Dev, f.Ghost.Ino)
	}
	return ""
}

// heldElsewhere finds an fd of another, already restored task that holds
// the object of key (one pass over the tree's opened files per task, not
// one per fd).
func (rs *restoreFDs) heldElsewhere(key string) (OpenedAt, bool) {
	if rs.elsewhere == nil {
		rs.elsewhere = map[string]OpenedAt{}
		for id, at := range rs.r.Opened {
			if f := rs.r.Tree.Files[id]; f != nil && at.Pid != rs.r.Task.Pid {
				if k := objectKey(f); k != "" {
					rs.elsewhere[k] = at
				}
			}
		}
	}
	at, ok := rs.elsewhere[key]
	return at, ok
}

// unixSocket finds this task's unix socket of inode ino.
func (rs *restoreFDs) unixSocket(ino uint32) *model.File {
	if rs.unixByIno == nil {
		rs.unixByIno = map[uint32]*model.File{}
		for _, e := range rs.r.Task.FDs {
			if f := rs.r.Tree.Files[e.File]; f != nil && f.Unix != nil {
				rs.unixByIno[f.Unix.Ino] = f
			}
		}
	}
	return rs.unixByIno[ino]
}

func newRestoreFDs(r *Restore, s *inject.Session) *restoreFDs {
	return &restoreFDs{r: r, s: s, sock: -1, pipes: map[uint64]*livePipe{}, fifos: map[uint64]bool{}, socks: map[uint32]int{}, ghosts: map[[2]uint64]int{},
		group: fdGroup{deferTo: fdDeferred}}
}

// Scratch offsets of the restore side's passing (the area from 0 holds
// paths for openat; these follow, 8-byte aligned).
const (
	scratchPassPair = 4096 // int[2] of socketpair
	scratchPassMsg  = 4112 // struct msghdr (56 bytes)
	scratchPassIov  = 4176 // struct iovec
	scratchPassByte = 4192 // the one data byte
	scratchPassCmsg = 4200 // cmsghdr + one int (24 bytes)
	scratchPassEnd  = 4224
)

// channel makes the task's end of the channel: a socketpair made in the
// task by injection, one end taken by godwit (pidfd_getfd) and closed in
// the task, the other moved to a number the task will not use, so that
// restoring an fd never lands on it.
func (rs *restoreFDs) channel() error {
	if rs.sock >= 0 {
		return nil
	}
	// The picture is made whole before the pair's fds come and go
	// unseen by /proc (their moves are queued).
	rs.settle()
	s := rs.s
	addr := s.Scratch() + scratchPassPair
	if _, err := s.Call("socketpair for fd passing", unix.SYS_SOCKETPAIR, unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0, addr); err != nil {
		return err
	}
	var b [8]byte
	if err := s.Read(scratchPassPair, b[:]); err != nil {
		return err
	}
	a, other := uint64(le.Uint32(b[:])), uint64(le.Uint32(b[4:]))
	pfd, err := unix.PidfdOpen(s.Pid(), 0)
	if err != nil {
		return fmt.Errorf("pidfd_open %d: %w", s.Pid(), err)
	}
	defer unix.Close(pfd)
	mine, err := unix.PidfdGetfd(pfd, int(other), 0)
	if err != nil {
		return fmt.Errorf("pidfd_getfd %d of %d: %w", other, s.Pid(), err)
	}
	rs.sock = mine
	// The lowest number the task does not use: within its fd limit, and
	// free now (the fds restored so far are the task's). The task's
	// end goes there, and the other is closed, with the next call that
	// runs in the task (in its stop): any use of the channel there is
	// a call too, after them.
	used := map[uint64]bool{}
	for _, e := range rs.r.Task.FDs {
		used[uint64(e.Num)] = true
	}
	gap := uint64(0)
	for used[gap] {
		gap++
	}
	s.Later("close passing socket", unix.SYS_CLOSE, other)
	if gap != a {
		s.Later("move passing socket", unix.SYS_DUP3, a, gap, unix.O_CLOEXEC)
		s.Later("close passing socket", unix.SYS_CLOSE, a)
	}
	rs.taskSock = gap
	if g := &rs.group; g.used != nil {
		// Closed and moved before any queued fd is placed.
		delete(g.used, a)
		delete(g.used, other)
		g.used[gap] = true
		g.low = 0
	} else {
		// list reads /proc: the moves must have run.
		rs.moves = true
	}
	return nil
}

// install hands godwit's descriptor fd to the task over SCM_RIGHTS and
// returns its number there (the lowest free one, not close-on-exec).
func (rs *restoreFDs) install(what string, fd int) (uint64, error) {
	if rs.group.deferTo != fdDeferred {
		return rs.queueInstall(what, fd, rs.deferCloexec)
	}
	if err := rs.channel(); err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	if err := unix.Sendmsg(rs.sock, []byte{0}, unix.UnixRights(fd), nil, 0); err != nil {
		return 0, fmt.Errorf("%s: pass descriptor: %w", what, err)
	}
	s := rs.s
	base := s.Scratch()
	var msg []byte
	msg = le64(msg, 0)                         // msg_name
	msg = le64(msg, 0)                         // msg_namelen + pad
	msg = le64(msg, base+scratchPassIov)       // msg_iov
	msg = le64(msg, 1)                         // msg_iovlen
	msg = le64(msg, base+scratchPassCmsg)      // msg_control
	msg = le64(msg, uint64(unix.CmsgSpace(4))) // msg_controllen
	msg = le64(msg, 0)                         // msg_flags + pad
	if _, err := s.Put(scratchPassMsg, msg); err != nil {
		return 0, err
	}
	iov := le64(le64(nil, base+scratchPassByte), 1) // iov_base, iov_len
	if _, err := s.Put(scratchPassIov, iov); err != nil {
		return 0, err
	}
	if _, err := s.Put(scratchPassCmsg, make([]byte, unix.CmsgSpace(4))); err != nil {
		return 0, err
	}
	if _, err := s.Call(what+": receive descriptor", unix.SYS_RECVMSG, rs.taskSock, base+scratchPassMsg, 0); err != nil {
		return 0, err
	}
	cm := make([]byte, unix.CmsgSpace(4))
	if err := s.Read(scratchPassCmsg, cm); err != nil {
		return 0, err
	}
	var flags [8]byte
	if err := s.Read(scratchPassMsg+48, flags[:]); err != nil {
		return 0, err
	}
	// cmsghdr: len (8), level (4), type (4), then the fd.
	if le.Uint32(flags[:])&unix.MSG_CTRUNC != 0 || le.Uint64(cm) != uint64(unix.CmsgLen(4)) ||
		le.Uint32(cm[8:]) != unix.SOL_SOCKET || le.Uint32(cm[12:]) != unix.SCM_RIGHTS {
		return 0, fmt.Errorf("%s: the task received no descriptor", what)
	}
	return uint64(le.Uint32(cm[16:])), nil
}

// close drops godwit's side: the channel (in both) and its copies of the
// objects it made.
func (rs *restoreFDs) close() error {
	for _, m := range rs.group.msgs { // a queue that never ran
		for _, fd := range m.fds {
			unix.Close(fd)
		}
	}
	rs.group.msgs = nil
	var err error
	if rs.sock >= 0 {
		unix.Close(rs.sock)
		rs.sock = -1
		// With the session's next call, or as it ends.
		rs.s.Later("close passing socket", unix.SYS_CLOSE, rs.taskSock)
	}
	for _, p := range rs.pidfds {
		unix.Close(p)
	}
	for _, p := range rs.pipes {
		p.close()
	}
	for _, s := range rs.socks {
		unix.Close(s)
	}
	for _, g := range rs.ghosts {
		unix.Close(g)
	}
	return err
}

// Held is what one restore keeps for the tasks still to come: godwit's
// descriptors of unix sockets made with a peer in another task, by inode.
type Held struct {
	socks map[uint32]int
	byIno map[uint32]*model.File // the tree's unix sockets, built on first use
	// ptys are the ptys made before the tasks' fds (a session's
	// terminal its members inherit), by index: the master until a
	// task takes it, and a slave kept open to the end (the last slave
	// closed would take the terminal from the session).
	ptys map[uint32]*[2]int
}

// NewHeld makes an empty Held.
func NewHeld() *Held { return &Held{socks: map[uint32]int{}, ptys: map[uint32]*[2]int{}} }

// Close drops everything not taken.
func (h *Held) Close() {
	if h == nil {
		return
	}
	for ino, fd := range h.socks {
		unix.Close(fd)
		delete(h.socks, ino)
	}
	for idx, p := range h.ptys {
		for _, fd := range p {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
		delete(h.ptys, idx)
	}
}

// peer finds the unix socket of inode ino among every file of the tree.
func (h *Held) peer(t *model.Tree, ino uint32) *model.File {
	if h.byIno == nil {
		h.byIno = map[uint32]*model.File{}
		for _, f := range t.Files {
			if f.Unix != nil {
				h.byIno[f.Unix.Ino] = f
			}
		}
	}
	return h.byIno[ino]
}

// Batched placement.
//
// Restoring fd by fd costs several injected calls each (open or receive,
// dup3, close). Most fds need none of that: when the lowest free number
// in the task is the fd's own, an open or a receive lands on it directly.
// fdGroup keeps godwit's picture of the task's fd table (read from
// /proc/PID/fd, then kept up to date), and while each new fd's number is
// the lowest free one it queues its placement: openat (with O_CLOEXEC
// when the fd has it) and lseek for files, and for objects godwit makes
// (pipes, eventfds, signalfds, timerfds) the descriptor itself, sent with
// up to SCM_MAX_FD others in one SCM_RIGHTS message and received by one
// recvmsg (MSG_CMSG_CLOEXEC for close-on-exec fds). The queue runs as one
// batch of injected calls; every fd is checked to have landed on its
// number. Anything else goes the fd-by-fd way, after the queue ran.
type fdGroup struct {
	used map[uint64]bool // the task's fd table, once listed
	low  uint64          // no free number below it
	// suspect: fds may have been added outside the queue (unknown).
	suspect bool
	calls   []inject.Call
	checks  []func(ret uint64) error
	buf     []byte // the scratch area's contents from 0: the paths
	msgs    []*fdMsg
	// msgBytes is what the messages' areas will take after buf.
	msgBytes int
	after    []func() error // checks once the batch ran
	// deferTo is the number an install() during a kind's open must
	// queue for (fdDeferred: none).
	deferTo uint64
}

const fdDeferred = ^uint64(0)

// scmMaxFD is SCM_MAX_FD (include/net/scm.h): descriptors in one message.
const scmMaxFD = 253

// Limits of one queue: the scratch bytes it fills (below the batch
// tables), and the messages in flight at once.
const (
	fdGroupBuf = 28 << 10
	fdGroupFDs = 8 * scmMaxFD
)

func (g *fdGroup) inFlight() int {
	n := 0
	for _, m := range g.msgs {
		n += len(m.fds)
	}
	return n
}

// fdMsg is one SCM_RIGHTS message queued: godwit's copies of the
// descriptors, the numbers they must get, where its msghdr is.
type fdMsg struct {
	fds     []int
	targets []uint64
	cloexec bool
	at      uint64 // offset of its area in the scratch
	call    int    // index of its recvmsg in calls
}

// msgArea is the size of the area of a message of n descriptors:
// msghdr (56), iovec (16), the data byte (8), the control buffer.
func msgArea(n int) int { return 56 + 16 + 8 + unix.CmsgSpace(4*n) }

func (g *fdGroup) lowest() uint64 {
	for g.used[g.low] {
		g.low++
	}
	return g.low
}

// list reads the task's fd table, if not known.
func (rs *restoreFDs) list() error {
	g := &rs.group
	if g.used != nil {
		return nil
	}
	if rs.moves {
		if err := rs.s.Flush(); err != nil {
			return err
		}
		rs.moves = false
	}
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(rs.s.Pid()) + "/fd")
	if err != nil {
		return fmt.Errorf("list fds: %w", err)
	}
	g.used = make(map[uint64]bool, len(ents))
	for _, e := range ents {
		n, err := strconv.ParseUint(e.Name(), 10, 31)
		if err != nil {
			return fmt.Errorf("list fds: %q", e.Name())
		}
		g.used[n] = true
	}
	g.low = 0
	return nil
}

// unknown marks the fd table as changed by calls outside the queue: fds
// they placed or kept are looked for in /proc before the next is queued
// (a full listing each time would make the fd-by-fd way quadratic).
func (rs *restoreFDs) unknown() { rs.group.suspect = true }

// settle adds to the picture of the fd table what the fd-by-fd way left
// in place (its fd, and anything it kept), as /proc shows it: every call
// it made has run.
func (rs *restoreFDs) settle() {
	g := &rs.group
	if !g.suspect || g.used == nil {
		return
	}
	for {
		var st unix.Stat_t
		n := g.lowest()
		if unix.Lstat(rs.fdPath(n), &st) != nil {
			break
		}
		g.used[n] = true
	}
	g.suspect = false
}

func (rs *restoreFDs) fdPath(n uint64) string {
	return "/proc/" + strconv.Itoa(rs.s.Pid()) + "/fd/" + strconv.FormatUint(n, 10)
}

// queueable reports the kinds whose open is an openat and lseek in the
// task, or ends by handing one descriptor of godwit's to the task with
// nothing else done there.
func queueable(f *model.File) (byPath bool, ok bool) {
	switch f.Kind {
	case model.Path:
		return true, f.Pipe == nil && !f.External
	case model.EventFD, model.SignalFD, model.TimerFD, model.Pipe:
		return false, true
	case model.InetSocket:
		// Made and set up in godwit (fd_inet.go): thousands of
		// connections go over in SCM_RIGHTS batches.
		return false, true
	}
	return false, false
}

// tryQueue queues fd e of file f (of kind k) if it can be placed by the
// batch, and reports whether it was; an fd that is not goes the
// fd-by-fd way, after flush.
func (rs *restoreFDs) tryQueue(what string, e model.FD, f *model.File, k fdKind) (bool, error) {
	byPath, ok := queueable(f)
	if !ok || len(e.Locks) != 0 || len(f.Locks) != 0 {
		return false, nil
	}
	if !byPath && rs.sock < 0 {
		if err := rs.flush(); err != nil {
			return false, err
		}
		if err := rs.channel(); err != nil {
			return false, fmt.Errorf("%s: %w", what, err)
		}
	}
	if err := rs.list(); err != nil {
		return false, err
	}
	g := &rs.group
	fd := uint64(e.Num)
	rs.settle()
	if g.lowest() != fd {
		return false, nil
	}
	if len(g.buf)+g.msgBytes+len(f.Path)+8+msgArea(1)+4 > fdGroupBuf || g.inFlight() >= fdGroupFDs {
		if err := rs.flush(); err != nil {
			return false, err
		}
	}
	if byPath {
		flags := uint64(int(f.Flags)&^(unix.O_CREAT|unix.O_TRUNC|unix.O_EXCL|unix.O_CLOEXEC)) | unix.O_NOCTTY
		if e.Cloexec {
			flags |= unix.O_CLOEXEC
		}
		at := rs.s.Scratch() + uint64(len(g.buf))
		g.buf = append(append(g.buf, f.Path...), 0)
		for len(g.buf)%8 != 0 {
			g.buf = append(g.buf, 0)
		}
		g.add(inject.C(fmt.Sprintf("%s: open %s", what, f.Path), unix.SYS_OPENAT, atFdcwd, at, flags, 0), func(ret uint64) error {
			if ret != fd {
				return fmt.Errorf("%s: open %s: got fd %d", what, f.Path, ret)
			}
			return nil
		})
		if pos := f.Pos; pos != 0 && f.Mode&unix.S_IFMT != unix.S_IFCHR {
			g.add(inject.C(fmt.Sprintf("%s: seek %s to %d", what, f.Path, pos), unix.SYS_LSEEK, fd, pos, unix.SEEK_SET), nil)
		}
		g.after = append(g.after, func() error {
			if err := rs.r.verifyOpened(rs.s, fd, f); err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			return nil
		})
	} else {
		g.deferTo, rs.deferCloexec = fd, e.Cloexec
		got, err := k.open(rs, what, f)
		deferred := g.deferTo == fdDeferred
		g.deferTo = fdDeferred
		if err != nil {
			return false, err
		}
		if !deferred || got != fd {
			return false, fmt.Errorf("%s: the kind's open did not hand its descriptor over", what)
		}
	}
	g.used[fd] = true
	return true, nil
}

// tryQueueShared queues fd e when its open file description is placed
// already: in this task (first, by file: a dup3 to its number) or in
// another task of the tree (r.Opened: godwit takes it with pidfd_getfd
// and passes it, received on its number). It reports whether it did; an
// fd with locks goes the fd-by-fd way.
func (rs *restoreFDs) tryQueueShared(what string, e model.FD, first map[model.ID]uint64) (bool, error) {
	if len(e.Locks) != 0 {
		return false, nil
	}
	fd := uint64(e.Num)
	src, dup := first[e.File]
	at, taken := rs.r.Opened[e.File]
	if !dup && (!taken || at.Pid == rs.r.Task.Pid) {
		return false, nil
	}
	if !dup && rs.sock < 0 {
		if err := rs.flush(); err != nil {
			return false, err
		}
		if err := rs.channel(); err != nil {
			return false, fmt.Errorf("%s: %w", what, err)
		}
	}
	if err := rs.list(); err != nil {
		return false, err
	}
	g := &rs.group
	rs.settle()
	if len(g.buf)+g.msgBytes+msgArea(1)+4 > fdGroupBuf || g.inFlight() >= fdGroupFDs {
		if err := rs.flush(); err != nil {
			return false, err
		}
	}
	if dup {
		if g.used[fd] {
			return false, nil
		}
		flags := uint64(0)
		if e.Cloexec {
			flags = unix.O_CLOEXEC
		}
		g.add(inject.C(what+": dup3", unix.SYS_DUP3, src, fd, flags), func(ret uint64) error {
			if ret != fd {
				return fmt.Errorf("%s: dup3 gave fd %d", what, ret)
			}
			return nil
		})
		g.used[fd] = true
		return true, nil
	}
	if g.lowest() != fd {
		return false, nil
	}
	pfd, ok := rs.pidfds[at.Pid]
	if !ok {
		var err error
		if pfd, err = unix.PidfdOpen(at.Pid, 0); err != nil {
			return false, fmt.Errorf("%s: pidfd_open(%d): %w", what, at.Pid, err)
		}
		if rs.pidfds == nil {
			rs.pidfds = map[int]int{}
		}
		rs.pidfds[at.Pid] = pfd
	}
	mine, err := unix.PidfdGetfd(pfd, at.FD, 0)
	if err != nil {
		return false, fmt.Errorf("%s: pidfd_getfd(%d, %d): %w", what, at.Pid, at.FD, err)
	}
	defer unix.Close(mine)
	g.deferTo = fd
	if _, err := rs.queueInstall(what, mine, e.Cloexec); err != nil {
		g.deferTo = fdDeferred
		return false, err
	}
	g.used[fd] = true
	return true, nil
}

func (g *fdGroup) add(c inject.Call, check func(uint64) error) {
	g.calls = append(g.calls, c)
	g.checks = append(g.checks, check)
}

// queueInstall queues godwit's descriptor fd for number g.deferTo.
func (rs *restoreFDs) queueInstall(what string, fd int, cloexec bool) (uint64, error) {
	g := &rs.group
	target := g.deferTo
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("%s: keep descriptor: %w", what, err)
	}
	var m *fdMsg
	if n := len(g.msgs); n > 0 {
		last := g.msgs[n-1]
		if last.call == len(g.calls)-1 && last.cloexec == cloexec && len(last.fds) < scmMaxFD {
			m = last
		}
	}
	if m == nil {
		// Its area is laid out by flush, after the paths.
		m = &fdMsg{cloexec: cloexec, call: len(g.calls)}
		g.msgs = append(g.msgs, m)
		g.msgBytes += msgArea(0)
		flags := uint64(0)
		if cloexec {
			flags = unix.MSG_CMSG_CLOEXEC
		}
		g.add(inject.C(what+": receive descriptors", unix.SYS_RECVMSG, rs.taskSock, 0, flags), nil)
	}
	g.msgBytes += msgArea(len(m.fds)+1) - msgArea(len(m.fds))
	m.fds = append(m.fds, dup)
	m.targets = append(m.targets, target)
	g.deferTo = fdDeferred
	return target, nil
}

// flush runs the queue.
func (rs *restoreFDs) flush() (err error) {
	g := &rs.group
	if len(g.calls) == 0 {
		return nil
	}
	s := rs.s
	defer func() {
		for _, m := range g.msgs {
			for _, fd := range m.fds {
				unix.Close(fd)
			}
		}
		g.calls, g.checks, g.buf, g.msgs, g.after, g.msgBytes = nil, nil, nil, nil, nil, 0
		if err != nil {
			rs.unknown()
		}
	}()
	base := s.Scratch()
	for _, m := range g.msgs {
		m.at = uint64(len(g.buf))
		g.buf = append(g.buf, make([]byte, msgArea(len(m.fds)))...)
		a := base + m.at
		g.calls[m.call].Args[1] = a
		b := g.buf[m.at:]
		ctl := unix.CmsgSpace(4 * len(m.fds))
		le.PutUint64(b[0:], 0)            // msg_name
		le.PutUint64(b[8:], 0)            // msg_namelen
		le.PutUint64(b[16:], a+56)        // msg_iov
		le.PutUint64(b[24:], 1)           // msg_iovlen
		le.PutUint64(b[32:], a+80)        // msg_control
		le.PutUint64(b[40:], uint64(ctl)) // msg_controllen
		le.PutUint64(b[48:], 0)           // msg_flags
		le.PutUint64(b[56:], a+72)        // iov_base
		le.PutUint64(b[64:], 1)           // iov_len
		if err := unix.Sendmsg(rs.sock, []byte{0}, unix.UnixRights(m.fds...), nil, 0); err != nil {
			return fmt.Errorf("fd %d: pass descriptors: %w", m.targets[0], err)
		}
	}
	if _, err := s.Put(0, g.buf); err != nil {
		return err
	}
	got, err := s.Batch(g.calls)
	for i, ret := range got {
		if chk := g.checks[i]; chk != nil && (err == nil || i < len(got)-1) {
			if cerr := chk(ret); cerr != nil {
				return cerr
			}
		}
	}
	if err != nil {
		return err
	}
	if len(g.msgs) > 0 {
		out := make([]byte, len(g.buf))
		if err := s.Read(0, out); err != nil {
			return err
		}
		for _, m := range g.msgs {
			b := out[m.at:]
			cm := b[80:]
			n := len(m.fds)
			if le.Uint32(b[48:])&unix.MSG_CTRUNC != 0 || le.Uint64(cm) != uint64(unix.CmsgLen(4*n)) ||
				le.Uint32(cm[8:]) != unix.SOL_SOCKET || le.Uint32(cm[12:]) != unix.SCM_RIGHTS {
				return fmt.Errorf("fd %d: the task received no descriptors", m.targets[0])
			}
			for i, t := range m.targets {
				if got := uint64(le.Uint32(cm[16+4*i:])); got != t {
					return fmt.Errorf("fd %d: received as fd %d", t, got)
				}
			}
		}
	}
	for _, f := range g.after {
		if err := f(); err != nil {
			return err
		}
	}
	return nil
}
