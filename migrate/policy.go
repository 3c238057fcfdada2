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

// decide says, after the rounds so far, whether to stop pre-copy, and
// whether stopping now overruns the budget. The first round takes every
// page, so the dirty rate is known only from the second.
func decide(rounds []Round, budget time.Duration, maxRounds int) (stop, overrun bool) {
	n := len(rounds)
	if n == 0 {
		return maxRounds <= 0, false
	}
	fits := n >= 2 && predictedDowntime(rounds) <= budget
	switch {
	case fits:
		return true, false
	case n >= maxRounds:
		return true, n >= 2
	case n >= 3 && !converging(rounds):
		return true, true
	}
	return false, false
}
