package dumper

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"godwit/uffd"
)

// Discards: what lets the final dump skip the page walk of memory that did
// not change since the last round.
//
// A page discarded since the last round (madvise MADV_DONTNEED or
// MADV_FREE on a clean page) was not written: it just stops holding data,
// and restoring it from the parent would be wrong. The dirty scan reports
// it on 6.18 only by a detail of PAGEMAP_SCAN's WRITTEN-only fast path (a
// none PTE counts as written there; the general path reports it as nothing,
// and a freed page table is a hole). So the final dump walked every page of
// every VMA for presence while the tree is frozen: 3-8 ms/GiB idle, up to
// 65 ms/GiB on a loaded machine, growing with memory size.
//
// With UFFD_FEATURE_EVENT_REMOVE on the tracking uffd, every such discard
// in a tracked VMA is reported to the holder, which keeps the union of the
// discarded ranges since tracking started in its fork-count memfd. The
// final dump then walks only what could have changed: the dirty ranges,
// the discarded ranges and what the parent does not cover; a page the
// parent covers, not written and never discarded since, still holds the
// parent's data and becomes a PARENT entry without a walk. The union is
// cumulative, not per round, so a discard whose event was read before a
// round but whose zap landed during that round's walk is still walked.
//
// The kernel zaps the range only after the event was read (the madvise
// waits for the reader), and a frozen task made no call since, so once
// the uffd has no unread event and the holder has published what it read,
// the log is complete. Synchronisation is a sequence count the holder makes
// odd before each read of the uffd and even once the log is written.
//
// Layout of the memfd (native endian): forks at 0 (readForks), then
// discardSeq, discardOverflow (1: too many ranges, walk everything),
// discardCount, and that many [start, end) pairs.
const (
	discardSeqOff   = 8
	discardOverOff  = 16
	discardCountOff = 24
	discardSpansOff = 32
	// maxDiscardSpans bounds the log (a program that discards all the
	// time): beyond it the final dump walks everything, as without a log.
	maxDiscardSpans = 16384
)

// discardLog is the holder's side: the merged ranges and their memfd.
type discardLog struct {
	fd    int
	seq   uint64
	spans []span
	over  bool
}

// begin marks the log in flux, before the holder reads the uffd.
func (l *discardLog) begin() error {
	l.seq++
	return l.putSeq()
}

func (l *discardLog) putSeq() error {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], l.seq)
	_, err := unix.Pwrite(l.fd, b[:], discardSeqOff)
	return err
}

// add records a discarded range.
func (l *discardLog) add(start, end uint64) {
	if l.over || end <= start {
		return
	}
	l.spans = mergeSpans(append(l.spans, span{Start: start &^ (pageSize - 1), End: (end + pageSize - 1) &^ (pageSize - 1)}))
	if len(l.spans) > maxDiscardSpans {
		l.over, l.spans = true, nil
	}
}

// end publishes the log (changed: it did change) and marks it stable.
func (l *discardLog) end(changed bool) error {
	if changed {
		b := make([]byte, discardSpansOff-discardOverOff+16*len(l.spans))
		if l.over {
			binary.NativeEndian.PutUint64(b[0:], 1)
		}
		binary.NativeEndian.PutUint64(b[8:], uint64(len(l.spans)))
		for i, s := range l.spans {
			binary.NativeEndian.PutUint64(b[16+16*i:], s.Start)
			binary.NativeEndian.PutUint64(b[24+16*i:], s.End)
		}
		if _, err := unix.Pwrite(l.fd, b, discardOverOff); err != nil {
			return err
		}
	}
	l.seq++
	return l.putSeq()
}

// errNoDiscardLog: the final dump cannot know the discards; it walks all.
var errNoDiscardLog = errors.New("no complete discard log")

// discardWait bounds how long the final dump waits for the holder to
// publish the events it read (microseconds, unless the machine is so
// loaded that the holder is not scheduled; then every page is walked).
const discardWait = 3 * time.Second

