package uffd

import (
	"fmt"
	"slices"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Pagemap is an open /proc/PID/pagemap, the handle PAGEMAP_SCAN works on.
type Pagemap struct {
	fd  int
	pid int
}

// OpenPagemap opens /proc/PID/pagemap (pid 0: this process).
func OpenPagemap(pid int) (*Pagemap, error) {
	path := "/proc/self/pagemap"
	if pid != 0 {
		path = "/proc/" + strconv.Itoa(pid) + "/pagemap"
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return &Pagemap{fd: fd, pid: pid}, nil
}

// Close closes the pagemap file.
func (p *Pagemap) Close() error { return unix.Close(p.fd) }

// ScanArgs are the inputs of one PAGEMAP_SCAN call (see fs.h, struct pm_scan_arg).
type ScanArgs struct {
	Start, End       uint64
	Flags            uint64 // ScanWPMatching, ScanCheckWPAsync
	MaxPages         uint64 // 0: no limit
	CategoryInverted uint64
	CategoryMask     uint64
	CategoryAnyof    uint64
	ReturnMask       uint64
}

// ScanOnce issues one PAGEMAP_SCAN filling vec. It returns the regions
// filled and where the walk stopped (== End when complete; earlier when vec
// or MaxPages ran out).
func (p *Pagemap) ScanOnce(a *ScanArgs, vec []Region) (int, uint64, error) {
	arg := pmScanArg{
		Size:              uint64(unsafe.Sizeof(pmScanArg{})),
		Flags:             a.Flags,
		Start:             a.Start,
		End:               a.End,
		VecLen:            uint64(len(vec)),
		MaxPages:          a.MaxPages,
		CategoryInverted:  a.CategoryInverted,
		CategoryMask:      a.CategoryMask,
		CategoryAnyofMask: a.CategoryAnyof,
		ReturnMask:        a.ReturnMask,
	}
	if len(vec) > 0 {
		arg.Vec = uint64(uintptr(unsafe.Pointer(&vec[0])))
	}
	for {
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(p.fd), _PAGEMAP_SCAN, uintptr(unsafe.Pointer(&arg)))
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, arg.WalkEnd, fmt.Errorf("PAGEMAP_SCAN pid %d %#x-%#x flags %#x: %w", p.pid, a.Start, a.End, a.Flags, e)
		}
		return int(r), arg.WalkEnd, nil
	}
}

// Scan runs PAGEMAP_SCAN over the whole [Start, End), continuing where the
// kernel stopped whenever the output fills up, and appends the regions to out
// (merging a region split across two calls). The kernel writes straight into
// out's spare capacity: pass the previous result's out[:0] to scan without
// allocating.
func (p *Pagemap) Scan(a ScanArgs, out []Region) ([]Region, error) {
	const minSpare = 1024
	for a.Start < a.End {
		if cap(out)-len(out) < minSpare {
			out = slices.Grow(out, max(minSpare, len(out)))
		}
		k := len(out)
		dst := out[k:cap(out)]
		n, walkEnd, err := p.ScanOnce(&a, dst)
		if err != nil {
			return out, err
		}
		out = out[:k+n]
		// The kernel may report regions past the walk_end it returns
		// (seen on 6.18 with transparent huge pages): what it reported
		// was walked, so go on after it, never over it again.
		next := walkEnd
		if n > 0 {
			next = max(next, dst[n-1].End)
		}
		// Counted before the merge below, which shifts dst.
		var got uint64
		for _, r := range dst[:n] {
			got += (r.End - r.Start) / PageSize
		}
		if k > 0 && n > 0 && out[k-1].End == out[k].Start && out[k-1].Categories == out[k].Categories {
			out[k-1].End = out[k].End
			out = append(out[:k], out[k+1:]...)
		}
		if next <= a.Start {
			// No progress: would loop forever.
			return out, fmt.Errorf("PAGEMAP_SCAN pid %d %#x-%#x: no progress at %#x", p.pid, a.Start, a.End, walkEnd)
		}
		if a.MaxPages != 0 {
			// MaxPages bounds the whole scan, not each call.
			if got >= a.MaxPages {
				return out, nil
			}
			a.MaxPages -= got
		}
		a.Start = next
	}
	return out, nil
}
