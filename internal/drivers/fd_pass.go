package drivers

import (
	"fmt"

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
	return &restoreFDs{r: r, s: s, sock: -1, pipes: map[uint64]*livePipe{}, fifos: map[uint64]bool{}, socks: map[uint32]int{}, ghosts: map[[2]uint64]int{}}
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
	if _, err := s.Call("close passing socket", unix.SYS_CLOSE, other); err != nil {
		return err
	}
	// The lowest number the task does not use: within its fd limit, and
	// free now (the fds restored so far are the task's).
	used := map[uint64]bool{}
	for _, e := range rs.r.Task.FDs {
		used[uint64(e.Num)] = true
	}
	gap := uint64(0)
	for used[gap] {
		gap++
	}
	if gap != a {
		if _, err := s.Call("move passing socket", unix.SYS_DUP3, a, gap, unix.O_CLOEXEC); err != nil {
			return err
		}
		if _, err := s.Call("close passing socket", unix.SYS_CLOSE, a); err != nil {
			return err
		}
	}
	rs.taskSock = gap
	return nil
}

// install hands godwit's descriptor fd to the task over SCM_RIGHTS and
// returns its number there (the lowest free one, not close-on-exec).
func (rs *restoreFDs) install(what string, fd int) (uint64, error) {
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
	var err error
	if rs.sock >= 0 {
		unix.Close(rs.sock)
		rs.sock = -1
		_, err = rs.s.Call("close passing socket", unix.SYS_CLOSE, rs.taskSock)
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
}

// NewHeld makes an empty Held.
func NewHeld() *Held { return &Held{socks: map[uint32]int{}} }

// Close drops everything not taken.
func (h *Held) Close() {
	if h == nil {
		return
	}
	for ino, fd := range h.socks {
		unix.Close(fd)
		delete(h.socks, ino)
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
