package drivers

import (
	"errors"
	"fmt"

	"godwit/internal/inject"
	"godwit/internal/model"
)

// Planned is a driver's injected collection given as calls known before
// any of them runs, which only read state: the dump runs the planned
// calls of every driver in one batch (one ptrace stop for all, where each
// driver's own batches cost one each), then hands each driver its
// results. Done gets the results of Calls, in order, and the drivers'
// scratch (offsets 0 … ScratchDrivers) as the calls left it.
type Planned struct {
	Calls []inject.Call
	Done  func(res []uint64, scratch []byte) error
}

// InjectedPlanner is an InjectedCollector whose calls can be planned.
// Plan returns ok false where it cannot plan (its CollectInjected then
// runs as usual). A call of the plan that fails makes its driver's own
// CollectInjected run instead: the calls only read, so running them
// again is harmless, and the driver tells an expected failure (an older
// kernel's EINVAL) from a real one there.
type InjectedPlanner interface {
	InjectedCollector
	PlanInjected(d *Dump, s *inject.Session) (p Planned, ok bool)
}

// InjectedThreadPlanner is InjectedPlanner for a thread's collection.
type InjectedThreadPlanner interface {
	InjectedThreadCollector
	PlanThreadInjected(d *Dump, s *inject.Session, th *model.Thread) (p Planned, ok bool)
}

// runPlanned runs one driver's plan on its own (its CollectInjected).
func runPlanned(s *inject.Session, p Planned) error {
	res, err := s.Batch(p.Calls)
	if err != nil {
		return err
	}
	scratch, err := readScratch(s)
	if err != nil {
		return err
	}
	return p.Done(res, scratch)
}

// readScratch reads the drivers' part of the scratch.
func readScratch(s *inject.Session) ([]byte, error) {
	scratch := make([]byte, ScratchDrivers)
	if err := s.Read(0, scratch); err != nil {
		return nil, err
	}
	return scratch, nil
}

// plan is one driver's planned calls with what runs in their place if
// they fail.
type plan struct {
	Planned
	fallback func() error
}

// CollectAllInjected runs the injected collection of every driver of ds
// in session s of the task's leader, and the thread collection of the
// leader th: the planned calls first, fused into as few batches as the
// failures of calls allow, then the drivers that do not plan, in order.
func CollectAllInjected(ds []Driver, d *Dump, s *inject.Session, th *model.Thread) error {
	var plans []plan
	var rest []func() error
	for _, k := range ds {
		c, ok := k.(InjectedCollector)
		if !ok {
			continue
		}
		run := func() error { return c.CollectInjected(d, s) }
		if p, ok := k.(InjectedPlanner); ok {
			if pl, ok := p.PlanInjected(d, s); ok {
				plans = append(plans, plan{pl, run})
				continue
			}
		}
		rest = append(rest, run)
	}
	tp, tr := threadPlans(ds, d, s, th)
	plans = append(plans, tp...)
	rest = append(rest, tr...)
	if err := runPlans(s, plans); err != nil {
		return err
	}
	for _, f := range rest {
		if err := f(); err != nil {
			return err
		}
	}
	return nil
}

// CollectAllThreadInjected runs the thread collection of every driver of
// ds in session s of thread th (not the leader), planned calls first.
func CollectAllThreadInjected(ds []Driver, d *Dump, s *inject.Session, th *model.Thread) error {
	plans, rest := threadPlans(ds, d, s, th)
	if err := runPlans(s, plans); err != nil {
		return err
	}
	for _, f := range rest {
		if err := f(); err != nil {
			return err
		}
	}
	return nil
}

func threadPlans(ds []Driver, d *Dump, s *inject.Session, th *model.Thread) (plans []plan, rest []func() error) {
	for _, k := range ds {
		c, ok := k.(InjectedThreadCollector)
		if !ok {
			continue
		}
		run := func() error {
			if err := c.CollectThreadInjected(d, s, th); err != nil {
				return fmt.Errorf("thread %d: %w", th.Tid, err)
			}
			return nil
		}
		if p, ok := k.(InjectedThreadPlanner); ok {
			if pl, ok := p.PlanThreadInjected(d, s, th); ok {
				done := pl.Done
				pl.Done = func(res []uint64, scratch []byte) error {
					if err := done(res, scratch); err != nil {
						return fmt.Errorf("thread %d: %w", th.Tid, err)
					}
					return nil
				}
				plans = append(plans, plan{pl, run})
				continue
			}
		}
		rest = append(rest, run)
	}
	return plans, rest
}

// runPlans runs plans' calls in one batch. Where a call fails, the plans
// wholly before it are done with their results, its own plan's fallback
// runs, and the plans after it go in the next batch.
func runPlans(s *inject.Session, plans []plan) error {
	for len(plans) > 0 {
		var calls []inject.Call
		for _, p := range plans {
			calls = append(calls, p.Calls...)
		}
		res, err := s.Batch(calls)
		if err != nil {
			if _, errno := inject.Errno(err); !errno || errors.Is(err, inject.ErrQueued) || len(res) >= len(calls) {
				return err // not a call's own failure: the task or the tracer
			}
		}
		scratch, rerr := readScratch(s)
		if rerr != nil {
			return rerr
		}
		off := 0
		for len(plans) > 0 {
			p := plans[0]
			end := off + len(p.Calls)
			if end > len(res) {
				break
			}
			if err := p.Done(res[off:end], scratch); err != nil {
				return err
			}
			plans, off = plans[1:], end
		}
		if err == nil {
			return nil
		}
		// plans[0] holds the call that failed.
		if ferr := plans[0].fallback(); ferr != nil {
			return ferr
		}
		plans = plans[1:]
	}
	return nil
}
