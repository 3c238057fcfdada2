package lazypages

import (
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestShortSlice: the fault thread's slice request reaches the scheduler
// (sched_getattr reads it back) with the thread's nice value kept, and undo
// gives the default back.
func TestShortSlice(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tid := unix.Gettid()
	if err := unix.Setpriority(unix.PRIO_PROCESS, tid, 3); err != nil {
		t.Fatal(err)
	}
	defer unix.Setpriority(unix.PRIO_PROCESS, tid, 0)
	before, err := unix.SchedGetAttr(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	undo := shortSlice(faultSlice)
	got, err := unix.SchedGetAttr(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got.Policy != unix.SCHED_NORMAL || time.Duration(got.Runtime) != faultSlice || got.Nice != 3 {
		t.Fatalf("after shortSlice: policy %d slice %v nice %d, want %d %v 3", got.Policy, time.Duration(got.Runtime), got.Nice, unix.SCHED_NORMAL, faultSlice)
	}
	undo()
	after, err := unix.SchedGetAttr(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if after.Runtime != before.Runtime || after.Policy != before.Policy || after.Nice != 3 {
		t.Fatalf("after undo: policy %d slice %v, want %d %v", after.Policy, time.Duration(after.Runtime), before.Policy, time.Duration(before.Runtime))
	}
}
