package images

// Numeric values that CRIU's images carry in plain integer fields, named
// after criu/include/image.h (vma_entry.status; crit's mmap_status_map
// prints them), criu/include/pstree.h / compel's TASK_* (task_core_entry.
// task_state) and fdinfo_entry.flags. They are part of the image format,
// so the dumper writes and the restorer reads the same definitions.

// VMA status bits (vma_entry.status).
const (
	VmaAreaRegular  = 1 << 0
	VmaAreaStack    = 1 << 1
	VmaAreaVsyscall = 1 << 2
	VmaAreaVdso     = 1 << 3
	VmaExtFile      = 1 << 4
	VmaAreaHeap     = 1 << 5
	VmaFilePrivate  = 1 << 6
	VmaFileShared   = 1 << 7
	VmaAnonShared   = 1 << 8
	VmaAnonPrivate  = 1 << 9
	VmaAreaSysvipc  = 1 << 10
	VmaAreaSocket   = 1 << 11
	VmaAreaVvar     = 1 << 12
	VmaAreaAioring  = 1 << 13
	VmaAreaMemfd    = 1 << 14
	VmaAreaShstk    = 1 << 15
	VmaUnsupp       = 1 << 31
)

// Task states (task_core_entry.task_state).
const (
	TaskAlive   = 1
	TaskDead    = 2
	TaskStopped = 3
	TaskZombie  = 6
)

// FdFlagCloexec is fdinfo_entry.flags' close-on-exec bit (FD_CLOEXEC).
const FdFlagCloexec = 1
