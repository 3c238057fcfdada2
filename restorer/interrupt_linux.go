package restorer

import (
	"context"
	"fmt"
)

// interrupted fails the restore (killing and reaping what was made) once
// ctx is done.
func (r *Restorer) interrupted(ctx context.Context) error {
	if ctx.Err() == nil {
		return nil
	}
	return r.fail("interrupted", context.Cause(ctx))
}

// interruptibleSource makes src end with an error at the next run once ctx
// is done, keeping its FileRuns side if it has one.
func interruptibleSource(ctx context.Context, src PageSource) PageSource {
	c := ctxSource{PageSource: src, ctx: ctx}
	if fr, ok := src.(FileRuns); ok {
		return ctxFileSource{c, fr}
	}
	return c
}

type ctxSource struct {
	PageSource
	ctx context.Context
}

func (c ctxSource) Next() (uint64, uint64, error) {
	if c.ctx.Err() != nil {
		return 0, 0, fmt.Errorf("interrupted: %w", context.Cause(c.ctx))
	}
	return c.PageSource.Next()
}

type ctxFileSource struct {
	ctxSource
	FileRuns
}
