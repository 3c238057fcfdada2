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
		// The first round's rate, counted at its end: 1 MB/s over a 1 s
		// round at 1 GB/s is 1 ms of delta; 500 MB/s is 0.5 s.
		{"first round: measured, fits", []Round{round(1024*MB, time.Second, MB)}, 8, true, false},
		{"first round: measured, too much", []Round{round(1024*MB, time.Second, 500*MB)}, 8, false, false},
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
		stop, overrun, _ := decide(c.rounds, budget, c.max, pageRoom{})
		if stop != c.stop || overrun != c.overrun {
			t.Errorf("%s: decide = %v, %v; want %v, %v", c.name, stop, overrun, c.stop, c.overrun)
		}
	}
}

// A program that rewrites its memory faster than the link: the rounds
// stop while the final dump (worst case: all memory) still fits under the
// agent's bound, and say why.
func TestDecideByteLimit(t *testing.T) {
	const MB = 1 << 20
	budget := 50 * time.Millisecond
	mem := uint64(256 * MB)
	// A bound of twice the memory plus 256 MiB (the agent's default
	// until the rounds between got room of their own).
	def := 2*mem + migrationSlack
	full := round(256*MB, 4*time.Second, 0)
	// 64 MB/s dirtied over 4 s rounds at 64 MB/s: each round ~ all memory.
	hot := round(250*MB, 4*time.Second, 62*MB)
	for _, c := range []struct {
		name          string
		rounds        []Round
		room          pageRoom
		stop, overrun bool
		why           string
	}{
		{"room for round 1 and the final", nil, pageRoom{limit: def, used: 0, memory: mem}, false, false, ""},
		{"no room for round 1 and the final: stop-and-copy", nil, pageRoom{limit: mem + mem/2, used: 0, memory: mem}, true, false, StopByteLimit},
		// After the first round (256 MiB written) the second might take
		// all memory again, and the final too: 768 MiB + maps > 768 MiB.
		{"after round 1 at twice the memory", []Round{full}, pageRoom{limit: def, used: 256 * MB, memory: mem}, true, false, StopByteLimit},
		// The agent's default (three times the memory) leaves room for
		// a second round of all memory, then the final.
		{"after round 1 at the default bound", []Round{full}, pageRoom{limit: uint64(3*mem + migrationSlack), used: 256 * MB, memory: mem}, false, false, ""},
		{"after round 1, a large bound", []Round{full}, pageRoom{limit: 8 * mem, used: 256 * MB, memory: mem}, false, false, ""},
		// Its writes measured (4 MB/s: 16 MB pending at its end, 20 MB
		// with the margin): round 2 and the final fit the default bound.
		{"after round 1, writes measured", []Round{round(256*MB, 4*time.Second, 4*MB)}, pageRoom{limit: def, used: 256 * MB, memory: mem}, false, false, ""},
		// 60 MB/s: 240 MB pending, 300 MB with the margin: no room.
		{"after round 1, many writes measured", []Round{round(256*MB, 4*time.Second, 60*MB)}, pageRoom{limit: def, used: 256 * MB, memory: mem}, true, false, StopByteLimit},
		// The second round moved nearly everything again: not converging,
		// checked from round 2.
		{"round 2 does not shrink", []Round{full, hot}, pageRoom{limit: 16 * mem, used: 512 * MB, memory: mem}, true, true, StopDiverging},
		// A converging program whose next round would still fit.
		{"converging, room left", []Round{full, round(64*MB, time.Second, 16*MB)}, pageRoom{limit: def, used: 320 * MB, memory: mem}, false, false, ""},
		// The same with the bound nearly used: stop, budget overrun.
		{"converging, no room", []Round{full, round(64*MB, time.Second, 16*MB)}, pageRoom{limit: 600 * MB, used: 320 * MB, memory: mem}, true, true, StopByteLimit},
		// Already past the bound (the agent would have refused): stop.
		{"bound passed", []Round{full}, pageRoom{limit: 100 * MB, used: 256 * MB, memory: mem}, true, false, StopByteLimit},
		{"no bound known", []Round{full}, pageRoom{limit: 0, used: 256 * MB, memory: mem}, false, false, ""},
		// Counted just before round 2: a program that wrote little
		// during round 1 (4 MB/s measured, room by the estimate) but
		// 200 MB since: round 2 and a full final do not fit. The
		// estimate alone would start it, and the final could cross
		// the bound.
		{"after round 1, counted many", []Round{round(256*MB, 4*time.Second, 4*MB)},
			pageRoom{limit: def, used: 256 * MB, memory: mem, next: 200 * MB, counted: true}, true, false, StopByteLimit},
		// Counted few where the estimate says many (60 MB/s during
		// round 1, then the program went quiet): round 2 fits.
		{"after round 1, counted few", []Round{round(256*MB, 4*time.Second, 60*MB)},
			pageRoom{limit: def, used: 256 * MB, memory: mem, next: 8 * MB, counted: true}, false, false, ""},
	} {
		stop, overrun, why := decide(c.rounds, budget, 8, c.room)
		if stop != c.stop || overrun != c.overrun || why != c.why {
			t.Errorf("%s: decide = %v, %v, %q; want %v, %v, %q", c.name, stop, overrun, why, c.stop, c.overrun, c.why)
		}
	}
}

// Whatever the rounds, the policy never starts a round that, at its
// worst (all memory) followed by the final at its worst, passes the bound
// when the estimate is right: the final always fits after a stop.
func TestRoomForFinal(t *testing.T) {
	const MB = 1 << 20
	mem := uint64(100 * MB)
	r := pageRoom{limit: 2*mem + migrationSlack, memory: mem}
	for used := uint64(0); used < r.limit; used += 7 * MB {
		r.used = used
		if r.roomFor(mem) && used+imageBytes(mem)+imageBytes(mem) > r.limit {
			t.Fatalf("used %d: room for a full round and the final claimed, %d > %d", used, used+2*imageBytes(mem), r.limit)
		}
		if !r.roomFor(0) && used+imageBytes(0)+imageBytes(mem) <= r.limit {
			t.Fatalf("used %d: the final fits yet no room", used)
		}
	}
}
