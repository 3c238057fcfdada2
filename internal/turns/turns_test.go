package turns

import (
	"errors"
	"sync"
	"testing"
	"time"
)

// Tasks started in reverse order take their turns in index order; a
// skipped task passes its turn without entering.
func TestOrder(t *testing.T) {
	const n = 6
	ts := New(n)
	var mu sync.Mutex
	var got []int
	var wg sync.WaitGroup
	for i := n - 1; i >= 0; i-- {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i == 3 {
				ts.Skip(i)
				return
			}
			if err := ts.Enter(i); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			got = append(got, i)
			mu.Unlock()
			ts.Leave(i)
		}()
		time.Sleep(time.Millisecond)
	}
	wg.Wait()
	want := []int{0, 1, 2, 4, 5}
	if len(got) != len(want) {
		t.Fatalf("turns %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("turns %v, want %v", got, want)
		}
	}
}

// Abort ends a wait for a turn that would never come.
func TestAbort(t *testing.T) {
	ts := New(2)
	done := make(chan error, 1)
	go func() { done <- ts.Enter(1) }()
	time.Sleep(10 * time.Millisecond)
	if ts.Aborted() {
		t.Fatal("aborted before Abort")
	}
	ts.Abort()
	select {
	case err := <-done:
		if !errors.Is(err, ErrAborted) {
			t.Fatalf("Enter after Abort: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Enter still waiting after Abort")
	}
	if !ts.Aborted() {
		t.Fatal("not aborted after Abort")
	}
}
