package drivers

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
	"godwit/internal/procfs"
)

// Unnamed pipes: each end is a file (one open file description); the ends
// of one pipe share its inode, size and queued bytes. The bytes are
// copied at dump with tee(2), which leaves them in the pipe; restore
// makes the pipe in godwit, refills it, and hands the task its ends.

func init() { registerFDKind(pipeKind{}) }

type pipeKind struct{}

func (pipeKind) name() string             { return "pipe" }
func (pipeKind) fileKind() model.FileKind { return model.Pipe }
func (pipeKind) match(target string, _ *unix.Stat_t) bool {
	return strings.HasPrefix(target, "pipe:[")
}

func (pipeKind) check(_, _ int, flags uint64) error {
	if m := flags & unix.O_ACCMODE; m != unix.O_RDONLY && m != unix.O_WRONLY {
		return fmt.Errorf("access mode %#o is neither read nor write", m)
	}
	return nil
}

func (pipeKind) collect(fl *Files, pid int, fd *FD, f *model.File) error {
	// The other end of a pipe seen before: the tree is frozen, its
	// bytes are the ones read then.
	pk, ok := fl.pipes[fd.Stat.Ino]
	if !ok {
		var err error
		if fd.pipeKnown && fd.pipeQueued == 0 {
			// Empty: its size is all (no reopen to tee from).
			pk.size = uint32(fd.pipeSize)
		} else if pk.size, pk.data, err = peekPipe(pid, fd.Num); err != nil {
			return err
		}
		if fl.pipes == nil {
			fl.pipes = map[uint64]pipePeek{}
		}
		fl.pipes[fd.Stat.Ino] = pk
	}
	size, data := pk.size, pk.data
	if len(data) > 0 && fd.Flags&unix.O_DIRECT != 0 {
		// Packet boundaries are not visible to tee.
		return fmt.Errorf("%d bytes queued in a packet-mode (O_DIRECT) pipe: its message boundaries cannot be saved", len(data))
	}
	f.Kind, f.Path = model.Pipe, ""
	f.Pipe = &model.PipeState{ID: fd.Stat.Ino, Size: size, Data: data}
	return nil
}

// pipePeek is what peekPipe read of a pipe.
type pipePeek struct {
	size uint32
	data []byte
}

