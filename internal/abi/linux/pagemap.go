package linux

// From Documentation/admin-guide/mm/pagemap.rst (fs/proc/task_mmu.c's
// PM_SOFT_DIRTY): bits of a /proc/PID/pagemap entry.

// PagemapSoftDirty is bit 55, set when the page was written since the
// soft-dirty bits were last cleared.
const PagemapSoftDirty = 1 << 55
