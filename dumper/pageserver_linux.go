package dumper

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"godwit/internal/images"
	"godwit/internal/pagexfer"
	"godwit/pageserver"
)

// pageServerTimeout bounds each exchange with the page server (dial, one
// batch of pages, the final CLOSE): a server that stalls must not keep the
// task frozen; the dump fails and the task resumes.
var pageServerTimeout = 2 * time.Minute

// pageServerTarget sends a dump's pages to a page server (--page-server).
type pageServerTarget struct {
	ctx    context.Context
	c      *pageserver.Client
	closed bool
}

func dialPageServer(parent context.Context, ps *PageServer) (*pageServerTarget, error) {
	// An interruption (parent done) ends the dial at once.
	if ps.Addr == "" {
		conn, err := pageserver.SocketConn(ps.Socket)
		if err != nil {
			return nil, fmt.Errorf("page server: %w", err)
		}
		return &pageServerTarget{ctx: context.Background(), c: pageserver.NewSocketClientWith(conn, ps.Transport)}, nil
	}
	ctx, cancel := context.WithTimeout(parent, pageServerTimeout)
	defer cancel()
	addr := ps.Addr
	c, err := pageserver.Dial(ctx, addr, ps.Transport)
	if err != nil {
		return nil, fmt.Errorf("page server %s: %w", addr, err)
	}
	return &pageServerTarget{ctx: context.Background(), c: c}, nil
}

// watch runs op, aborting the session if it takes longer than
// pageServerTimeout.
func (t *pageServerTarget) watch(op func() error) error {
	timer := time.AfterFunc(pageServerTimeout, t.c.Abort)
	defer timer.Stop()
	return op()
}

// watchedSink is a page-server sink whose every exchange is bounded.
type watchedSink struct {
	t *pageServerTarget
	s pagexfer.Sink
}

func (w watchedSink) AddPages(vaddr, nr uint64, flags uint32, src io.Reader) error {
	return w.t.watch(func() error { return w.s.AddPages(vaddr, nr, flags, src) })
}
func (w watchedSink) Hole(vaddr, nr uint64) error {
	return w.t.watch(func() error { return w.s.Hole(vaddr, nr) })
}
func (w watchedSink) Close() error { return w.t.watch(w.s.Close) }

// Open maps an image name to the page server's destination: the task's
// pid for pagemap-PID.img, the object's id for pagemap-shmem-ID.img. The
// server picks its own pages ids.
func (t *pageServerTarget) Open(_ *images.Dir, name string, _ uint32) (pagexfer.Sink, error) {
	var dst uint64
	switch {
	case strings.HasPrefix(name, "pagemap-shmem-"):
		id, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(name, "pagemap-shmem-"), ".img"), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("page server: no destination for %s", name)
		}
		dst = pageserver.ShmemDst(id)
	default:
		pid, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(name, "pagemap-"), ".img"))
		if err != nil {
			return nil, fmt.Errorf("page server: no destination for %s", name)
		}
		dst = pageserver.TaskDst(pid)
	}
	var sink *pageserver.TaskSink
	err := t.watch(func() (err error) {
		sink, err = t.c.OpenTask(t.ctx, dst, true) // OPEN2: learn whether HOLE may be used
		return err
	})
	if err != nil {
		return nil, err
	}
	return watchedSink{t, sink}, nil
}

// Commit ends the session with CLOSE: the server answers once every page is
// written.
func (t *pageServerTarget) Commit() error {
	t.closed = true
	if err := t.watch(t.c.Close); err != nil {
		return fmt.Errorf("page server: %w", err)
	}
	return nil
}

// deduped is how many pages went as ZERO and COPY records.
func (t *pageServerTarget) deduped() (zero, same uint64) { return t.c.Deduped() }

// dedupedBy is target's deduped, zero for targets without a page server.
func dedupedBy(target PageTarget) (zero, same uint64) {
	if lt, ok := target.(*lazyTarget); ok {
		target = lt.inner
	}
	if pt, ok := target.(*pageServerTarget); ok {
		return pt.deduped()
	}
	return 0, 0
}

// abort drops a session that did not commit; the server discards its
// partial images.
func (t *pageServerTarget) abort() {
	if !t.closed {
		t.c.Abort()
	}
}
