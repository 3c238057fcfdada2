package restorer

// VMA status bits of CRIU's vma_entry.status, from criu/include/image.h
// (crit prints them as "mmap.status"). They belong to the image format;
// internal/images is the better home once the dumper needs them too.
const (
	vmaAreaRegular  = 1 << 0
	vmaAreaStack    = 1 << 1
	vmaAreaVsyscall = 1 << 2
	vmaAreaVdso     = 1 << 3
	vmaExtFile      = 1 << 4
	vmaAreaHeap     = 1 << 5
	vmaFilePrivate  = 1 << 6
	vmaFileShared   = 1 << 7
	vmaAnonShared   = 1 << 8
	vmaAnonPrivate  = 1 << 9
	vmaAreaSysvipc  = 1 << 10
	vmaAreaSocket   = 1 << 11
	vmaAreaVvar     = 1 << 12
	vmaAreaAioring  = 1 << 13
	vmaAreaMemfd    = 1 << 14
	vmaAreaShstk    = 1 << 15
	vmaUnsupp       = 1 << 31
)

// Task states of task_core_entry.task_state (criu/include/pstree.h,
// compel's TASK_*).
const (
	taskAlive   = 1
	taskDead    = 2
	taskStopped = 3
	taskZombie  = 6
)

// fdFlagCloexec is FdinfoEntry.flags' close-on-exec bit (FD_CLOEXEC).
const fdFlagCloexec = 1
