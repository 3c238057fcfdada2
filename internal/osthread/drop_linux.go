// Package osthread runs code on an OS thread that ends with it, for
// changes to a thread (setns, unshare) that must not outlive the call.
package osthread

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// Drop runs f on a goroutine locked to a thread that ends with it, so
// that whatever f changes of its thread (its namespaces) dies with it.
// Never the main thread: Go keeps that one (wedged, still changed) when
// its locked goroutine exits, and it is the thread /proc/self/ns and
// /proc/self/net show. Holding the main thread locked meanwhile keeps f
// off it.
func Drop(f func()) {
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			Drop(f)
			runtime.UnlockOSThread() // untouched
			close(done)
			return
		}
		defer close(done)
		f() // never unlocked: the thread ends with this goroutine
	}()
	<-done
}
