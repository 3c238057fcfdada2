package restorer

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"godwit/internal/inject"
	"godwit/internal/ptrace"
)

// session is a run of injected syscalls into one thread of the task, with
// the scratch area of godwit's window for their in/out buffers.
type session = inject.Session

// The batch runner (ptrace.BatchCode) sits in the last page of the
// window's bounce area, mapped once in the first puppet so that every
// task of the tree inherits it; batch tables take the upper half of the
// scratch area, the drivers' buffers the lower.
const (
	runnerOff     = bounceOff + bounceSize - pageSize
	batchTableOff = scratchSize / 2
)

func (r *taskRun) begin(tid int) (*session, error) {
	s, err := inject.Begin(r.tr, r.img.pid, tid, r.win.scratch, scratchSize)
	if err != nil {
		return nil, err
	}
	if r.runner && r.scratchMapped {
		s.SetBatch(r.win.base+runnerOff, batchTableOff)
	}
	return s, nil
}

// mapRunner maps the batch runner into the window of puppet pid.
func mapRunner(tr *ptrace.Tracer, pid int, win window) error {
	at := win.base + runnerOff
	got, err := tr.InjectSyscall(pid, unix.SYS_MMAP, at, pageSize, unix.PROT_READ|unix.PROT_EXEC,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED_NOREPLACE, ^uint64(0), 0)
	if err != nil {
		return fmt.Errorf("map the batch runner: %w", err)
	}
	if got != at {
		return fmt.Errorf("map the batch runner: mapped at %#x, not %#x", got, at)
	}
	return ptrace.PokeMem(pid, at, ptrace.BatchCode)
}

// mapScratch maps the window's scratch area into puppet pid, for every
// task of the tree to inherit.
func mapScratch(tr *ptrace.Tracer, pid int, win window) error {
	got, err := tr.InjectSyscall(pid, unix.SYS_MMAP, win.scratch, scratchSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED_NOREPLACE, ^uint64(0), 0)
	if err != nil {
		return fmt.Errorf("map the scratch area: %w", err)
	}
	if got != win.scratch {
		return fmt.Errorf("map the scratch area: mapped at %#x, not %#x", got, win.scratch)
	}
	return nil
}

// errnoOf digs the errno out of an injected call's error.
var errnoOf = inject.Errno

// batch collects injected calls whose results are only checked, to run
// them with one stop when a result is needed (flush).
type batch struct {
	s     *session
	calls []inject.Call
	check []func(ret uint64, err error) error
}

// add queues c; check (if not nil) sees its result, or its error, which
// it may turn into nil to go on with the calls after it.
func (b *batch) add(c inject.Call, check func(ret uint64, err error) error) {
	b.calls = append(b.calls, c)
	b.check = append(b.check, check)
}

// flush runs the queued calls, in order.
func (b *batch) flush() error {
	defer func() { b.calls, b.check = b.calls[:0], b.check[:0] }()
	for len(b.calls) > 0 {
		got, err := b.s.Batch(b.calls)
		for i, ret := range got {
			if chk := b.check[i]; chk != nil {
				if e := chk(ret, nil); e != nil {
					return e
				}
			}
		}
		if err == nil {
			return nil
		}
		if errors.Is(err, inject.ErrQueued) {
			// The session's own queue (Later) failed before any of
			// ours ran: no check of ours may judge it.
			return err
		}
		i := len(got) // the one that failed
		if i >= len(b.calls) {
			return err
		}
		if chk := b.check[i]; chk != nil {
			err = chk(0, err)
		}
		if err != nil {
			return err
		}
		b.calls, b.check = b.calls[i+1:], b.check[i+1:]
	}
	return nil
}
