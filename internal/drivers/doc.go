// Package drivers holds one driver per kind of task state (memory layout,
// process group and session, file descriptors by fd kind, fs, sigactions,
// timers, rlimits, credentials, per-thread state, pending signals,
// dumpable and other prctls), each in its own file with both directions: collecting
// from a frozen task (from outside, and with calls injected into it) into
// the checkpoint model, and restoring from the model into the task being
// rebuilt. The registry (driver.go) is the one place that lists them,
// with their dependency order; Ordered gives it, with the engine's own
// phases (threads, mm, registers) in place.
//
// The dumper is "freeze, run the drivers' collectors, write the model";
// the restorer is "lay out memory, fill pages, run Ordered's restorers".
// A new kind of state is a new file here and a line in the registry; a
// new kind of fd is a new file (fd_*.go) whose fdKind, with both
// directions, registers itself (plus its model.FileKind and state in the
// model).
//
// Laying out memory, filling pages and setting registers are the
// engine's: memory must be laid out before pages come (from files, a page
// server, or lazily), and registers go last. The memory driver collects
// the layout and restores the mm fields and exe once the engine's PhaseMM
// has given the VMAs their protections.
package drivers
