// Package nsstate reads the state of a UTS or IPC namespace other than
// godwit's (host and domain names; ipc sysctls and System V objects) and
// makes it again in a new namespace. Both run on an OS thread of their
// own that joins the namespace with setns and is never given back to the
// Go runtime: it ends with the call, so no other goroutine ever runs in
// a namespace that is not godwit's.
package nsstate
