package uffd

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Msg is one decoded struct uffd_msg. Which fields are meaningful depends on
// Event:
//   - EventPagefault: Address, Flags (PagefaultFlag*), TID (with FeatureThreadID)
//   - EventFork: UFD, a new userfaultfd for the child's mm, installed in THIS
//     process's fd table by the read; the receiver owns and must close it.
//   - EventRemap: From, To, Len (mremap moved the range)
//   - EventRemove, EventUnmap: Start, End (madvise DONTNEED/REMOVE, munmap)
type Msg struct {
	Event   uint8
	Flags   uint64
	Address uint64
	TID     uint32
	UFD     int
	From    uint64
	To      uint64
	Len     uint64
	Start   uint64
	End     uint64
}

// ErrShortMsg and ErrUnknownEvent are returned by DecodeMsg for input that is
// not a message this package understands.
var (
	ErrShortMsg     = errors.New("uffd_msg: short buffer")
	ErrUnknownEvent = errors.New("uffd_msg: unknown event")
)

// DecodeMsg decodes one 32-byte uffd_msg from b.
func DecodeMsg(b []byte) (Msg, error) {
	if len(b) < msgSize {
		return Msg{}, fmt.Errorf("%w: %d bytes", ErrShortMsg, len(b))
	}
	le := binary.NativeEndian
	m := Msg{Event: b[0], UFD: -1}
	arg := b[8:msgSize]
	switch m.Event {
	case EventPagefault:
		m.Flags = le.Uint64(arg[0:])
		m.Address = le.Uint64(arg[8:])
		m.TID = le.Uint32(arg[16:])
	case EventFork:
		// ufd is a __u32 holding an fd number; anything above MaxInt32 is garbage.
		u := le.Uint32(arg[0:])
		if u > 1<<31-1 {
			return Msg{}, fmt.Errorf("uffd_msg fork: bad fd %d", u)
		}
		m.UFD = int(u)
	case EventRemap:
		m.From = le.Uint64(arg[0:])
		m.To = le.Uint64(arg[8:])
		m.Len = le.Uint64(arg[16:])
	case EventRemove, EventUnmap:
		m.Start = le.Uint64(arg[0:])
		m.End = le.Uint64(arg[8:])
	default:
		return Msg{}, fmt.Errorf("%w %#x", ErrUnknownEvent, m.Event)
	}
	return m, nil
}

// DecodeMsgs decodes a buffer holding whole messages, appending to out.
// On a bad message it still returns the messages decoded before it, so that
// FORK fds already received are not lost.
func DecodeMsgs(b []byte, out []Msg) ([]Msg, error) {
	if len(b)%msgSize != 0 {
		return out, fmt.Errorf("%w: %d bytes is not a multiple of %d", ErrShortMsg, len(b), msgSize)
	}
	for off := 0; off < len(b); off += msgSize {
		m, err := DecodeMsg(b[off:])
		if err != nil {
			return out, fmt.Errorf("message %d: %w", off/msgSize, err)
		}
		out = append(out, m)
	}
	return out, nil
}

// String renders a message for logs.
func (m Msg) String() string {
	switch m.Event {
	case EventPagefault:
		return fmt.Sprintf("pagefault addr=%#x flags=%#x tid=%d", m.Address, m.Flags, m.TID)
	case EventFork:
		return fmt.Sprintf("fork ufd=%d", m.UFD)
	case EventRemap:
		return fmt.Sprintf("remap %#x->%#x len=%#x", m.From, m.To, m.Len)
	case EventRemove:
		return fmt.Sprintf("remove %#x-%#x", m.Start, m.End)
	case EventUnmap:
		return fmt.Sprintf("unmap %#x-%#x", m.Start, m.End)
	}
	return fmt.Sprintf("event %#x", m.Event)
}

// Read reads as many pending messages as fit in buf (a multiple of 32 bytes)
// without blocking and appends them to out. With nothing pending it returns
// out unchanged and an error wrapping unix.EAGAIN.
func (u *Uffd) Read(buf []byte, out []Msg) ([]Msg, error) {
	buf = buf[:len(buf)/msgSize*msgSize]
	for {
		n, err := unix.Read(u.fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return out, fmt.Errorf("read uffd %d: %w", u.fd, err)
		}
		return DecodeMsgs(buf[:n], out)
	}
}
