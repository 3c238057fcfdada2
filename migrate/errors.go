package migrate

import "fmt"

// PhaseError is a failed migration: where it failed, and why.
type PhaseError struct {
	Phase Phase
	Err   error
}

func (e *PhaseError) Error() string { return fmt.Sprintf("migrate: %s: %v", e.Phase, e.Err) }
func (e *PhaseError) Unwrap() error { return e.Err }

func phaseErr(p Phase, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(*PhaseError); ok {
		return err
	}
	return &PhaseError{Phase: p, Err: err}
}
