package procfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// PagemapEntry is one 64-bit entry of /proc/PID/pagemap
// (Documentation/admin-guide/mm/pagemap.rst).
type PagemapEntry uint64

// Pagemap bits, from Documentation/admin-guide/mm/pagemap.rst and
// fs/proc/task_mmu.c (PM_*). Not exported by include/uapi.
const (
	PMPFNMask      = 1<<55 - 1 // bits 0-54: PFN if present (0 unless CAP_SYS_ADMIN)
	PMSoftDirty    = 1 << 55
	PMExclusive    = 1 << 56 // page exclusively mapped (PM_MMAP_EXCLUSIVE)
	PMUffdWP       = 1 << 57 // pte is uffd-wp write-protected
	PMGuard        = 1 << 58 // guard region (MADV_GUARD_INSTALL)
	PMFile         = 1 << 61 // file page or shared anonymous (PM_FILE)
	PMSwap         = 1 << 62
	PMPresent      = 1 << 63
	pmSwapTypeBits = 5
)

func (e PagemapEntry) Present() bool { return e&PMPresent != 0 }

// Swapped: a page in swap. A guard region's PTE marker is reported with
// PM_SWAP too (and a meaningless swap entry): it is a guard, not a page.
func (e PagemapEntry) Swapped() bool { return e&PMSwap != 0 && e&PMGuard == 0 }

// Guard: the page is in a MADV_GUARD_INSTALL guard region (6.15+).
func (e PagemapEntry) Guard() bool { return e&PMGuard != 0 }

func (e PagemapEntry) File() bool      { return e&PMFile != 0 }
func (e PagemapEntry) Exclusive() bool { return e&PMExclusive != 0 }
func (e PagemapEntry) SoftDirty() bool { return e&PMSoftDirty != 0 }
func (e PagemapEntry) UffdWP() bool    { return e&PMUffdWP != 0 }

// PFN is the page frame number of a present page; 0 when the reader lacks
// CAP_SYS_ADMIN or the page is not present.
func (e PagemapEntry) PFN() uint64 {
	if !e.Present() {
		return 0
	}
	return uint64(e) & PMPFNMask
}

// SwapType and SwapOffset decode a swapped entry.
func (e PagemapEntry) SwapType() uint64 { return uint64(e) & (1<<pmSwapTypeBits - 1) }
func (e PagemapEntry) SwapOffset() uint64 {
	return (uint64(e) & PMPFNMask) >> pmSwapTypeBits
}

// ParsePagemap decodes raw pagemap bytes (8 bytes an entry, native endian).
func ParsePagemap(b []byte) ([]PagemapEntry, error) {
	if len(b)%8 != 0 {
		return nil, fmt.Errorf("procfs: pagemap: %d bytes is not a multiple of 8", len(b))
	}
	out := make([]PagemapEntry, len(b)/8)
	for i := range out {
		out[i] = PagemapEntry(binary.NativeEndian.Uint64(b[i*8:]))
	}
	return out, nil
}

// Pagemap is an open /proc/PID/pagemap.
type Pagemap struct {
	f   *os.File
	buf []byte
}

// OpenPagemap opens /proc/PID/pagemap.
func OpenPagemap(pid int) (*Pagemap, error) {
	f, err := os.Open(Path(pid, "pagemap"))
	if err != nil {
		return nil, fmt.Errorf("procfs: %w", err)
	}
	return &Pagemap{f: f}, nil
}

// Close closes the file.
func (p *Pagemap) Close() error { return p.f.Close() }

// Read fills out with the entries of the pages starting at virtual address
// start (page aligned): one entry per page, len(out) pages.
func (p *Pagemap) Read(start uint64, out []PagemapEntry) error {
	ps := uint64(os.Getpagesize())
	if start%ps != 0 {
		return fmt.Errorf("procfs: pagemap: address %#x not page aligned", start)
	}
	need := len(out) * 8
	if cap(p.buf) < need {
		p.buf = make([]byte, need)
	}
	buf := p.buf[:need]
	off := int64(start / ps * 8)
	for done := 0; done < need; {
		n, err := p.f.ReadAt(buf[done:], off+int64(done))
		done += n
		if err != nil && done < need {
			return fmt.Errorf("procfs: pagemap at %#x: %w", start, err)
		}
	}
	for i := range out {
		out[i] = PagemapEntry(binary.NativeEndian.Uint64(buf[i*8:]))
	}
	return nil
}

var zeroPFN struct {
	once sync.Once
	pfn  uint64
	err  error
}

