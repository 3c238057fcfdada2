package dumper

import (
	"os"
	"slices"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/images"
)

// lazyScanSink keeps the test's reads from being optimized away.
var lazyScanSink byte

// listed records what a lazy listing reports.
type listed struct{ pages [][2]uint64 }

func (l *listed) lazyVMA(start, end uint64) bool { return true }
func (l *listed) lazyPages(vaddr, nr uint64) error {
	if k := len(l.pages) - 1; k >= 0 && l.pages[k][0]+l.pages[k][1]*pageSize == vaddr {
		l.pages[k][1] += nr
		return nil
	}
	l.pages = append(l.pages, [2]uint64{vaddr, nr})
	return nil
}

// The PAGEMAP_SCAN listing of a lazy VMA takes exactly the pages the
// per-page pagemap takes (written ones; not the zero page, not untouched
// ones), and counts alike.
func TestLazyScanMatchesPagemap(t *testing.T) {
	const n = 512
	mem, err := unix.Mmap(-1, 0, n*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	// No huge page: each page's state is its own.
	if err := unix.Madvise(mem, unix.MADV_NOHUGEPAGE); err != nil {
		t.Fatal(err)
	}
	var zeros uint64
	for i := 0; i < n; i++ {
		switch {
		case i%7 == 0 || (i >= 100 && i < 180):
			mem[i*pageSize] = byte(i) | 1 // written
		case i%5 == 0:
			lazyScanSink += mem[i*pageSize] // read: the zero page
			zeros++
		}
	}
	start := uint64(uintptr(unsafe.Pointer(unsafe.SliceData(mem))))
	v := &VMA{Start: start, End: start + n*pageSize, Status: images.VmaAreaRegular | images.VmaAnonPrivate, Prot: unix.PROT_READ | unix.PROT_WRITE}
	d, err := NewMemoryDumper(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var byScan, byPage listed
	if err := d.lazyScan(&byScan, v); err != nil {
		t.Fatal(err)
	}
	if d.pmScan == nil {
		t.Fatal("PAGEMAP_SCAN not used")
	}
	scanStats := d.stats
	d.stats = MemStats{}
	if err := d.lazyPagemap(&byPage, v.Start, v.End); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(byScan.pages, byPage.pages) {
		t.Errorf("PAGEMAP_SCAN listed %v, the pagemap %v", byScan.pages, byPage.pages)
	}
	if scanStats != d.stats {
		t.Errorf("stats: PAGEMAP_SCAN %+v, pagemap %+v", scanStats, d.stats)
	}
	var written uint64
	for _, r := range byScan.pages {
		written += r[1]
	}
	// 74 multiples of 7 below 512, 80 in [100, 180), 11 of them both.
	if want := uint64(74 + 80 - 11); written != want {
		t.Errorf("%d pages listed, want %d", written, want)
	}
	if scanStats.Zero != zeros || scanStats.Scanned != n || scanStats.Untouched != n-written-zeros {
		t.Errorf("stats %+v: want %d scanned, %d zero, %d untouched", scanStats, n, zeros, n-written-zeros)
	}
}
