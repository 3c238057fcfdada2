package drivers

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/images"
	"godwit/internal/inject"
	"godwit/internal/model"
	"godwit/internal/procfs"
)

// guardDriver dumps and restores the guard regions (MADV_GUARD_INSTALL)
// of every VMA: a guard page is a PTE marker that /proc/PID/pagemap
// reports as PM_GUARD_REGION. They are kept in the godwit image. Installing a guard zaps the range, so they go in
// once the pages are filled and the VMAs have their protections.
type guardDriver struct{}

func (guardDriver) Name() string    { return "guards" }
func (guardDriver) After() []string { return []string{"memory"} }

// Collect finds the guard regions of the task's VMAs.
func (guardDriver) Collect(d *Dump) error {
	return collectGuards(d.Pid, d.Task.MM.VMAs)
}

// Restore installs each guard region again.
func (guardDriver) Restore(r *Restore, s *inject.Session) error {
	for i := range r.Task.MM.VMAs {
		v := &r.Task.MM.VMAs[i]
		for _, g := range v.Guards {
			if _, err := s.Call(fmt.Sprintf("madvise(MADV_GUARD_INSTALL) %#x-%#x", g.Start, g.End),
				unix.SYS_MADVISE, g.Start, g.End-g.Start, unix.MADV_GUARD_INSTALL); err != nil {
				return err
			}
		}
	}
	return nil
}

const pageSize = 4096

// vmaSpecial are the kernel's own mappings (vDSO, vvar), never guarded.
const vmaSpecial = images.VmaAreaVdso | images.VmaAreaVvar | images.VmaAreaVsyscall

// guardSupport tells whether this kernel has guard regions at all, and
// whether it marks a VMA that may hold some with VmFlags "gu": then only
// those are scanned; otherwise every VMA is.
var guardSupport struct {
	once              sync.Once
	supported, marked bool
}

func probeGuards() (supported, marked bool) {
	g := &guardSupport
	g.once.Do(func() {
		ps := os.Getpagesize()
		b, err := unix.Mmap(-1, 0, 2*ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return
		}
		defer unix.Munmap(b)
		if unix.Madvise(b[:ps], unix.MADV_GUARD_INSTALL) != nil {
			return // EINVAL before 6.13: no guard region can exist
		}
		g.supported = true
		g.marked = smapsHasFlag(uint64(uintptr(unsafe.Pointer(&b[0]))), "gu")
	})
	return g.supported, g.marked
}

// smapsHasFlag reports whether the VMA of our own at start has VmFlag f.
func smapsHasFlag(start uint64, f string) bool {
	fh, err := os.Open("/proc/self/smaps")
	if err != nil {
		return false
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	in := false
	prefix := fmt.Sprintf("%x-", start)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, prefix) {
			in = true
			continue
		}
		if in && strings.HasPrefix(l, "VmFlags:") {
			for _, x := range strings.Fields(l[len("VmFlags:"):]) {
				if x == f {
					return true
				}
			}
			return false
		}
	}
	return false
}

// scanGuards lists the guard regions of [start, end) of pid.
func scanGuards(pm *procfs.Pagemap, start, end uint64) ([]model.Range, error) {
	const batch = 4096
	ents := make([]procfs.PagemapEntry, batch)
	var out []model.Range
	for a := start; a < end; {
		n := min((end-a)/pageSize, batch)
		if err := pm.Read(a, ents[:n]); err != nil {
			return nil, err
		}
		for i := range n {
			if !ents[i].Guard() {
				continue
			}
			p := a + i*pageSize
			if k := len(out); k > 0 && out[k-1].End == p {
				out[k-1].End = p + pageSize
			} else {
				out = append(out, model.Range{Start: p, End: p + pageSize})
			}
		}
		a += n * pageSize
	}
	return out, nil
}

// collectGuards fills the Guards of vmas.
func collectGuards(pid int, vmas []model.VMA) error {
	supported, marked := probeGuards()
	if !supported {
		return nil
	}
	var pm *procfs.Pagemap
	defer func() {
		if pm != nil {
			pm.Close()
		}
	}()
	for i := range vmas {
		v := &vmas[i]
		if marked && !v.MayGuard || v.Status&vmaSpecial != 0 {
			continue
		}
		if pm == nil {
			var err error
			if pm, err = procfs.OpenPagemap(pid); err != nil {
				return err
			}
		}
		g, err := scanGuards(pm, v.Start, v.End)
		if err != nil {
			if errors.Is(err, unix.ESRCH) {
				return err
			}
			return fmt.Errorf("vma %#x-%#x: guard regions: %w", v.Start, v.End, err)
		}
		v.Guards = g
	}
	return nil
}
