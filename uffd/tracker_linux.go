package uffd

import (
	"errors"
	"fmt"
	"sort"
	"time"

	"golang.org/x/sys/unix"
)

// VMA is one mapping of the tracked process, [Start, End).
type VMA struct {
	// The JSON names are those of the dumper's tracking state, which
	// keeps its page ranges as VMAs.
	Start uint64 `json:"s"`
	End   uint64 `json:"e"`
}

func (v VMA) String() string { return fmt.Sprintf("%#x-%#x", v.Start, v.End) }

// TrackerFeatures are the UFFDIO_API features a tracking uffd needs.
const TrackerFeatures = FeatureWPAsync | FeatureWPUnpopulated | FeaturePagefaultFlagWP

// Tracker finds the pages a (running) process wrote between two scans, without
// soft-dirty: its VMAs are registered in WP mode on a userfaultfd of its mm
// with WP_ASYNC (writes are not stopped, the kernel just drops the page's
// write-protect bit), and PAGEMAP_SCAN with PM_SCAN_WP_MATCHING reports the
// unprotected pages and protects them again in the same call.
//
// Any page that lost its protection, for whatever reason, is reported as
// written: the tracker can over-report, never under-report a write to a VMA it
// tracks.
type Tracker struct {
	u  *Uffd
	pm *Pagemap

	tracked []VMA // sorted, registered WP and protected
	lost    []Region

	// DetailedCategories makes Scan return PageIsPresent, PageIsSwapped and
	// PageIsPFNZero in Written's categories. It costs about 2x scan time:
	// the kernel has a fast path for a WRITTEN-only scan.
	DetailedCategories bool
}

// ScanResult is what changed since the previous Scan.
type ScanResult struct {
	// New lists VMAs (or parts of VMAs) tracked from this scan on: they were
	// not tracked before (first scan, new mmap, grown heap, moved mapping), so
	// all their content counts as changed. They are protected now.
	New []VMA
	// NewPopulated are the pages of New that hold data (present, not the zero
	// page), found after protection started: take these; the rest of New was
	// never populated. With swap enabled, swapped-out pages are included too
	// (and so are WP markers, which look swapped: a harmless over-report).
	NewPopulated []Region
	// Written are pages of previously tracked VMAs written since the last
	// scan, now protected again. Categories is PageIsWritten, plus
	// PageIsPresent, PageIsSwapped and PageIsPFNZero with DetailedCategories.
	// A written page is populated by definition; pages never populated are
	// in no list (and in New but not NewPopulated for new VMAs).
	Written []Region
	// Gone are previously tracked ranges no longer mapped.
	Gone []VMA
	// Untrackable VMAs could not be registered (the kernel refuses some
	// special mappings, e.g. [vdso]): the caller must treat them as always
	// dirty, or as not needing tracking when it knows better.
	Untrackable []VMA
	// Errors per untrackable VMA, same order.
	UntrackableErr []error
}

// WrittenPages counts the pages in Written.
func (r *ScanResult) WrittenPages() uint64 { return regionPages(r.Written) }

func regionPages(rs []Region) uint64 {
	var n uint64
	for _, r := range rs {
		n += (r.End - r.Start) / PageSize
	}
	return n
}

// NewTracker prepares tracking of the mm u belongs to. u must have been API'd
// with TrackerFeatures (or is API'd here if not yet). pm is that process's
// pagemap. The Tracker does not own u or pm.
func NewTracker(u *Uffd, pm *Pagemap) (*Tracker, error) {
	if !u.apiDone {
		if _, err := u.API(TrackerFeatures); err != nil {
			return nil, fmt.Errorf("tracker: %w", err)
		}
	}
	if miss := (FeatureWPAsync | FeaturePagefaultFlagWP) &^ u.features; miss != 0 {
		return nil, fmt.Errorf("tracker: uffd lacks %s", FeatureNames(miss))
	}
	return &Tracker{u: u, pm: pm}, nil
}

// Tracked returns the ranges currently tracked.
func (t *Tracker) Tracked() []VMA { return append([]VMA(nil), t.tracked...) }

// Scan takes the process's current VMAs (from /proc/PID/maps, see ReadVMAs),
// starts tracking the new ones, forgets the gone ones, and reports the pages
// written since the previous Scan. The first Scan reports every VMA as New.
func (t *Tracker) Scan(vmas []VMA) (*ScanResult, error) {
	res := &ScanResult{}
	return res, t.ScanInto(res, vmas)
}

// ScanInto is Scan writing into res, reusing its slices' memory (what res
// held before is overwritten): pre-copy rounds then scan without allocating.
//
// On error, part of the pages may already have been re-protected without
// being reported, so the Tracker forgets everything it tracked: the next
// Scan reports every VMA as New (take all of it again), never less.
func (t *Tracker) ScanInto(res *ScanResult, vmas []VMA) error {
	res.reset()
	err := t.scan(res, vmas)
	if err != nil {
		t.tracked = nil
	}
	return err
}

