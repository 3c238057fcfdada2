package migrate

import "time"

// nextDelta predicts the bytes the next round would move: the program's
// dirty rate over the time the last round took.
func nextDelta(last Round) float64 { return last.DirtyRate * last.Duration.Seconds() }

// predictedDowntime is the time the last delta would take to move at the
// best bandwidth the rounds measured: a small round (a program that
// dirties little) measures latency, not the link. Nothing to move takes
// no time, whatever the bandwidth.
func predictedDowntime(rounds []Round) time.Duration {
	delta := nextDelta(rounds[len(rounds)-1])
	if delta <= 0 {
		return 0
	}
	var bw float64
	for _, r := range rounds {
		bw = max(bw, r.Bandwidth)
	}
	if bw <= 0 {
		return time.Duration(1<<63 - 1)
	}
	return time.Duration(delta / bw * float64(time.Second))
}

// converging reports whether the rounds still shrink: a round that moves
// more than 80 % of the one before gains little from another.
func converging(rounds []Round) bool {
	n := len(rounds)
	if n < 2 {
		return true
	}
	return float64(rounds[n-1].Bytes) <= 0.8*float64(rounds[n-2].Bytes)
}

// Why pre-copy stopped (Result.PrecopyStop).
const (
	StopConverged   = "converged"      // the last delta fits the downtime budget
	StopMaxRounds   = "max-rounds"     // --max-rounds reached
	StopDiverging   = "not-converging" // the rounds stopped shrinking
	StopByteLimit   = "byte-limit"     // another round might leave no room for the final dump
	StopStopAndCopy = "stop-and-copy"  // --max-rounds 0
)

// pageRoom is what the agent's page-byte bound (--max-migration-bytes)
// leaves the migration: limit, what the rounds wrote there so far (used),
// and the tree's memory now. limit 0: no bound known.
type pageRoom struct {
	limit, used, memory uint64
	// next is the next round's bytes as counted just before it
	// (counted): the pages the tree wrote since the last round's scan
	// (dumper.DirtyPages). Without a count it is estimated from the
	// rounds before (nextRound).
	next    uint64
	counted bool
}

// countSlack covers what the tree writes between the count of a round's
// dirty pages and the round's own scan, a few milliseconds later.
func countSlack(counted uint64) uint64 { return counted/4 + 16<<20 }

// imageBytes is the worst case of one dump of n page bytes on the agent:
// the pages and a pagemap entry for each (every page its own run), plus
// the small images.
func imageBytes(n uint64) uint64 { return n + n/128 + 1<<20 }

// roomFor reports whether a round of about next bytes and then the final
// dump, in the worst case every page of the tree, both fit under the
// agent's bound. The limit is a hard bound there: a round that crosses it
// fails the migration, so pre-copy must stop while the final still fits.
func (r pageRoom) roomFor(next uint64) bool {
	if r.limit == 0 {
		return true
	}
	need := imageBytes(min(next, r.memory)) + imageBytes(r.memory)
	return r.used <= r.limit && need <= r.limit-r.used
}

// nextRound estimates the next round's bytes: the first takes every page;
// later ones twice what the last round moved or the dirty rate predicts
// (a margin for a program that speeds up), at most all memory.
func nextRound(rounds []Round, memory uint64) uint64 {
	if len(rounds) == 0 {
		return memory
	}
	last := rounds[len(rounds)-1]
	est := 2 * max(float64(last.Bytes), nextDelta(last))
	if len(rounds) == 1 && last.DirtyRate > 0 {
		// The first round's size is all memory, not a delta: what the
		// program wrote during it, counted at its end, is. A count,
		// not a forecast: a quarter more covers the writes until the
		// next round's scan.
		est = 1.25 * nextDelta(last)
	}
	if est >= float64(memory) {
		return memory
	}
	return uint64(est)
}

// nextBytes is the next round's size for the byte bound: all memory for
// the first, then the count taken just before it (with a slack for the
// writes until its scan), or without one the estimate from the rounds
// before.
func (r pageRoom) nextBytes(rounds []Round) uint64 {
	switch {
	case len(rounds) == 0:
		return r.memory
	case r.counted:
		return min(r.memory, r.next+countSlack(r.next))
	}
	return nextRound(rounds, r.memory)
}

// decide says, after the rounds so far, whether to stop pre-copy, whether
// stopping now overruns the downtime budget, and why it stops. The first
// round takes every page: its dirty rate, when known (> 0), is what the
// program wrote while it ran, counted at its end.
func decide(rounds []Round, budget time.Duration, maxRounds int, room pageRoom) (stop, overrun bool, why string) {
	n := len(rounds)
	if n == 0 && maxRounds <= 0 {
		return true, false, StopStopAndCopy
	}
	known := n >= 2 || (n == 1 && rounds[0].DirtyRate > 0)
	fits := known && predictedDowntime(rounds) <= budget
	switch {
	case fits:
		return true, false, StopConverged
	case n >= maxRounds:
		return true, n >= 2, StopMaxRounds
	case n >= 2 && !converging(rounds):
		return true, true, StopDiverging
	case !room.roomFor(room.nextBytes(rounds)):
		return true, n >= 2, StopByteLimit
	}
	return false, false, ""
}
