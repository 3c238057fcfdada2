// Package inject runs syscalls inside a traced task for the dumper and
// the restorer alike: a Session is a run of injected calls in one thread
// (internal/ptrace's injection session) with a scratch area in the task
// for their in/out buffers, and errors that name the call.
package inject
