package images

import (
	"fmt"
	"strings"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/stats"
)

// WriteDumpStats writes stats-dump into workDir (criu(8)'s -W: logs,
// pidfiles and statistics), or into d when workDir is "".
func WriteDumpStats(d *Dir, workDir string, s *stats.DumpStatsEntry) error {
	return writeStats(d, workDir, StatsDump, &stats.StatsEntry{Dump: s})
}

// WriteRestoreStats writes stats-restore into workDir, or d when it is "".
func WriteRestoreStats(d *Dir, workDir string, s *stats.RestoreStatsEntry) error {
	return writeStats(d, workDir, StatsRestore, &stats.StatsEntry{Restore: s})
}

func writeStats(d *Dir, workDir, name string, e *stats.StatsEntry) error {
	if workDir != "" {
		w, err := Open(workDir, true)
		if err != nil {
			return fmt.Errorf("work dir: %w", err)
		}
		defer w.Close()
		d = w
	}
	return Write(d, name, e)
}

// ReadStats reads stats-dump or stats-restore (name is StatsDump or
// StatsRestore).
func ReadStats(d *Dir, name string) (*stats.StatsEntry, error) {
	return ReadOne[*stats.StatsEntry](d, name)
}

// FormatStats renders s the way CRIU's --display-stats prints it.
func FormatStats(s *stats.StatsEntry) string {
	var b strings.Builder
	cnt := func(label string, v uint64) { fmt.Fprintf(&b, "%s: %d (%#x)\n", label, v, v) }
	if ds := s.GetDump(); ds != nil {
		b.WriteString("Displaying dump stats:\n")
		fmt.Fprintf(&b, "Freezing time: %d us\n", ds.GetFreezingTime())
		fmt.Fprintf(&b, "Frozen time: %d us\n", ds.GetFrozenTime())
		fmt.Fprintf(&b, "Memory dump time: %d us\n", ds.GetMemdumpTime())
		fmt.Fprintf(&b, "Memory write time: %d us\n", ds.GetMemwriteTime())
		if ds.IrmapResolve != nil {
			fmt.Fprintf(&b, "IRMAP resolve time: %d us\n", ds.GetIrmapResolve())
		}
		cnt("Memory pages scanned", ds.GetPagesScanned())
		cnt("Memory pages skipped from parent", ds.GetPagesSkippedParent())
		cnt("Memory pages written", ds.GetPagesWritten())
		cnt("Lazy memory pages", ds.GetPagesLazy())
	}
	if rs := s.GetRestore(); rs != nil {
		b.WriteString("Displaying restore stats:\n")
		cnt("Pages compared", rs.GetPagesCompared())
		cnt("Pages skipped COW", rs.GetPagesSkippedCow())
		if rs.PagesRestored != nil {
			cnt("Pages restored", rs.GetPagesRestored())
		}
		fmt.Fprintf(&b, "Restore time: %d us\n", rs.GetRestoreTime())
		fmt.Fprintf(&b, "Forking time: %d us\n", rs.GetForkingTime())
	}
	return b.String()
}