// ZeroPagePFN returns the PFN of the kernel's shared zero page, which backs
// anonymous pages that were read but never written. It is found by reading
// one byte of a fresh private anonymous page of our own and asking pagemap
// for its PFN, which needs CAP_SYS_ADMIN (otherwise PFNs read as 0 and an
// error is returned). A one-page mapping cannot get the huge zero page.
func ZeroPagePFN() (uint64, error) {
	zeroPFN.once.Do(func() { zeroPFN.pfn, zeroPFN.err = findZeroPFN() })
	return zeroPFN.pfn, zeroPFN.err
}

func findZeroPFN() (uint64, error) {
	ps := os.Getpagesize()
	mem, err := unix.Mmap(-1, 0, ps, unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return 0, fmt.Errorf("procfs: zero page probe: mmap: %w", err)
	}
	defer unix.Munmap(mem)
	if mem[0] != 0 { // the read fault maps the zero page
		return 0, errors.New("procfs: zero page probe: fresh page not zero")
	}
	pm, err := OpenPagemap(os.Getpid())
	if err != nil {
		return 0, err
	}
	defer pm.Close()
	var e [1]PagemapEntry
	addr := uint64(uintptrOf(mem))
	if err := pm.Read(addr, e[:]); err != nil {
		return 0, err
	}
	if !e[0].Present() {
		return 0, errors.New("procfs: zero page probe: page not present after read")
	}
	if e[0].PFN() == 0 {
		return 0, errors.New("procfs: zero page probe: PFNs hidden (needs CAP_SYS_ADMIN)")
	}
	return e[0].PFN(), nil
}

// HugePMDPages is the number of 4 KiB pages in a PMD-sized huge page.
const HugePMDPages = 512

var hugeZeroPFN struct {
	once sync.Once
	pfn  uint64
	err  error
}

// HugeZeroPagePFN returns the first PFN of the kernel's huge zero page,
// which backs read-only-touched THP-eligible anonymous ranges (with
// transparent_hugepage/use_zero_page on). Pagemap reports such pages as
// PFNs hugeZero … hugeZero+511. The probe maps and reads an aligned 2 MiB
// range of our own with MADV_HUGEPAGE; our mm then holds the huge zero page
// for as long as this process lives, so the PFN stays valid. An error means
// the kernel does not use one (THP off, use_zero_page 0) or PFNs are hidden.
func HugeZeroPagePFN() (uint64, error) {
	hugeZeroPFN.once.Do(func() { hugeZeroPFN.pfn, hugeZeroPFN.err = findHugeZeroPFN() })
	return hugeZeroPFN.pfn, hugeZeroPFN.err
}

func findHugeZeroPFN() (uint64, error) {
	const huge = 2 << 20
	zero, err := ZeroPagePFN()
	if err != nil {
		return 0, err
	}
	mem, err := unix.Mmap(-1, 0, 2*huge, unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return 0, fmt.Errorf("procfs: huge zero page probe: mmap: %w", err)
	}
	defer unix.Munmap(mem)
	base := uintptrOf(mem)
	off := int((huge - base%huge) % huge)
	win := mem[off : off+huge]
	if err := unix.Madvise(win, unix.MADV_HUGEPAGE); err != nil {
		return 0, fmt.Errorf("procfs: huge zero page probe: madvise: %w", err)
	}
	if win[0] != 0 {
		return 0, errors.New("procfs: huge zero page probe: fresh page not zero")
	}
	pm, err := OpenPagemap(os.Getpid())
	if err != nil {
		return 0, err
	}
	defer pm.Close()
	var e [1]PagemapEntry
	if err := pm.Read(uint64(uintptrOf(win)), e[:]); err != nil {
		return 0, err
	}
	pfn := e[0].PFN()
	if pfn == 0 {
		return 0, errors.New("procfs: huge zero page probe: PFN hidden")
	}
	if pfn == zero {
		return 0, errors.New("procfs: the kernel maps no huge zero page (THP off or use_zero_page 0)")
	}
	return pfn, nil
}

// IsZeroPFN tells whether pfn is the zero page or part of the huge zero
// page: such a page was only ever read and holds zeros, so it is not dumped.
// The probes must have succeeded (call ZeroPagePFN first); a failed huge
// probe just means no PFN is the huge zero page.
func IsZeroPFN(pfn uint64) bool {
	if z, err := ZeroPagePFN(); err == nil && pfn == z {
		return true
	}
	if h, err := HugeZeroPagePFN(); err == nil && pfn >= h && pfn < h+HugePMDPages {
		return true
	}
	return false
}