// discards reads the holder's discard log of the frozen task: every range
// discarded since tracking started, sorted and merged. errNoDiscardLog
// (with a reason) when it cannot be trusted: the caller then walks every
// page.
func (t *tracking) discards() ([]span, error) {
	if t.st == nil || t.st.Features&uffd.FeatureEventRemove == 0 || t.forks == nil || t.u == nil {
		return nil, fmt.Errorf("%w: the tracking does not log discards", errNoDiscardLog)
	}
	deadline := time.Now().Add(discardWait)
	for {
		spans, ok, err := t.readDiscards()
		if err != nil {
			return nil, fmt.Errorf("%w: %v", errNoDiscardLog, err)
		}
		if ok {
			return spans, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%w: the holder did not publish its events within %v", errNoDiscardLog, discardWait)
		}
		time.Sleep(50 * time.Microsecond)
	}
}

// readDiscards is one attempt: ok when the log was stable, with no
// unread event on the uffd, from before to after reading it.
func (t *tracking) readDiscards() ([]span, bool, error) {
	seq1, err := readU64(t.forks, discardSeqOff)
	if err != nil || seq1%2 == 1 {
		return nil, false, err
	}
	fds := []unix.PollFd{{Fd: int32(t.u.Fd()), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	if err != nil {
		if err == unix.EINTR {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("poll uffd: %w", err)
	}
	if n > 0 {
		if fds[0].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 {
			return nil, false, fmt.Errorf("uffd: revents %#x", fds[0].Revents)
		}
		return nil, false, nil // unread events: the holder is behind
	}
	over, err := readU64(t.forks, discardOverOff)
	if err != nil {
		return nil, false, err
	}
	count, err := readU64(t.forks, discardCountOff)
	if err != nil {
		return nil, false, err
	}
	if count > maxDiscardSpans {
		return nil, false, fmt.Errorf("discard log: %d ranges", count)
	}
	b := make([]byte, 16*count)
	if _, err := t.forks.ReadAt(b, discardSpansOff); err != nil && count > 0 {
		return nil, false, fmt.Errorf("read discard log: %w", err)
	}
	seq2, err := readU64(t.forks, discardSeqOff)
	if err != nil || seq2 != seq1 {
		return nil, false, err
	}
	if over != 0 {
		return nil, false, errors.New("too many discarded ranges to log")
	}
	spans, err := parseDiscards(b)
	if err != nil {
		return nil, false, err
	}
	return spans, true, nil
}

// parseDiscards decodes the ranges of a discard log: page-aligned,
// non-empty, sorted and disjoint, as the holder writes them.
func parseDiscards(b []byte) ([]span, error) {
	if len(b)%16 != 0 || len(b)/16 > maxDiscardSpans {
		return nil, fmt.Errorf("discard log: %d bytes", len(b))
	}
	spans := make([]span, len(b)/16)
	for i := range spans {
		s := span{Start: binary.NativeEndian.Uint64(b[16*i:]), End: binary.NativeEndian.Uint64(b[16*i+8:])}
		if s.Start >= s.End || s.Start%pageSize != 0 || s.End%pageSize != 0 || (i > 0 && s.Start <= spans[i-1].End) {
			return nil, fmt.Errorf("discard log: bad range %#x-%#x", s.Start, s.End)
		}
		spans[i] = s
	}
	return spans, nil
}

// readU64 reads a native-endian word at off (0 when the file ends before
// it: nothing written there yet).
func readU64(f *os.File, off int64) (uint64, error) {
	var b [8]byte
	n, err := f.ReadAt(b[:], off)
	switch {
	case n == 8:
		return binary.NativeEndian.Uint64(b[:]), nil
	case n == 0 && errors.Is(err, io.EOF):
		return 0, nil
	}
	return 0, fmt.Errorf("read %s at %d: %d bytes, %v", f.Name(), off, n, err)
}

// unchangedSpans are the pages of a frozen task known to hold what the
// parent has: covered by it, not written and never discarded since, in
// private anonymous VMAs (a private file mapping's pages can also vanish
// by truncation of the file, which no uffd event reports).
func unchangedSpans(vmas []VMA, covered, dirty, removed []span) []span {
	var anon []span
	for i := range vmas {
		if v := &vmas[i]; v.Private() && plainAnon(v) {
			anon = append(anon, span{Start: v.Start, End: v.End})
		}
	}
	keep := uffd.Subtract(uffd.Subtract(covered, dirty), removed)
	return uffd.Intersect(keep, mergeSpans(anon))
}
