package kerndat

import (
	"fmt"
	"io"
	"strings"
)

// Options select what Run checks; they are the options of `godwit check`.
type Options struct {
	Extra        bool   // also category 2
	Experimental bool   // also category 3
	All          bool   // categories 1, 2 and 3
	Feature      string // only this feature; "list" prints the names
	// OnResult, if set, sees every result as it is produced (the CLI logs
	// the successful ones at -v4).
	OnResult func(Result)
	// Errors, if set, receives the "Error"/"Warn" lines of missing
	// features (CRIU logs them; the verdict alone goes to Run's writer).
	// Nil: both go to Run's writer.
	Errors io.Writer
}

// The verdicts of CRIU's cr-check.c, word for word.
const (
	VerdictGood  = "Looks good."
	VerdictBad   = "Does not look good."
	VerdictMaybe = "Looks good but some kernel features are missing\n" +
		"which, depending on your process tree, may cause\n" +
		"dump or restore failure."
)

// Selected returns the features Run would probe for o (nil for a
// `--feature` request, which Run handles on its own).
func Selected(o Options) []Feature {
	var out []Feature
	for _, f := range registry {
		switch f.Category {
		case Required:
		case Extra:
			if !o.Extra && !o.All {
				continue
			}
		case Experimental:
			if !o.Experimental && !o.All {
				continue
			}
		}
		out = append(out, f)
	}
	return out
}

// Run performs `godwit check` and writes CRIU's report to w: one line per
// missing feature ("Error (kerndat): ..." for category 1, "Warn  (kerndat):
// ..." for the others), then one verdict. exitCode is what the command
// must exit with: 0 when everything probed works, 1 otherwise, like CRIU.
// err is set only for a request that cannot be run (unknown feature name)
// or when w fails; the CLI prints it.
func Run(w io.Writer, o Options) (exitCode int, err error) {
	ew := &errWriter{w: w}
	fw := ew
	if o.Errors != nil {
		fw = &errWriter{w: o.Errors}
	}
	switch o.Feature {
	case "":
	case "list":
		ew.printf("%s\n", wrapNames(Names(), 80))
		return ew.result(0)
	default:
		f, ok := Lookup(o.Feature)
		if !ok {
			return 1, &UnknownFeatureError{Name: o.Feature}
		}
		r := f.Probe()
		if o.OnResult != nil {
			o.OnResult(r)
		}
		if r.OK() {
			ew.printf("%s is supported\n", f.Name)
			return ew.result(0)
		}
		fw.printf("%s\n", failureLine(r))
		ew.printf("%s is not supported\n", f.Name)
		return ew.result(1)
	}

	missing1, missing := false, false
	for _, f := range Selected(o) {
		r := f.Probe()
		if o.OnResult != nil {
			o.OnResult(r)
		}
		if r.OK() {
			continue
		}
		missing = true
		if f.Category == Required {
			missing1 = true
		}
		fw.printf("%s\n", failureLine(r))
	}
	switch {
	case missing1:
		ew.printf("%s\n", VerdictBad)
		return ew.result(1)
	case missing:
		ew.printf("%s\n", VerdictMaybe)
		return ew.result(1)
	}
	ew.printf("%s\n", VerdictGood)
	return ew.result(0)
}

// failureLine formats a failed result the way CRIU prefixes its messages
// ("Error (file:line): " / "Warn  (file:line): "), with the feature name.
func failureLine(r Result) string {
	prefix := "Warn  (kerndat): "
	if r.Feature.Category == Required {
		prefix = "Error (kerndat): "
	}
	msg := strings.ReplaceAll(r.Err.Error(), "\n", " ")
	return prefix + r.Feature.Name + ": " + msg
}

// wrapNames joins names with single spaces, breaking lines before width.
func wrapNames(names []string, width int) string {
	var b strings.Builder
	col := 0
	for i, n := range names {
		if i > 0 {
			if col+1+len(n) > width {
				b.WriteByte('\n')
				col = 0
			} else {
				b.WriteByte(' ')
				col++
			}
		}
		b.WriteString(n)
		col += len(n)
	}
	return b.String()
}

type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) printf(format string, a ...any) {
	if e.err == nil {
		_, e.err = fmt.Fprintf(e.w, format, a...)
	}
}

func (e *errWriter) result(code int) (int, error) {
	if e.err != nil {
		return 1, fmt.Errorf("write check report: %w", e.err)
	}
	return code, nil
}
