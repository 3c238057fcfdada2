package kerndat

import "fmt"

// Command is a godwit command (or option) that some features exist for,
// beyond plain dump and restore.
type Command struct {
	Name string // as the user knows it
	// Built is true once the command works in godwit. Until then the
	// features it needs are reported as not supported, whatever the
	// kernel offers: runc and podman pick their mode from these answers,
	// and a yes would send them into a command that refuses.
	Built bool
}

// The commands that are not plain dump/restore. When one lands, flip its
// Built: the features that need it are then reported from the kernel
// probe alone.
var (
	cmdPreDump    = &Command{Name: "pre-dump (memory dirty tracking)", Built: true}
	cmdLazy       = &Command{Name: "lazy restore (lazy-pages)", Built: true}
	cmdPidfdStore = &Command{Name: "the RPC's pidfd_store_sk option", Built: false}
)

// needs says, per feature, which godwit command it serves. A feature not
// listed serves dump and restore, which are built.
var needs = map[string]*Command{
	"mem_dirty_track": cmdPreDump,
	"soft_dirty":      cmdPreDump,
	"uffd":            cmdLazy,
	"uffd-noncoop":    cmdLazy,
	"lazy_pages":      cmdLazy,
	"pidfd_store":     cmdPidfdStore,
}

// Needs returns the command feature name serves beyond dump and restore,
// if any.
func Needs(name string) (Command, bool) {
	c, ok := needs[name]
	if !ok {
		return Command{}, false
	}
	return *c, true
}

// NotBuiltError is a feature's result when the kernel has the mechanism
// but the godwit command that would use it does not exist yet.
type NotBuiltError struct {
	Feature string
	Command string
}

func (e *NotBuiltError) Error() string {
	return fmt.Sprintf("the kernel supports it, but godwit's %s is not built yet", e.Command)
}
