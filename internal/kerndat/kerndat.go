// Package kerndat probes the running kernel for the features godwit's
// checkpoint and restore mechanisms need, in CRIU's three categories, and
// prints the report of `godwit check` in CRIU's words.
//
// Every probe exercises the kernel for real (it forks, traces, dumps
// sockets, sets socket options...) and leaves nothing behind: children are
// killed and reaped, descriptors and sockets closed, nothing is mounted in
// the caller's mount namespace.
package kerndat

import (
	"fmt"
	"slices"
	"strings"
)

// Category is CRIU's class of a kernel feature.
type Category int

const (
	// Required features: checkpoint or restore cannot work without them.
	Required Category = 1
	// Extra features are needed only by some process trees (`--extra`).
	Extra Category = 2
	// Experimental features (`--experimental`).
	Experimental Category = 3
)

func (c Category) String() string {
	switch c {
	case Required:
		return "required"
	case Extra:
		return "extra"
	case Experimental:
		return "experimental"
	}
	return fmt.Sprintf("category(%d)", int(c))
}

// Feature is one probe of the registry.
type Feature struct {
	// Name is CRIU's `--feature` name where CRIU has one, godwit's otherwise.
	Name     string
	Category Category
	// Doc says in a few words what is probed.
	Doc   string
	probe func() error
}

// Result is the outcome of probing one feature.
type Result struct {
	Feature Feature
	// Err is nil when the feature works in godwit today; otherwise it
	// says why not (a *NotBuiltError when only godwit is missing).
	Err error
}

// OK reports whether the feature is supported.
func (r Result) OK() bool { return r.Err == nil }

// All returns every feature in the order `godwit check` probes them.
func All() []Feature { return slices.Clone(registry) }

// Names returns the names of all features, in registry order.
func Names() []string {
	n := make([]string, len(registry))
	for i, f := range registry {
		n[i] = f.Name
	}
	return n
}

// Lookup finds a feature by name.
func Lookup(name string) (Feature, bool) {
	for _, f := range registry {
		if f.Name == name {
			return f, true
		}
	}
	return Feature{}, false
}

// UnknownFeatureError is returned for a name that is not in the registry.
type UnknownFeatureError struct{ Name string }

func (e *UnknownFeatureError) Error() string {
	return fmt.Sprintf("unknown feature %q; valid features: %s", e.Name, strings.Join(Names(), ", "))
}

// Probe runs the probe of the named feature.
func Probe(name string) (Result, error) {
	f, ok := Lookup(name)
	if !ok {
		return Result{}, &UnknownFeatureError{Name: name}
	}
	return f.Probe(), nil
}

// Probe runs the feature's probe. A feature is supported only when the
// kernel has it and the godwit command it serves is built (see needs);
// kernel support alone gives a NotBuiltError that says so. A panic inside a probe is turned into
// a failed result, so one broken probe cannot take the whole check down.
func (f Feature) Probe() (r Result) {
	r.Feature = f
	defer func() {
		if p := recover(); p != nil {
			r.Err = fmt.Errorf("probe panicked: %v", p)
		}
	}()
	if f.probe == nil {
		r.Err = fmt.Errorf("no probe on this platform")
		return r
	}
	r.Err = f.probe()
	if c, ok := needs[f.Name]; ok && r.Err == nil && !c.Built {
		r.Err = &NotBuiltError{Feature: f.Name, Command: c.Name}
	}
	return r
}
