package dumper

// VMA status bits of CRIU's images (criu/include/image.h; crit's
// mmap_status_map names them). They are part of the image format.
const (
	vmaAreaRegular  = 1 << 0
	vmaAreaStack    = 1 << 1
	vmaAreaVsyscall = 1 << 2
	vmaAreaVdso     = 1 << 3
	vmaAreaHeap     = 1 << 5
	vmaFilePrivate  = 1 << 6
	vmaFileShared   = 1 << 7
	vmaAnonShared   = 1 << 8
	vmaAnonPrivate  = 1 << 9
	vmaAreaSysvipc  = 1 << 10
	vmaAreaSocket   = 1 << 11
	vmaAreaVvar     = 1 << 12
)
