package uffd

// PAGEMAP_SCAN ABI missing from golang.org/x/sys/unix v0.50.
// From include/uapi/linux/fs.h (Linux 6.18).

const _PAGEMAP_SCAN = 0xc0606610 // _IOWR('f', 16, struct pm_scan_arg) (96 bytes)

// PAGE_IS_* categories (pm_scan_arg masks, page_region.categories).
const (
	PageIsWPAllowed = 1 << 0
	PageIsWritten   = 1 << 1
	PageIsFile      = 1 << 2
	PageIsPresent   = 1 << 3
	PageIsSwapped   = 1 << 4
	PageIsPFNZero   = 1 << 5
	PageIsHuge      = 1 << 6
	PageIsSoftDirty = 1 << 7
	PageIsGuard     = 1 << 8
)

// PM_SCAN_* flags.
const (
	ScanWPMatching   = 1 << 0 // write-protect the matched pages
	ScanCheckWPAsync = 1 << 1 // fail (EPERM) on a VMA not registered in WP_ASYNC mode
)

// Region is struct page_region: [Start, End) with PAGE_IS_* Categories
// (masked by the scan's return mask).
type Region struct {
	Start      uint64
	End        uint64
	Categories uint64
}

// pmScanArg is struct pm_scan_arg.
type pmScanArg struct {
	Size              uint64
	Flags             uint64
	Start             uint64
	End               uint64
	WalkEnd           uint64
	Vec               uint64
	VecLen            uint64
	MaxPages          uint64
	CategoryInverted  uint64
	CategoryMask      uint64
	CategoryAnyofMask uint64
	ReturnMask        uint64
}
