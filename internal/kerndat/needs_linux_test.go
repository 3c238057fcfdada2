package kerndat

import (
	"errors"
	"testing"
)

// Every feature of the table is in the registry, and its real probe on
// this kernel never says yes while the command is missing.
func TestNeedsTable(t *testing.T) {
	for name, c := range needs {
		r, err := Probe(name)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		var nb *NotBuiltError
		if !c.Built && (r.OK() || (errors.As(r.Err, &nb) && nb.Command != c.Name)) {
			t.Errorf("%s: %v although %s is not built", name, r.Err, c.Name)
		}
	}
}
