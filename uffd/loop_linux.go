package uffd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// Loop reads a userfaultfd's messages in batches and hands them to a handler
// until Stop. It blocks in epoll_wait on the uffd and an eventfd, so Stop is
// immediate and no message is lost: everything readable before the stop is
// delivered first. Non-cooperative events block the target until read, which
// is why the loop always drains everything readable before waiting again.
type Loop struct {
	u       *Uffd
	ep      int
	stop    int // eventfd
	buf     []byte
	msgs    []Msg
	mu      sync.Mutex
	closed  bool
	running bool
}

// DefaultBatch is the number of messages read per read(2).
const DefaultBatch = 64

// NewLoop prepares a loop on u reading up to batch messages per read.
func NewLoop(u *Uffd, batch int) (*Loop, error) {
	if batch <= 0 {
		batch = DefaultBatch
	}
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("uffd loop: epoll_create1: %w", err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(ep)
		return nil, fmt.Errorf("uffd loop: eventfd: %w", err)
	}
	l := &Loop{u: u, ep: ep, stop: efd, buf: make([]byte, batch*msgSize), msgs: make([]Msg, 0, batch)}
	for _, fd := range []int{u.fd, efd} {
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			l.Close()
			return nil, fmt.Errorf("uffd loop: epoll_ctl add fd %d: %w", fd, err)
		}
	}
	return l, nil
}

// Handler receives a batch of messages. The slice is reused after it
// returns. Returning an error ends Run with that error.
type Handler func(msgs []Msg) error

// Run serves until Stop is called (returns nil) or the handler or a syscall
// fails. Lock the calling goroutine to its thread (and pin it) when latency
// matters.
func (l *Loop) Run(h Handler) error {
	l.mu.Lock()
	if l.closed || l.running {
		l.mu.Unlock()
		return errors.New("uffd loop: closed or already running")
	}
	l.running = true
	l.mu.Unlock()
	defer func() { l.mu.Lock(); l.running = false; l.mu.Unlock() }()

	var evs [2]unix.EpollEvent
	for {
		n, err := unix.EpollWait(l.ep, evs[:], -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("uffd loop: epoll_wait: %w", err)
		}
		stop, readable := false, false
		for _, ev := range evs[:n] {
			if int(ev.Fd) == l.stop {
				var b [8]byte
				unix.Read(l.stop, b[:])
				stop = true
				continue
			}
			if ev.Events&unix.EPOLLIN != 0 {
				readable = true
			} else if ev.Events&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
				return fmt.Errorf("uffd loop: fd %d: poll error %#x", l.u.fd, ev.Events)
			}
		}
		// Drain: a read that does not fill the buffer emptied the queue, so
		// a steady stream of single faults costs epoll_wait + read + the
		// handler's ioctl. On stop, what is queued is delivered first.
		if readable || stop {
			if err := l.drain(h); err != nil {
				return err
			}
		}
		if stop {
			return nil
		}
	}
}

func (l *Loop) drain(h Handler) error {
	for {
		msgs, err := l.u.Read(l.buf, l.msgs[:0])
		if len(msgs) > 0 {
			if herr := h(msgs); herr != nil {
				return herr
			}
		}
		if err != nil {
			if errors.Is(err, unix.EAGAIN) {
				return nil
			}
			return err
		}
		if len(msgs)*msgSize < len(l.buf) {
			return nil
		}
	}
}

// Stop makes Run return after delivering the messages already readable.
// Safe from any goroutine, and before Run starts (Run then returns at once).
func (l *Loop) Stop() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	one := binary.NativeEndian.AppendUint64(nil, 1)
	if _, err := unix.Write(l.stop, one); err != nil {
		return fmt.Errorf("uffd loop: stop: %w", err)
	}
	return nil
}

// Close releases the loop's epoll and eventfd (not the Uffd). Call after Run
// returned.
func (l *Loop) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	unix.Close(l.stop)
	return unix.Close(l.ep)
}
