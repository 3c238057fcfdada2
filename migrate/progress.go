package migrate

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/sys/unix"
)

// Progress hears what a migration is doing; the send side calls it as the
// migration goes. Implementations are safe for use from several goroutines.
type Progress interface {
	// Phase is called when the migration enters a phase.
	Phase(Phase)
	// Round is called after each memory round.
	Round(Round)
	// Done is called once, with the result, completed or failed.
	Done(Result)
}

// NewProgress returns what `migrate send` reports to w (its stdout) and log
// (its stderr): with jsonOut, the Result as one JSON object on w at the end
// and nothing before; otherwise, when w is a terminal, a live progress line
// and a summary of a completed migration on w; when it is not, nothing on w
// (a script reads the exit status, or asks for --json) and one line per
// round on log, for the record.
func NewProgress(w, log io.Writer, jsonOut bool) Progress {
	if jsonOut {
		return &jsonProgress{w: w}
	}
	if f, ok := w.(*os.File); ok && isTerminal(f) {
		return newBarProgress(w)
	}
	return &logProgress{w: log}
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// logProgress writes one line per round.
type logProgress struct {
	mu sync.Mutex
	w  io.Writer
}

func (*logProgress) Phase(Phase) {}
func (*logProgress) Done(Result) {}

func (p *logProgress) Round(r Round) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "round %d: %d pages in %s (%s, dirty %s)\n", r.N, r.Pages,
		roundDuration(r.Duration), formatRate(r.Bandwidth), formatRate(r.DirtyRate))
}

type jsonProgress struct {
	mu   sync.Mutex
	w    io.Writer
	done bool
}

func (*jsonProgress) Phase(Phase) {}
func (*jsonProgress) Round(Round) {}

func (p *jsonProgress) Done(r Result) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return
	}
	p.done = true
	// Nowhere to report a failed write of the report itself but stderr.
	if err := WriteJSON(p.w, r); err != nil {
		fmt.Fprintf(os.Stderr, "godwit: %v\n", err)
	}
}

// barProgress draws one spinner line with the elapsed time and, as its
// description, the phase, the bytes sent and the last round's figures. The
// spinner turns between rounds, so a long round does not look like a hang.
type barProgress struct {
	mu    sync.Mutex
	w     io.Writer
	bar   *progressbar.ProgressBar
	phase Phase
	last  *Round
	sent  uint64
	done  bool
}

func newBarProgress(w io.Writer) *barProgress {
	p := &barProgress{w: w}
	p.bar = progressbar.NewOptions64(-1,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetElapsedTime(true),
		progressbar.OptionSpinnerType(14),
		progressbar.OptionSetRenderBlankState(true),
		progressbar.OptionClearOnFinish(),
	)
	return p
}

func (p *barProgress) Phase(ph Phase) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return
	}
	p.phase = ph
	p.bar.Describe(describe(p.phase, p.last, p.sent))
}

func (p *barProgress) Round(r Round) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return
	}
	p.last = &r
	p.sent += r.Bytes
	p.bar.Describe(describe(p.phase, p.last, p.sent))
}

func (p *barProgress) Done(r Result) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return
	}
	p.done = true
	// Finish stops the spinner's goroutine and clears the line.
	_ = p.bar.Finish()
	_ = p.bar.Exit()
	// A failure is the command's error, printed once, on stderr.
	if !failed(r) {
		fmt.Fprintln(p.w, Summary(r))
	}
}

// describe is the progress line's text: the phase, then the last round's
// number, the bytes sent so far, the last round's rate, the program's dirty
// rate, and the estimate of the final delta's transfer time if the
// switch-over came now (what the program wrote during the last round, at the
// last round's bandwidth).
func describe(ph Phase, last *Round, sent uint64) string {
	s := string(ph)
	if s == "" {
		s = "starting"
	}
	if last == nil {
		return s
	}
	s = fmt.Sprintf("%s · round %d · %s sent · %s · dirty %s", s, last.N, formatBytes(float64(sent)),
		formatRate(last.Bandwidth), formatRate(last.DirtyRate))
	if est, ok := estimateDelta(*last); ok {
		s += " · est. last delta " + roundDuration(est)
	}
	return s
}

// estimateDelta is how long sending what the program dirtied during round r
// would take at r's bandwidth.
func estimateDelta(r Round) (time.Duration, bool) {
	if r.Bandwidth <= 0 || r.Duration <= 0 {
		return 0, false
	}
	dirty := r.DirtyRate * r.Duration.Seconds()
	return time.Duration(dirty / r.Bandwidth * float64(time.Second)), true
}
