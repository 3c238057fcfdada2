// Package migrate moves a running process tree from this host to the godwit
// agent on another: the source side (`godwit migrate send`), the destination
// agent, the round policy, the transport and the metrics.
package migrate

import "time"

// Mode is how memory moves: pre-copy rounds then stop-and-copy of the last
// delta, post-copy (resume at once, pages on demand), or hybrid (pre-copy,
// then post-copy when rounds stop converging).
type Mode string

// The modes `migrate send --mode` accepts.
const (
	ModePrecopy  Mode = "precopy"
	ModePostcopy Mode = "postcopy"
	ModeHybrid   Mode = "hybrid"
)

// Phase names where a migration is; a failure is reported with the phase it
// happened in, and metrics count failures by phase.
type Phase string

// The phases of one migration, in order.
const (
	PhaseConnect    Phase = "connect"    // dial, mutual TLS, version
	PhaseCheck      Phase = "check"      // destination can take the tree
	PhasePrecopy    Phase = "precopy"    // rounds while the program runs
	PhaseFreeze     Phase = "freeze"     // source frozen, last delta, state
	PhaseRestore    Phase = "restore"    // destination finalizes and resumes
	PhasePostcopy   Phase = "postcopy"   // pages on demand after resume
	PhaseCommit     Phase = "commit"     // destination confirmed, source killed
	PhaseSwitchover Phase = "switchover" // the point after which the destination is live
)

// Round is one pass of memory transfer.
type Round struct {
	N     int    `json:"n"`     // 0 is the first, full round
	Pages uint64 `json:"pages"` // pages sent (zero pages not counted)
	Bytes uint64 `json:"bytes"` // page data sent: those pages but the two below
	// ZeroPages and SamePages: of Pages, those sent as a short record,
	// all zero (a private page the program filled with zeros) or the
	// same as a page sent before.
	ZeroPages uint64 `json:"zero_pages,omitempty"`
	SamePages uint64 `json:"same_pages,omitempty"`
	// Wire is what a compressed round put on the link (0: not compressed).
	Wire     uint64        `json:"wire_bytes,omitempty"`
	Duration time.Duration `json:"duration_ns"`
	Frozen   time.Duration `json:"frozen_ns"` // how long the source was frozen in it
	// DirtyRate is the bytes per second the program wrote during the round,
	// Bandwidth the bytes per second the round moved.
	DirtyRate float64 `json:"dirty_rate_bps"`
	Bandwidth float64 `json:"bandwidth_bps"`
}

// Postcopy summarises the on-demand phase.
type Postcopy struct {
	Pages    uint64        `json:"pages"`  // pages moved after resume
	Faults   uint64        `json:"faults"` // faults the destination served
	FaultP50 time.Duration `json:"fault_p50_ns"`
	FaultP99 time.Duration `json:"fault_p99_ns"`
	Duration time.Duration `json:"duration_ns"` // resume to last page in
}

// Result is what one migration did; `migrate send --json` prints it and the
// agent keeps the recent ones in its history.
type Result struct {
	ID          string `json:"id"`
	PID         int    `json:"pid"` // root of the tree, same on both hosts
	Tasks       int    `json:"tasks"`
	Source      string `json:"source"`
	Destination string `json:"destination"`
	Mode        Mode   `json:"mode"`
	Transport   string `json:"transport"` // "quic" or "tls"
	Compress    string `json:"compress,omitempty"`
	// Streams is how many connections each round's pages were striped
	// over (1 when compressed).
	Streams int `json:"streams,omitempty"`
	// owner is the fingerprint of the certificate that started the
	// migration (agent side): history and resolve answer only it, or an
	// admin.
	owner string
	// Auto is what --compress auto measured and chose.
	Auto *AutoCompress `json:"compress_auto,omitempty"`
	// Connections counts the established TCP connections moved
	// (--tcp-established).
	Connections int           `json:"connections,omitempty"`
	Started     time.Time     `json:"started"`
	Total       time.Duration `json:"total_ns"`
	// Downtime is from the source freeze to the destination's resume, as
	// godwit measures it.
	Downtime time.Duration `json:"downtime_ns"`
	// Switchover splits Downtime, when the migration got that far.
	Switchover *Switchover `json:"switchover,omitempty"`
	Rounds     []Round     `json:"rounds"`
	Postcopy   *Postcopy   `json:"postcopy,omitempty"`
	// Overlap is what the restore overlapped with the rounds did (nil:
	// no pre-copy round, or the agent never got to the restore).
	Overlap *Overlap `json:"overlap,omitempty"`
	// Overrun is set when the policy gave up converging and the final
	// delta did not fit the downtime budget.
	Overrun bool `json:"overrun,omitempty"`
	// PrecopyStop says why the rounds stopped (Stop*): e.g. "byte-limit"
	// when another round might have left the final dump no room under the
	// agent's --max-migration-bytes.
	PrecopyStop string `json:"precopy_stop,omitempty"`
	// Note says what went wrong after the switch-over point, where the
	// migration still succeeded (the destination's copy is live).
	Note string `json:"note,omitempty"`
	// FailedPhase and Error are set when the migration failed.
	FailedPhase Phase  `json:"failed_phase,omitempty"`
	Error       string `json:"error,omitempty"`
}

// Switchover is where the downtime went: the final dump (freeze, last delta,
// non-memory state), the transfer of the non-memory images, the restore on
// the destination up to its resume point, and the resume (the source killed,
// the destination told to go, its answer).
type Switchover struct {
	Dump    time.Duration `json:"dump_ns"`
	Images  time.Duration `json:"images_ns"`
	Restore time.Duration `json:"restore_ns"`
	Resume  time.Duration `json:"resume_ns"`
	// VMAFlags is where the final dump read the VMAs' flags while frozen:
	// "kernel" (no page walk) or why it read smaps (dumper.Result).
	VMAFlags string `json:"vma_flags,omitempty"`
}

// AutoCompress is --compress auto's measure: the link's rate (a probe on
// the control stream), zstd's rate and ratio on a sample of the program's
// memory, and the choice (compress when zstd is faster than the link and
// shrinks the pages).
type AutoCompress struct {
	Link     float64 `json:"link_bps"`
	Zstd     float64 `json:"zstd_bps"`
	Ratio    float64 `json:"ratio"`
	Compress bool    `json:"compress"`
}
