package pageserver

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"godwit/pageserver/internal/wire"
)

// striper sends a client's pages over several connections at once
// (TransportOptions.Streams; the server side is stripe.go). Each request
// gets its place in the pagemap and its data's place in the pages file
// when the caller makes it, so the connections need no order between
// them; one worker per connection writes what the caller queued, so that
// the connections' encryption runs on as many cores. The caller's page
// data is copied into a bounded pool of chunk buffers (backpressure).
type striper struct {
	subs []*Client
	jobs chan *stripeJob
	bufs chan []byte
	wg   sync.WaitGroup // workers

	// pending counts the queued jobs not yet written.
	pending sync.WaitGroup
	mu      sync.Mutex
	err     error // the first failure; the connections are aborted
	open    *TaskSink
}

// stripeChunk is the data of one ADD_AT at most (pages): small enough that
// a few per connection keep every connection busy within a bounded pool.
const stripeChunk = 256

// stripeHdr is a request's header and ADD_AT extension.
const stripeHdr = wire.HeaderSize + wire.StripeExtSize

type stripeJob struct {
	b      []byte // header, extension, data
	pooled bool
}

// dialStriped dials n connections, one after another from the calling
// goroutine: a caller that entered a network namespace on its thread gets
// every socket made there.
func dialStriped(ctx context.Context, addr string, o TransportOptions, n int) (*Client, error) {
	if n > MaxStreams {
		return nil, fmt.Errorf("page server: %d streams (at most %d)", n, MaxStreams)
	}
	o.Streams = 0
	subs := make([]*Client, 0, n)
	for range n {
		c, err := Dial(ctx, addr, o)
		if err != nil {
			for _, c := range subs {
				c.Abort()
			}
			return nil, err
		}
		subs = append(subs, c)
	}
	t, _ := o.transport()
	sp := &striper{subs: subs, jobs: make(chan *stripeJob, 2*n), bufs: make(chan []byte, n+2)}
	for range n + 2 {
		sp.bufs <- make([]byte, stripeHdr+stripeChunk*PageSize)
	}
	for _, c := range subs {
		sp.wg.Add(1)
		go sp.work(c)
	}
	return &Client{transport: t, sp: sp, sinks: map[*TaskSink]struct{}{}, dedup: o.Dedup}, nil
}

// work writes the jobs it takes to connection c.
func (sp *striper) work(c *Client) {
	defer sp.wg.Done()
	for j := range sp.jobs {
		if sp.failed() == nil {
			c.mu.Lock()
			_, err := c.ctrlRW().Write(j.b)
			c.mu.Unlock()
			if err != nil {
				h, _ := wire.Unmarshal(j.b)
				sp.fail(fmt.Errorf("page server: %s %#x: %w", wire.CommandName(h.Command()), h.Vaddr, err))
			}
		}
		if j.pooled {
			sp.bufs <- j.b[:cap(j.b)]
		}
		sp.pending.Done()
	}
}

func (sp *striper) failed() error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return sp.err
}

// fail records the first failure and aborts every connection: the server
// drops the striped pagemaps.
func (sp *striper) fail(err error) error {
	sp.mu.Lock()
	first := sp.err == nil
	if first {
		sp.err = err
	}
	sp.mu.Unlock()
	if first {
		sp.abort()
	}
	return err
}

func (sp *striper) abort() {
	for _, c := range sp.subs {
		c.Abort()
	}
}

