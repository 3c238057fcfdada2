package dumper

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"

	"godwit/internal/images"
	"godwit/internal/opts"
	"godwit/pageserver"
)

// pageServerTarget sends a dump's pages to a page server (--page-server).
type pageServerTarget struct {
	ctx    context.Context
	c      *pageserver.Client
	closed bool
}

func dialPageServer(o *opts.Options) (*pageServerTarget, error) {
	ctx := context.Background()
	addr := net.JoinHostPort(o.Address, strconv.Itoa(o.Port))
	c, err := pageserver.Dial(ctx, addr, pageserver.TransportOptionsFrom(o))
	if err != nil {
		return nil, fmt.Errorf("page server %s: %w", addr, err)
	}
	return &pageServerTarget{ctx: ctx, c: c}, nil
}

// Open maps an image name to the page server's destination: the task's
// pid for pagemap-PID.img, the object's id for pagemap-shmem-ID.img. The
// server picks its own pages ids.
func (t *pageServerTarget) Open(_ *images.Dir, name string, _ uint32) (pageserver.Sink, error) {
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
	return t.c.OpenTask(t.ctx, dst, false)
}

// Commit ends the session with CLOSE: the server answers once every page is
// written.
func (t *pageServerTarget) Commit() error {
	t.closed = true
	if err := t.c.Close(); err != nil {
		return fmt.Errorf("page server: %w", err)
	}
	return nil
}

// abort drops a session that did not commit; the server discards its
// partial images.
func (t *pageServerTarget) abort() {
	if !t.closed {
		t.c.Abort()
	}
}
