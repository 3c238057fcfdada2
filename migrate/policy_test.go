package migrate

import (
	"testing"
	"time"
)

func round(bytes uint64, d time.Duration, dirty float64) Round {
	return Round{Bytes: bytes, Duration: d, DirtyRate: dirty, Bandwidth: float64(bytes) / d.Seconds()}
}

func TestDecide(t *testing.T) {
	const MB = 1 << 20
	budget := 50 * time.Millisecond
	for _, c := range []struct {
		name          string
		rounds        []Round
		max           int
		stop, overrun bool
	}{
		{"stop-and-copy", nil, 0, true, false},
		{"first round: rate unknown", []Round{round(1024*MB, time.Second, 0)}, 8, false, false},
		{"only one round allowed", []Round{round(1024*MB, time.Second, 0)}, 1, true, false},
		// 8 MB/s over a 10 ms round at 1 GB/s: 80 KB, far under budget.
		{"fits", []Round{round(1024*MB, time.Second, 0), round(10*MB, 10*time.Millisecond, 8*MB)}, 8, true, false},
		// 500 MB/s dirty over 1 s rounds at 1 GB/s: 0.5 s > budget, still shrinking.
		{"converging", []Round{round(1024*MB, time.Second, 0), round(500*MB, time.Second, 500*MB)}, 8, false, false},
		{"not converging", []Round{round(1024*MB, time.Second, 0), round(900*MB, time.Second, 900*MB), round(850*MB, time.Second, 850*MB)}, 8, true, true},
		// A program that wrote nothing: the empty round fits at once, it
		// is not an overrun (its own bandwidth, 0, says nothing).
		{"nothing dirty", []Round{round(64*MB, time.Second, 0), {N: 1, Duration: time.Millisecond}}, 8, true, false},
		// A small round measures latency: the first round's bandwidth
		// (1 GB/s) prices the 1 MB/s * 100 ms delta; its own (40 KB/s) would not fit.
		{"small round, best bandwidth", []Round{round(1024*MB, time.Second, 0), round(4096, 100*time.Millisecond, MB)}, 8, true, false},
		{"max rounds overrun", []Round{round(1024*MB, time.Second, 0), round(500*MB, time.Second, 500*MB)}, 2, true, true},
	} {
		stop, overrun := decide(c.rounds, budget, c.max)
		if stop != c.stop || overrun != c.overrun {
			t.Errorf("%s: decide = %v, %v; want %v, %v", c.name, stop, overrun, c.stop, c.overrun)
		}
	}
}
