package uffd

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Handoff is what a restorer tells the lazy-pages daemon when it hands over
// the userfaultfd of a task it restored (godwit's own message on the
// lazy-pages socket; the uffd itself travels beside it with SCM_RIGHTS).
// The uffd is negotiated (Features) and registered in MISSING mode over
// Ranges, whose pages are not populated yet.
type Handoff struct {
	Pid      int
	Features uint64
	Ranges   []Range // page-aligned, ascending, disjoint
}

// Range is [Start, End) in the task's address space.
type Range struct{ Start, End uint64 }

const (
	handoffMagic   = 0x314c5a47 // "GZL1"
	handoffHdrSize = 32
	// MaxHandoffRanges bounds a handoff: no mm has more VMAs than the
	// default vm.max_map_count (65530).
	MaxHandoffRanges = 1 << 16
	maxUserAddr      = 1 << 57
)

// MarshalHandoff encodes h: {u32 magic, u32 nranges, u32 pid, u32 0,
// u64 features, u64 0} then nranges × {u64 start, u64 end}, host-endian.
func MarshalHandoff(h Handoff) []byte {
	b := make([]byte, handoffHdrSize, handoffHdrSize+16*len(h.Ranges))
	le := binary.NativeEndian
	le.PutUint32(b[0:], handoffMagic)
	le.PutUint32(b[4:], uint32(len(h.Ranges)))
	le.PutUint32(b[8:], uint32(h.Pid))
	le.PutUint64(b[16:], h.Features)
	for _, r := range h.Ranges {
		b = le.AppendUint64(b, r.Start)
		b = le.AppendUint64(b, r.End)
	}
	return b
}

// HandoffSize returns the total size of the message whose header is hdr
// (at least handoffHdrSize bytes), or an error for a bad header.
func HandoffSize(hdr []byte) (int, error) {
	if len(hdr) < handoffHdrSize {
		return 0, fmt.Errorf("lazy-pages handoff: %d-byte header", len(hdr))
	}
	le := binary.NativeEndian
	if m := le.Uint32(hdr[0:]); m != handoffMagic {
		return 0, fmt.Errorf("lazy-pages handoff: bad magic %#x", m)
	}
	n := le.Uint32(hdr[4:])
	if n > MaxHandoffRanges {
		return 0, fmt.Errorf("lazy-pages handoff: %d ranges", n)
	}
	return handoffHdrSize + 16*int(n), nil
}

// UnmarshalHandoff decodes and checks a whole message.
func UnmarshalHandoff(b []byte) (Handoff, error) {
	size, err := HandoffSize(b)
	if err != nil {
		return Handoff{}, err
	}
	if len(b) != size {
		return Handoff{}, fmt.Errorf("lazy-pages handoff: %d bytes, want %d", len(b), size)
	}
	le := binary.NativeEndian
	h := Handoff{Pid: int(le.Uint32(b[8:])), Features: le.Uint64(b[16:])}
	if h.Pid <= 0 || h.Pid >= 1<<22 || le.Uint32(b[12:]) != 0 || le.Uint64(b[24:]) != 0 {
		return Handoff{}, fmt.Errorf("lazy-pages handoff: bad header (pid %d)", h.Pid)
	}
	var last uint64
	for off := handoffHdrSize; off < len(b); off += 16 {
		r := Range{le.Uint64(b[off:]), le.Uint64(b[off+8:])}
		if r.Start%PageSize != 0 || r.End%PageSize != 0 || r.Start >= r.End || r.End > maxUserAddr || r.Start < last {
			return Handoff{}, fmt.Errorf("lazy-pages handoff: bad range %#x-%#x", r.Start, r.End)
		}
		last = r.End
		h.Ranges = append(h.Ranges, r)
	}
	return h, nil
}

// SendHandoff sends h with the uffd on the connected stream socket sock and
// waits for the daemon's answer: nil once it serves the uffd, else its
// error.
func SendHandoff(sock int, h Handoff, uffd int) error {
	b := MarshalHandoff(h)
	if err := unix.Sendmsg(sock, b[:handoffHdrSize], unix.UnixRights(uffd), nil, 0); err != nil {
		return fmt.Errorf("lazy-pages handoff: send: %w", err)
	}
	for rest := b[handoffHdrSize:]; len(rest) > 0; {
		n, err := unix.Write(sock, rest)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("lazy-pages handoff: send: %w", err)
		}
		rest = rest[n:]
	}
	// The answer: u32 length, then that many bytes of error text (0: ok).
	var lb [4]byte
	if err := readFull(sock, lb[:]); err != nil {
		return fmt.Errorf("lazy-pages handoff: no answer from the daemon: %w", err)
	}
	n := binary.NativeEndian.Uint32(lb[:])
	if n == 0 {
		return nil
	}
	msg := make([]byte, min(n, 4096))
	if err := readFull(sock, msg); err != nil {
		return fmt.Errorf("lazy-pages handoff: answer: %w", err)
	}
	return fmt.Errorf("lazy-pages daemon refused the task: %s", msg)
}

// RecvHandoff reads one handoff and its uffd from sock. The caller owns
// the returned fd (-1 on error) and answers with AnswerHandoff.
func RecvHandoff(sock int) (Handoff, int, error) {
	hdr := make([]byte, handoffHdrSize)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := recvmsg(sock, hdr, oob)
	fd := -1
	if oobn > 0 {
		if msgs, perr := unix.ParseSocketControlMessage(oob[:oobn]); perr == nil {
			for _, m := range msgs {
				fds, _ := unix.ParseUnixRights(&m)
				for _, f := range fds {
					if fd < 0 {
						fd = f
					} else {
						unix.Close(f)
					}
				}
			}
		}
	}
	fail := func(err error) (Handoff, int, error) {
		if fd >= 0 {
			unix.Close(fd)
		}
		return Handoff{}, -1, err
	}
	if err != nil {
		return fail(fmt.Errorf("lazy-pages handoff: receive: %w", err))
	}
	if fd < 0 {
		return fail(errors.New("lazy-pages handoff: no userfaultfd received"))
	}
	if n < handoffHdrSize {
		if err := readFull(sock, hdr[n:]); err != nil {
			return fail(fmt.Errorf("lazy-pages handoff: receive: %w", err))
		}
	}
	size, err := HandoffSize(hdr)
	if err != nil {
		return fail(err)
	}
	b := make([]byte, size)
	copy(b, hdr)
	if err := readFull(sock, b[handoffHdrSize:]); err != nil {
		return fail(fmt.Errorf("lazy-pages handoff: receive: %w", err))
	}
	h, err := UnmarshalHandoff(b)
	if err != nil {
		return fail(err)
	}
	return h, fd, nil
}

// AnswerHandoff tells the restorer the outcome (nil: the daemon serves).
func AnswerHandoff(sock int, herr error) error {
	var msg []byte
	if herr != nil {
		msg = []byte(herr.Error())
		if len(msg) > 4096 {
			msg = msg[:4096]
		}
	}
	b := binary.NativeEndian.AppendUint32(nil, uint32(len(msg)))
	b = append(b, msg...)
	for len(b) > 0 {
		n, err := unix.Write(sock, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("lazy-pages handoff: answer: %w", err)
		}
		b = b[n:]
	}
	return nil
}

func recvmsg(sock int, b, oob []byte) (int, int, int, unix.Sockaddr, error) {
	for {
		n, oobn, fl, from, err := unix.Recvmsg(sock, b, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		return n, oobn, fl, from, err
	}
}

func readFull(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Read(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return errors.New("connection closed")
		}
		b = b[n:]
	}
	return nil
}