// each runs f on every connection at once.
func (sp *striper) each(f func(c *Client) error) error {
	errs := make([]error, len(sp.subs))
	var wg sync.WaitGroup
	for i, c := range sp.subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(c)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// openTask joins every connection to dst's pagemap.
func (sp *striper) openTask(c *Client, dst uint64) (*TaskSink, error) {
	if err := sp.failed(); err != nil {
		return nil, err
	}
	sp.mu.Lock()
	busy := sp.open
	sp.mu.Unlock()
	if busy != nil {
		return nil, fmt.Errorf("page server: task %#x still open on these connections", busy.dst)
	}
	var mu sync.Mutex
	parents := map[bool]int{}
	err := sp.each(func(sc *Client) error {
		sc.mu.Lock()
		defer sc.mu.Unlock()
		rw := sc.ctrlRW()
		if err := sendHeader(rw, wire.Header{Cmd: wire.CmdOpenStripe, NrPages: uint64(len(sp.subs)), DstID: dst}); err != nil {
			return err
		}
		var b [1]byte
		if _, err := io.ReadFull(rw, b[:]); err != nil {
			return fmt.Errorf("no answer: %w", err)
		}
		mu.Lock()
		parents[b[0] != 0]++
		mu.Unlock()
		return nil
	})
	if err == nil && len(parents) != 1 {
		err = errors.New("the connections disagree on the parent pagemap")
	}
	if err != nil {
		return nil, sp.fail(fmt.Errorf("page server: OPEN_STRIPE %#x: %w", dst, err))
	}
	s := &TaskSink{c: c, dst: dst, hasParent: parents[true] > 0, sp: sp}
	if c.dedup {
		s.dd = newDedup()
	}
	sp.mu.Lock()
	sp.open = s
	sp.mu.Unlock()
	return s, nil
}

// queue hands a request to the workers.
func (sp *striper) queue(j *stripeJob) {
	sp.pending.Add(1)
	sp.jobs <- j
}

// stripedAdd queues nr pages at vaddr, their data read from src (or
// taken from data) into pool buffers.
func (s *TaskSink) stripedAdd(vaddr, nr uint64, flags uint32, src io.Reader, data []byte) error {
	if s.dd != nil && flags&FlagPresent != 0 {
		if data == nil {
			if pb, ok := src.(pageBuffer); ok {
				if data = pb.Take(int(nr * PageSize)); uint64(len(data)) != nr*PageSize {
					return s.abort(fmt.Errorf("page server: ADD %#x+%d pages: source ended after %d bytes", vaddr, nr, len(data)))
				}
			}
		}
		if data != nil {
			return s.sendDedup(vaddr, flags, data)
		}
		s.dd.sent += nr
	}
	return s.stripedData(vaddr, nr, flags, src, data)
}

// stripedRef queues a ZERO_AT or COPY_AT (of the pages from page src) of
// nr pages at vaddr.
func (s *TaskSink) stripedRef(cmd uint16, vaddr, nr uint64, flags uint32, src uint64) error {
	for nr > 0 {
		k := min(nr, stripeChunk)
		b := make([]byte, stripeHdr, stripeHdr+wire.CopyExtSize)
		s.stripedHeader(b, vaddr, k, flags)
		h, _ := wire.Unmarshal(b)
		h.Cmd = wire.MakeCmd(cmd, uint16(flags))
		h.Marshal(b)
		if cmd == wire.CmdCopyAt {
			b = binary.NativeEndian.AppendUint64(b, src)
			src += k
		}
		s.sp.queue(&stripeJob{b: b})
		vaddr += k * PageSize
		nr -= k
	}
	if err := s.sp.failed(); err != nil {
		return s.abort(err)
	}
	return nil
}

// stripedData queues nr pages at vaddr, their data read from src (or
// taken from data) into pool buffers.
func (s *TaskSink) stripedData(vaddr, nr uint64, flags uint32, src io.Reader, data []byte) error {
	sp := s.sp
	if flags&FlagPresent == 0 {
		b := make([]byte, stripeHdr)
		s.stripedHeader(b, vaddr, nr, flags)
		sp.queue(&stripeJob{b: b})
		return nil
	}
	for nr > 0 {
		k := min(nr, stripeChunk)
		b := <-sp.bufs
		b = b[:stripeHdr+k*PageSize]
		if data != nil {
			copy(b[stripeHdr:], data[:k*PageSize])
			data = data[k*PageSize:]
		} else if src == nil {
			sp.bufs <- b[:cap(b)]
			return s.abort(errors.New("page server: no page source"))
		} else if got, err := io.ReadFull(src, b[stripeHdr:]); err != nil {
			sp.bufs <- b[:cap(b)]
			return s.abort(fmt.Errorf("page server: ADD %#x+%d pages: source ended after %d bytes: %w", vaddr, k, got, err))
		}
		s.stripedHeader(b, vaddr, k, flags)
		sp.queue(&stripeJob{b: b, pooled: true})
		if err := sp.failed(); err != nil {
			return s.abort(err)
		}
		vaddr += k * PageSize
		nr -= k
	}
	return nil
}

// stripedHeader fills an ADD_AT request for the next entry.
func (s *TaskSink) stripedHeader(b []byte, vaddr, nr uint64, flags uint32) {
	wire.Header{Cmd: wire.MakeCmd(wire.CmdAddAt, uint16(flags)), NrPages: nr, Vaddr: vaddr, DstID: s.dst}.Marshal(b)
	binary.NativeEndian.PutUint64(b[wire.HeaderSize:], s.seq)
	binary.NativeEndian.PutUint64(b[wire.HeaderSize+8:], s.off)
	s.seq++
	if flags&FlagPresent != 0 {
		s.off += nr
	}
}

// stripedClose waits until the task's requests are written and ends the
// task on every connection; the server writes its pagemap then, and says
// whether it could at the client's Close.
func (s *TaskSink) stripedClose() error {
	sp := s.sp
	sp.pending.Wait()
	sp.mu.Lock()
	if sp.open == s {
		sp.open = nil
	}
	sp.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	if err := sp.failed(); err != nil {
		return err
	}
	err := sp.each(func(c *Client) error {
		c.mu.Lock()
		defer c.mu.Unlock()
		return sendHeader(c.ctrlRW(), wire.Header{Cmd: wire.CmdEndStripe, NrPages: s.seq, Vaddr: s.off, DstID: s.dst})
	})
	if err != nil {
		return sp.fail(fmt.Errorf("page server: END_STRIPE %#x: %w", s.dst, err))
	}
	return nil
}

// close ends the open task, stops the workers and closes every
// connection (each waits for the server's status).
func (sp *striper) close() error {
	sp.mu.Lock()
	open := sp.open
	sp.mu.Unlock()
	var err error
	if open != nil {
		err = open.Close()
	}
	close(sp.jobs)
	sp.wg.Wait()
	if ferr := sp.failed(); ferr != nil {
		sp.abort()
		return errors.Join(err, ferr)
	}
	if err != nil {
		sp.abort()
		return err
	}
	return sp.each(func(c *Client) error { return c.Close() })
}
