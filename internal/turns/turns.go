// Package turns orders steps of tasks that run at once on several
// threads but must come in one order (a tree's order), as one thread
// would run them.
package turns

import (
	"errors"
	"sync"
)

// ErrAborted: another task failed while this one waited for its turn.
var ErrAborted = errors.New("another task failed")

// Turns: task i's turn starts once every task before it has had (or
// passed) its own. Enter, Leave and Skip of task i are called by one
// goroutine (the one running task i).
type Turns struct {
	done    []chan struct{} // done[i] closed: task i and all before it are through
	left    []bool
	entered []bool
	stop    chan struct{}
	once    sync.Once
}

// New returns the turns of n tasks.
func New(n int) *Turns {
	ts := &Turns{done: make([]chan struct{}, n), left: make([]bool, n), entered: make([]bool, n), stop: make(chan struct{})}
	for i := range ts.done {
		ts.done[i] = make(chan struct{})
	}
	return ts
}

// Enter waits for task i's turn (ErrAborted once Abort was called).
func (ts *Turns) Enter(i int) error {
	if ts.entered[i] {
		return nil
	}
	if i > 0 {
		select {
		case <-ts.done[i-1]:
		case <-ts.stop:
			return ErrAborted
		}
	}
	ts.entered[i] = true
	return nil
}

// Leave ends task i's turn.
func (ts *Turns) Leave(i int) {
	if ts.entered[i] && !ts.left[i] {
		ts.left[i] = true
		close(ts.done[i])
	}
}

// Skip passes task i's turn if it has not had it: once the task before
// it is through, without holding up the caller.
func (ts *Turns) Skip(i int) {
	if ts.left[i] {
		return
	}
	ts.left[i] = true
	if ts.entered[i] {
		close(ts.done[i])
		return
	}
	go func() {
		if i > 0 {
			select {
			case <-ts.done[i-1]:
			case <-ts.stop:
			}
		}
		close(ts.done[i])
	}()
}

// Abort ends every wait for a turn.
func (ts *Turns) Abort() { ts.once.Do(func() { close(ts.stop) }) }

// Aborted reports whether Abort was called.
func (ts *Turns) Aborted() bool {
	select {
	case <-ts.stop:
		return true
	default:
		return false
	}
}
