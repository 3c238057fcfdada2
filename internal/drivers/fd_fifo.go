package drivers

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
	"godwit/internal/procfs"
)

// Named FIFOs: reopened by path in the task, with the bytes queued in them
// and their size. The dump peeks at the bytes as for pipes. The restore
// first opens the FIFO read-write and non-blocking in the task (a holder:
// then an end of either mode opens without waiting for a peer), refills
// it through the holder once per FIFO of the tree, opens the fd's own end
// by path, sets its flags and drops the holder.

func init() { registerFDKind(fifoKind{}) }

// fifoKind's files are Path files with pipe state: pathKind's open
// restores them with openFIFO.
type fifoKind struct{ pathKind }

func (fifoKind) name() string { return "fifo" }

// match takes a FIFO whose name was removed too, to refuse it as a FIFO
// (not as a deleted regular file).
func (fifoKind) match(target string, st *unix.Stat_t) bool {
	return strings.HasPrefix(target, "/") && !strings.HasPrefix(target, "/memfd:") && st.Mode&unix.S_IFMT == unix.S_IFIFO
}

func (fifoKind) check(int, int, uint64) error { return nil }

func (fifoKind) collect(_ *Files, pid int, fd *FD, f *model.File) error {
	if !byPath(fd.Path) {
		// Remaking it needs a ghost FIFO (made at a temporary name,
		// opened by every holder, then removed): not done yet.
		return fmt.Errorf("a FIFO whose name was removed: not supported yet")
	}
	size, data, err := peekPipe(pid, fd.Num)
	if err != nil {
		return err
	}
	if len(data) > 0 && fd.Flags&unix.O_DIRECT != 0 {
		return fmt.Errorf("%d bytes queued in a packet-mode (O_DIRECT) FIFO: its message boundaries cannot be saved", len(data))
	}
	f.Pipe = &model.PipeState{ID: fd.Stat.Ino, Size: size, Data: data}
	return nil
}

// openFIFO opens a named FIFO of the task being restored (see above).
func openFIFO(rs *restoreFDs, what string, f *model.File) (uint64, error) {
	s := rs.s
	holder, err := s.Openat(what+": hold FIFO", f.Path, unix.O_RDWR|unix.O_NONBLOCK|unix.O_NOCTTY)
	if err != nil {
		return 0, err
	}
	fd, err := func() (uint64, error) {
		if err := rs.fillFIFO(what, holder, f); err != nil {
			return 0, err
		}
		flags := int(f.Flags) &^ (unix.O_CREAT | unix.O_TRUNC | unix.O_EXCL | unix.O_CLOEXEC)
		fd, err := s.Openat(what, f.Path, flags|unix.O_NONBLOCK|unix.O_NOCTTY)
		if err != nil {
			return 0, err
		}
		if err := rs.r.verifyOpened(s, fd, f); err != nil {
			return 0, fmt.Errorf("%s: %w", what, err)
		}
		if _, err := s.Call(what+": F_SETFL", unix.SYS_FCNTL, fd, unix.F_SETFL, uint64(f.Flags&(unix.O_NONBLOCK|unix.O_APPEND|unix.O_DIRECT|unix.O_NOATIME))); err != nil {
			return 0, err
		}
		return fd, nil
	}()
	if _, cerr := s.Call(what+": close FIFO holder", unix.SYS_CLOSE, holder); cerr != nil && err == nil {
		err = cerr
	}
	return fd, err
}

// fillFIFO gives the FIFO behind the task's fd holder its dumped size and
// bytes, unless an earlier fd of the tree on the same FIFO did.
func (rs *restoreFDs) fillFIFO(what string, holder uint64, f *model.File) error {
	st := f.Pipe
	if rs.fifos[st.ID] {
		return nil
	}
	rs.fifos[st.ID] = true
	if _, ok := rs.heldElsewhere(objectKey(f)); ok {
		return nil // filled when that task opened it
	}
	if st.Size == 0 && len(st.Data) == 0 {
		return nil
	}
	w, err := unix.Open(procfs.Path(rs.s.Pid(), "fd/"+strconv.FormatUint(holder, 10)), unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%s: open FIFO to refill it: %w", what, err)
	}
	defer unix.Close(w)
	if st.Size != 0 {
		if cur, err := unix.FcntlInt(uintptr(w), unix.F_GETPIPE_SZ, 0); err != nil || cur != int(st.Size) {
			if _, err := unix.FcntlInt(uintptr(w), unix.F_SETPIPE_SZ, int(st.Size)); err != nil {
				return fmt.Errorf("%s: FIFO of %d bytes cannot be remade (F_SETPIPE_SZ: %w; above pipe-max-size needs CAP_SYS_RESOURCE)", what, st.Size, err)
			}
		}
	}
	if len(st.Data) > 0 {
		n, err := unix.Write(w, st.Data)
		if err != nil || n != len(st.Data) {
			return fmt.Errorf("%s: refill FIFO with %d bytes: wrote %d: %v", what, len(st.Data), n, err)
		}
	}
	return nil
}
