package ptrace

import (
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// The main goroutine starts on the main thread; locking it there lets
// TestMain run a tracer loop on that thread, as the scheduler may do.
func init() { runtime.LockOSThread() }

var mainThreadTracer int

func TestMain(m *testing.M) {
	// A tracer loop started on the main thread must move off it: the
	// runtime parks an exiting main thread instead of ending it, so
	// EXITKILL would never fire. Without the move, loop never returns.
	t := newTracer()
	ready := make(chan int, 1)
	t.loop(ready)
	t.tid = <-ready
	mainThreadTracer = t.tid
	t.Close()
	runtime.UnlockOSThread()
	os.Exit(m.Run())
}

func TestTracerLeavesTheMainThread(t *testing.T) {
	if mainThreadTracer == 0 || mainThreadTracer == unix.Getpid() {
		t.Fatalf("tracer thread %d: still the main thread (%d)", mainThreadTracer, unix.Getpid())
	}
}