func (r *ScanResult) reset() {
	r.New, r.NewPopulated, r.Written, r.Gone = r.New[:0], r.NewPopulated[:0], r.Written[:0], r.Gone[:0]
	r.Untrackable, r.UntrackableErr = r.Untrackable[:0], r.UntrackableErr[:0]
}

func (t *Tracker) scan(res *ScanResult, vmas []VMA) error {
	cur := normalize(vmas)
	res.Gone = append(res.Gone, Subtract(t.tracked, cur)...)
	fresh := Subtract(cur, t.tracked)

	// Keep what is still mapped, then add the new parts once they are
	// registered and protected.
	kept := Intersect(t.tracked, cur)
	var added []VMA
	for _, v := range fresh {
		if err := t.start(v); err != nil {
			if untrackable(err) {
				res.Untrackable = append(res.Untrackable, v)
				res.UntrackableErr = append(res.UntrackableErr, err)
				continue
			}
			if errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.ENOENT) {
				// Unmapped since the caller listed it: Gone next time.
				continue
			}
			return err
		}
		added = append(added, v)
	}
	// Scan the old ranges. Runs of adjacent tracked VMAs are scanned in one
	// call; holes between VMAs are skipped by the kernel.
	var lost []VMA
	for _, run := range runs(kept, cur) {
		if err := t.scanRun(run, res, cur, &added, &lost); err != nil {
			return err
		}
	}
	// A lost range is no longer tracked, whether tracking it again
	// worked (then it is in added) or not.
	kept = Subtract(kept, normalize(lost))
	res.New = append(res.New, added...)
	for _, v := range added {
		var err error
		res.NewPopulated, err = t.populated(v, res.NewPopulated)
		if err != nil {
			return err
		}
	}
	t.tracked = normalize(append(kept, added...))
	return nil
}

// untrackable tells the registration errors that mean "this VMA cannot be
// tracked" rather than a failure of the tracker: EINVAL and EPERM for
// mappings the kernel refuses (special mappings, VM_PFNMAP…), EBUSY for a
// VMA already registered with another userfaultfd (the program's own),
// ESRCH when the uffd's mm is gone (the process exec'd since).
func untrackable(err error) bool {
	return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.EBUSY) || errors.Is(err, unix.ESRCH)
}

// Adopt declares ranges as already tracked (registered and protected on
// this Tracker's uffd by an earlier Tracker, e.g. of a previous godwit
// process holding the same uffd): the next Scan reports only their writes.
// The caller vouches that nothing in them went unreported since; any part
// that is no longer registered is found by Scan and reported New.
func (t *Tracker) Adopt(tracked []VMA) { t.tracked = normalize(tracked) }

// start registers v in WP mode and write-protects it.
func (t *Tracker) start(v VMA) error {
	if _, err := t.u.Register(v.Start, v.End-v.Start, ModeWP); err != nil {
		return err
	}
	for deadline := time.Now().Add(wpRetry); ; time.Sleep(100 * time.Microsecond) {
		err := t.u.WriteProtect(v.Start, v.End-v.Start, true, false)
		// EAGAIN: an event of the mm (fork, discard) not read yet; the
		// uffd's reader (another process) reads it soon.
		if err == nil || !errors.Is(err, unix.EAGAIN) || time.Now().After(deadline) {
			return err
		}
	}
}

// wpRetry bounds the retries of a write-protect that met an unread event.
const wpRetry = 2 * time.Second

const scanReturn = PageIsWritten | PageIsPresent | PageIsSwapped | PageIsPFNZero

