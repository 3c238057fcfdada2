package dumper

import (
	"context"
	"fmt"
)

// rollback is the undo list of a dump: steps are added as the dump makes
// changes and run once, last added first, whichever way the dump fails
// (an error, a panic turned into one, an interruption).
type rollback struct {
	steps []func()
	done  bool
}

func (r *rollback) add(f func()) { r.steps = append(r.steps, f) }

// run undoes every step added so far, once; later calls do nothing.
func (r *rollback) run() {
	if r.done {
		return
	}
	r.done = true
	for i := len(r.steps) - 1; i >= 0; i-- {
		r.steps[i]()
	}
}

// disarm keeps every change: the dump succeeded.
func (r *rollback) disarm() { r.done = true }

// interrupted reports ctx's end (godwit got SIGINT, SIGTERM or SIGHUP) as
// an error naming its cause.
func interrupted(ctx context.Context) error {
	if ctx == nil || ctx.Err() == nil {
		return nil
	}
	return fmt.Errorf("interrupted: %w", context.Cause(ctx))
}
