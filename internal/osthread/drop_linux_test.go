package osthread

import (
	"os"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestDropEndsTheThread runs f many times: never on the main thread
// (the one /proc/self shows), and each thread f ran on is gone after.
func TestDropEndsTheThread(t *testing.T) {
	for range 50 {
		tid := 0
		Drop(func() { tid = unix.Gettid() })
		if tid == 0 || tid == unix.Getpid() {
			t.Fatalf("f ran on thread %d (main %d)", tid, unix.Getpid())
		}
		p := "/proc/self/task/" + strconv.Itoa(tid)
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
			if _, err := os.Stat(p); os.IsNotExist(err) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("thread %d still there after Drop", tid)
			}
		}
	}
}
