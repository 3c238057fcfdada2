package migrate

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
)

// WriteJSON writes r as one JSON object (what `migrate send --json` prints).
func WriteJSON(w io.Writer, r Result) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("write result: %w", err)
	}
	return nil
}

// Summary is one line saying what a migration did, for a terminal.
func Summary(r Result) string {
	var b strings.Builder
	if failed(r) {
		fmt.Fprintf(&b, "migration of pid %d failed", r.PID)
		if r.FailedPhase != "" {
			fmt.Fprintf(&b, " in phase %s", r.FailedPhase)
		}
		if r.Error != "" {
			fmt.Fprintf(&b, ": %s", r.Error)
		}
		return b.String()
	}
	var sent uint64
	for _, rd := range r.Rounds {
		sent += rd.Bytes
	}
	fmt.Fprintf(&b, "migrated pid %d", r.PID)
	if r.Destination != "" {
		fmt.Fprintf(&b, " to %s", r.Destination)
	}
	fmt.Fprintf(&b, " in %s: downtime %s, %d rounds, %s sent", roundDuration(r.Total),
		roundDuration(r.Downtime), len(r.Rounds), formatBytes(float64(sent)))
	if r.Postcopy != nil {
		fmt.Fprintf(&b, ", post-copy %d pages in %s (%d faults, p99 %s)", r.Postcopy.Pages,
			roundDuration(r.Postcopy.Duration), r.Postcopy.Faults, roundDuration(r.Postcopy.FaultP99))
	}
	if r.Mode != "" || r.Transport != "" {
		fmt.Fprintf(&b, " (%s", r.Mode)
		if r.Transport != "" {
			fmt.Fprintf(&b, " over %s", r.Transport)
		}
		b.WriteString(")")
	}
	switch {
	case r.PrecopyStop == StopByteLimit && r.Overrun:
		b.WriteString("; pre-copy stopped under the agent's --max-migration-bytes, the downtime budget was overrun")
	case r.PrecopyStop == StopByteLimit:
		b.WriteString("; pre-copy stopped under the agent's --max-migration-bytes")
	case r.Overrun:
		b.WriteString("; pre-copy did not converge, the downtime budget was overrun")
	}
	return b.String()
}

// formatBytes prints n with a binary unit (B, KiB, ... TiB).
func formatBytes(n float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for n >= 1024 && i < len(units)-1 {
		n /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f %s", n, units[i])
	}
	return fmt.Sprintf("%.1f %s", n, units[i])
}

// formatRate prints a rate in bytes per second.
func formatRate(bps float64) string { return formatBytes(bps) + "/s" }

// roundDuration keeps three significant digits or so: 1.23s, 45.6ms, 789µs.
func roundDuration(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return d.Round(100 * time.Millisecond).String()
	case d >= time.Second:
		return d.Round(10 * time.Millisecond).String()
	case d >= 10*time.Millisecond:
		return d.Round(100 * time.Microsecond).String()
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond).String()
	default:
		return d.Round(time.Microsecond).String()
	}
}
