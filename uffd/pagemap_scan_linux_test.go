package uffd

import (
	"os"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestScanMaxPagesAcrossCalls: MaxPages bounds the pages of the whole
// scan, also when the output fills up and a region continues in the next
// call (where Scan merges it).
func TestScanMaxPagesAcrossCalls(t *testing.T) {
	scanMaxPages(t, unix.MADV_NOHUGEPAGE)
}

func scanMaxPages(t *testing.T, advice int) {
	const pages = 12 << 10 // 48 MiB
	mem, err := unix.Mmap(-1, 0, pages*int(PageSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	unix.Madvise(mem, advice)
	// Runs of 5 present pages, one absent: far more regions than one
	// call's output holds.
	for p := 0; p < pages; p++ {
		if p%6 != 5 {
			mem[p*int(PageSize)] = 1
		}
	}
	pm, err := OpenPagemap(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	start := uint64(uintptr(unsafe.Pointer(&mem[0])))
	all := ScanArgs{Start: start, End: start + pages*PageSize, CategoryMask: PageIsPresent, CategoryAnyof: PageIsPresent, ReturnMask: PageIsPresent}
	rs, err := pm.Scan(all, nil)
	if err != nil {
		t.Fatal(err)
	}
	total := count(rs)
	if want := uint64(pages - pages/6); total != want {
		t.Fatalf("%d present pages, want %d", total, want)
	}
	t.Logf("%d regions", len(rs))
	for _, max := range []uint64{1, 4, 5, 1023*5 + 2, 1024 * 5, 1024*5 + 3, 2048*5 + 1, 3000 * 5, total - 1, total, total + 7} {
		a := all
		a.MaxPages = max
		rs, err := pm.Scan(a, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := count(rs); got != min(max, total) {
			t.Errorf("MaxPages %d: %d pages in %d regions", max, got, len(rs))
		}
	}
}

func count(rs []Region) uint64 {
	var n uint64
	for _, r := range rs {
		n += (r.End - r.Start) / PageSize
	}
	return n
}