// scanRun reports and re-protects the written pages of [run.Start,
// run.End), then looks for VMAs in it that are no longer registered (the mm
// changed under us: mremap, munmap + mmap at the same place) and tracks them
// again as New.
//
// PM_SCAN_CHECK_WPASYNC is deliberately not used here: it fails the whole
// call with EPERM at the first unregistered VMA after the pages before it have
// already been re-protected, and the kernel does not say which regions it
// reported, so writes could be lost. Without it the kernel skips such VMAs;
// the second, cheap pass (whole VMAs are accepted or skipped on their
// category, no page-table walk for registered ones) finds them.
func (t *Tracker) scanRun(run VMA, res *ScanResult, cur []VMA, added, lost *[]VMA) error {
	var err error
	ret := uint64(PageIsWritten)
	if t.DetailedCategories {
		ret = scanReturn
	}
	res.Written, err = t.pm.Scan(ScanArgs{Start: run.Start, End: run.End, Flags: ScanWPMatching,
		CategoryMask: PageIsWritten, ReturnMask: ret}, res.Written)
	if err != nil {
		return fmt.Errorf("tracker: %w", err)
	}
	t.lost, err = t.pm.Scan(ScanArgs{Start: run.Start, End: run.End,
		CategoryInverted: PageIsWPAllowed, CategoryMask: PageIsWPAllowed, ReturnMask: PageIsWPAllowed}, t.lost[:0])
	if err != nil {
		return fmt.Errorf("tracker: %w", err)
	}
	var unreg []VMA
	for _, r := range t.lost {
		unreg = append(unreg, VMA{r.Start, r.End})
	}
	// Only the caller's VMAs: a run may span mappings it does not want
	// tracked (the vDSO, shared memory…) between two that it does.
	for _, v := range Intersect(normalize(unreg), cur) {
		*lost = append(*lost, v)
		if err := t.start(v); err != nil {
			if errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.ENOENT) || untrackable(err) || errors.Is(err, unix.ESRCH) {
				// Gone, changed again since, or not trackable (the
				// uffd's mm is gone after an exec): untracked, so the
				// caller must take it whole.
				res.Untrackable = append(res.Untrackable, v)
				res.UntrackableErr = append(res.UntrackableErr, err)
				continue
			}
			return fmt.Errorf("tracker: re-register %v: %w", v, err)
		}
		*added = append(*added, v)
	}
	return nil
}

// populated appends the pages of v holding data.
func (t *Tracker) populated(v VMA, out []Region) ([]Region, error) {
	a := ScanArgs{Start: v.Start, End: v.End, CategoryAnyof: PageIsPresent | PageIsSwapped,
		CategoryInverted: PageIsPFNZero, CategoryMask: PageIsPFNZero, ReturnMask: scanReturn}
	if !swapEnabled() {
		a.CategoryAnyof = PageIsPresent
	}
	return t.pm.Scan(a, out)
}

// Stop unregisters every tracked range, which also drops the write
// protection, so the process runs at full speed again. The Tracker can be
// reused: the next Scan starts afresh.
func (t *Tracker) Stop() error {
	var errs []error
	for _, v := range t.tracked {
		if err := t.u.Unregister(v.Start, v.End-v.Start); err != nil && !errors.Is(err, unix.ENOMEM) && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, err)
		}
	}
	t.tracked = nil
	return errors.Join(errs...)
}

// normalize page-aligns, sorts and merges overlapping ranges. Adjacent
// ranges stay apart: each VMA is registered on its own, so that one that
// cannot be (e.g. [vdso]) does not spoil its neighbours.
func normalize(vs []VMA) []VMA {
	out := make([]VMA, 0, len(vs))
	for _, v := range vs {
		v.Start &^= PageSize - 1
		v.End = (v.End + PageSize - 1) &^ (PageSize - 1)
		if v.End > v.Start {
			out = append(out, v)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Start < out[j].Start })
	m := out[:0]
	for _, v := range out {
		if k := len(m) - 1; k >= 0 && v.Start < m[k].End {
			if v.End > m[k].End {
				m[k].End = v.End
			}
			continue
		}
		m = append(m, v)
	}
	return m
}

// Subtract returns the parts of a (normalized: sorted, not overlapping)
// not covered by b (normalized): the one range difference of godwit (the
// dumper's rounds use it too).
func Subtract(a, b []VMA) []VMA {
	var out []VMA
	j := 0
	for _, v := range a {
		s := v.Start
		for j < len(b) && b[j].End <= s {
			j++
		}
		for k := j; k < len(b) && b[k].Start < v.End; k++ {
			if b[k].Start > s {
				out = append(out, VMA{s, b[k].Start})
			}
			if b[k].End > s {
				s = b[k].End
			}
		}
		if s < v.End {
			out = append(out, VMA{s, v.End})
		}
	}
	return out
}

// Intersect returns the parts of a covered by b (both normalized).
func Intersect(a, b []VMA) []VMA {
	var out []VMA
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		s, e := max(a[i].Start, b[j].Start), min(a[i].End, b[j].End)
		if s < e {
			out = append(out, VMA{s, e})
		}
		if a[i].End < b[j].End {
			i++
		} else {
			j++
		}
	}
	return out
}

// runs groups the tracked ranges into spans that contain no untracked part of
// a current VMA, so that one PAGEMAP_SCAN per span is allowed under
// PM_SCAN_CHECK_WPASYNC.
func runs(tracked, cur []VMA) []VMA {
	untracked := Subtract(cur, tracked)
	var out []VMA
	u := 0
	for _, v := range tracked {
		if k := len(out) - 1; k >= 0 {
			for u < len(untracked) && untracked[u].End <= out[k].End {
				u++
			}
			if u >= len(untracked) || untracked[u].Start >= v.Start {
				out[k].End = v.End
				continue
			}
		}
		out = append(out, v)
	}
	return out
}
