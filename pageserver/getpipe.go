package pageserver

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"godwit/pageserver/internal/wire"
)

// getPipe keeps GET requests sent ahead of their replies: the server
// answers in order, so the link never idles between a reply and the next
// request (lazy-pages' background push).
type getPipe struct {
	mu      sync.Mutex
	pending []pendingGet // oldest first
	rmu     sync.Mutex   // the reply reader
	err     error        // sticky, under mu: a reply stream out of sync
}

type pendingGet struct {
	pid       int
	vaddr, nr uint64
}

func (p *getPipe) inFlight() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pending)
}

// SendGet sends a GET for nr pages at vaddr of task pid without waiting
// for the reply; RecvGet reads the replies in the order sent. One
// goroutine may send while another receives; Get refuses while replies are
// outstanding.
func (c *Client) SendGet(pid int, vaddr, nr uint64) error {
	if nr == 0 {
		return errors.New("page server: GET of no pages")
	}
	if c.sp != nil {
		return errStripedGet
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.usable(); err != nil {
		return err
	}
	c.pipe.mu.Lock()
	if err := c.pipe.err; err != nil {
		c.pipe.mu.Unlock()
		return err
	}
	c.pipe.pending = append(c.pipe.pending, pendingGet{pid, vaddr, nr})
	c.pipe.mu.Unlock()
	if err := sendHeader(c.ctrlRW(), wire.Header{Cmd: wire.CmdGet, NrPages: nr, Vaddr: vaddr, DstID: uint64(pid)}); err != nil {
		return c.fail(fmt.Errorf("page server: GET: %w", err))
	}
	c.push()
	return nil
}

// RecvGet reads the reply to the oldest GET sent by SendGet into dst,
// which must hold the pages asked. It returns the request and how many
// pages the server sent (fewer than asked: one pagemap entry at most), or
// ErrNoPages.
func (c *Client) RecvGet(dst []byte) (pid int, vaddr, got uint64, err error) {
	c.pipe.rmu.Lock()
	defer c.pipe.rmu.Unlock()
	c.pipe.mu.Lock()
	if c.pipe.err != nil || len(c.pipe.pending) == 0 {
		err := c.pipe.err
		c.pipe.mu.Unlock()
		if err == nil {
			err = errors.New("page server: no GET awaits a reply")
		}
		return 0, 0, 0, err
	}
	p := c.pipe.pending[0]
	c.pipe.mu.Unlock()
	if uint64(len(dst))/PageSize < p.nr {
		return p.pid, p.vaddr, 0, fmt.Errorf("page server: GET reply of %d pages into %d bytes", p.nr, len(dst))
	}
	got, err = c.readGetReply(p, dst)
	c.pipe.mu.Lock()
	c.pipe.pending = c.pipe.pending[1:]
	if err != nil && !errors.Is(err, ErrNoPages) && c.pipe.err == nil {
		c.pipe.err = err
	}
	c.pipe.mu.Unlock()
	return p.pid, p.vaddr, got, err
}

// readGetReply reads the reply to p: its header, then the data into dst.
func (c *Client) readGetReply(p pendingGet, dst []byte) (uint64, error) {
	readFull := func(b []byte) error {
		if c.raw != nil && !c.handedOver {
			return recvFull(c.raw, b, c.blocking)
		}
		_, err := io.ReadFull(c.ctrlRW(), b)
		return err
	}
	var hb [wire.HeaderSize]byte
	if err := readFull(hb[:]); err != nil {
		return 0, fmt.Errorf("page server: GET reply: %w", err)
	}
	h, _ := wire.Unmarshal(hb[:])
	if cmd := h.Command(); cmd != wire.CmdAddF && cmd != wire.CmdAdd || h.NrPages > p.nr ||
		h.NrPages != 0 && (h.Vaddr != p.vaddr || h.DstID != uint64(p.pid)) {
		return 0, fmt.Errorf("page server: GET %#x+%d: bad reply %s nr_pages=%d vaddr=%#x dst_id=%#x",
			p.vaddr, p.nr, wire.CommandName(h.Command()), h.NrPages, h.Vaddr, h.DstID)
	}
	if h.NrPages == 0 {
		return 0, ErrNoPages
	}
	if err := readFull(dst[:h.NrPages*PageSize]); err != nil {
		return 0, fmt.Errorf("page server: GET data: %w", err)
	}
	return h.NrPages, nil
}

// drainGets reads and drops the replies still due (Close: the stream must
// be in step before CLOSE). Called with c.mu held.
func (c *Client) drainGets() error {
	if c.pipe.inFlight() == 0 {
		return nil
	}
	var buf []byte
	for c.pipe.inFlight() > 0 {
		c.pipe.mu.Lock()
		nr := c.pipe.pending[0].nr
		c.pipe.mu.Unlock()
		if uint64(len(buf)) < nr*PageSize {
			buf = make([]byte, nr*PageSize)
		}
		if _, _, _, err := c.RecvGet(buf); err != nil && !errors.Is(err, ErrNoPages) {
			return err
		}
	}
	return nil
}