// peekPipe returns the size of the pipe (or FIFO) behind fd n of pid and
// the bytes queued in it, leaving them there: tee into a pipe of godwit's
// of the same size, then read that. The pipe is reached by reopening the
// fd's /proc link read-only (a pipe's write end cannot be tee'd from).
func peekPipe(pid, n int) (uint32, []byte, error) {
	src, err := unix.Open(procfs.Path(pid, "fd/"+strconv.Itoa(n)), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, nil, fmt.Errorf("reopen to read its contents: %w", err)
	}
	defer unix.Close(src)
	size, err := unix.FcntlInt(uintptr(src), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		return 0, nil, fmt.Errorf("F_GETPIPE_SZ: %w", err)
	}
	queued, err := unix.IoctlGetInt(src, unix.TIOCINQ) // FIONREAD
	if err != nil {
		return 0, nil, fmt.Errorf("FIONREAD: %w", err)
	}
	if queued == 0 {
		return uint32(size), nil, nil
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return 0, nil, err
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if _, err := unix.FcntlInt(uintptr(p[1]), unix.F_SETPIPE_SZ, size); err != nil {
		return 0, nil, fmt.Errorf("%d bytes queued in a pipe of %d bytes, and godwit cannot make one as big to copy them (F_SETPIPE_SZ: %w; pipe-max-size applies without CAP_SYS_RESOURCE)", queued, size, err)
	}
	// One tee: a second would copy the same bytes again. The copy has as
	// many buffers as the pipe, so it takes all of them.
	got, err := unix.Tee(src, p[1], queued, unix.SPLICE_F_NONBLOCK)
	if err != nil {
		return 0, nil, fmt.Errorf("tee: %w", err)
	}
	if int(got) != queued {
		return 0, nil, fmt.Errorf("tee copied %d of the %d queued bytes", got, queued)
	}
	data := make([]byte, queued)
	for off := 0; off < queued; {
		m, err := unix.Read(p[0], data[off:])
		if err != nil || m <= 0 {
			return 0, nil, fmt.Errorf("read copied pipe contents: %d bytes, %v", m, err)
		}
		off += m
	}
	return uint32(size), data, nil
}

// livePipe is a pipe made by godwit for the task being restored: godwit
// keeps both ends until every fd is in place.
type livePipe struct {
	ends [2]int  // read, write
	used [2]bool // an end already handed to the task
}

func (p *livePipe) close() {
	for _, fd := range p.ends {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

func (pipeKind) open(rs *restoreFDs, what string, f *model.File) (uint64, error) {
	st := f.Pipe
	if st == nil {
		return 0, fmt.Errorf("%s: pipe without its state", what)
	}
	p := rs.pipes[st.ID]
	if p == nil {
		var err error
		if p, err = pipeOfTree(rs, st.ID); err != nil {
			return 0, fmt.Errorf("%s: %w", what, err)
		}
		if p == nil {
			if p, err = makePipe(st, f.Flags); err != nil {
				return 0, fmt.Errorf("%s: %w", what, err)
			}
		}
		rs.pipes[st.ID] = p
	}
	end := 0
	if f.Flags&unix.O_ACCMODE == unix.O_WRONLY {
		end = 1
	}
	fd := p.ends[end]
	if p.used[end] {
		// A second description of the same end: reopening the end
		// through /proc makes one.
		nfd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(fd), int(f.Flags&unix.O_ACCMODE)|unix.O_CLOEXEC, 0)
		if err != nil {
			return 0, fmt.Errorf("%s: reopen pipe end: %w", what, err)
		}
		defer unix.Close(nfd)
		fd = nfd
	}
	p.used[end] = true
	// The status flags belong to the description the task gets.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, int(f.Flags&(unix.O_NONBLOCK|unix.O_DIRECT))); err != nil {
		return 0, fmt.Errorf("%s: F_SETFL: %w", what, err)
	}
	return rs.install(what, fd)
}

// makePipe makes a pipe of the dumped size holding the dumped bytes.
func makePipe(st *model.PipeState, flags uint32) (*livePipe, error) {
	p := &livePipe{}
	if err := unix.Pipe2(p.ends[:], unix.O_CLOEXEC|int(flags&unix.O_DIRECT)); err != nil {
		return nil, fmt.Errorf("pipe2: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			p.close()
		}
	}()
	if st.Size != 0 {
		if _, err := unix.FcntlInt(uintptr(p.ends[1]), unix.F_SETPIPE_SZ, int(st.Size)); err != nil {
			return nil, fmt.Errorf("pipe of %d bytes cannot be remade (F_SETPIPE_SZ: %w; above pipe-max-size needs CAP_SYS_RESOURCE)", st.Size, err)
		}
	}
	if len(st.Data) > 0 {
		n, err := unix.Write(p.ends[1], st.Data)
		if err != nil || n != len(st.Data) {
			return nil, fmt.Errorf("refill pipe with %d bytes: wrote %d: %v", len(st.Data), n, err)
		}
	}
	ok = true
	return p, nil
}

// pipeOfTree finds pipe id among the ends other tasks of the tree already
// hold (a shell pipeline: the other end in a sibling), takes one
// (pidfd_getfd) and opens both ends afresh from it through /proc, so that
// this task's ends are new descriptions of the same pipe, bytes and all.
// nil when no other task holds an end.
func pipeOfTree(rs *restoreFDs, id uint64) (*livePipe, error) {
	at, ok := rs.heldElsewhere(objectKey(&model.File{Kind: model.Pipe, Pipe: &model.PipeState{ID: id}}))
	if !ok {
		return nil, nil
	}
	held, err := grabFD(at.Pid, at.FD)
	if err != nil {
		return nil, fmt.Errorf("pipe held by %d fd %d: %w", at.Pid, at.FD, err)
	}
	defer unix.Close(held)
	path := "/proc/self/fd/" + strconv.Itoa(held)
	p := &livePipe{ends: [2]int{-1, -1}}
	// The read end first: opening the write end without waiting needs a
	// reader.
	for i, mode := range []int{unix.O_RDONLY, unix.O_WRONLY} {
		fd, err := unix.Open(path, mode|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err == nil {
			p.ends[i] = fd
			_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, 0)
		}
		if err != nil {
			p.close()
			return nil, fmt.Errorf("pipe held by %d fd %d: reopen: %w", at.Pid, at.FD, err)
		}
	}
	return p, nil
}
