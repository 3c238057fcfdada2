package uffd

// Userfaultfd ABI missing from golang.org/x/sys/unix v0.50 (it only has
// SYS_USERFAULTFD). From include/uapi/linux/userfaultfd.h (Linux 6.18).

// ioctl on /dev/userfaultfd that returns a new userfaultfd.
const _USERFAULTFD_IOC_NEW = 0xaa00 // _IO(0xAA, 0x00)

const (
	_UFFD_API = 0xaa

	// Flags of the userfaultfd(2) syscall (besides O_CLOEXEC, O_NONBLOCK).
	UserModeOnly = 1 // UFFD_USER_MODE_ONLY
)

// Ioctl numbers: _IOWR/_IOR(0xAA, nr, struct).
const (
	_UFFDIO_REGISTER     = 0xc020aa00 // _IOWR, struct uffdio_register (32)
	_UFFDIO_UNREGISTER   = 0x8010aa01 // _IOR, struct uffdio_range (16)
	_UFFDIO_WAKE         = 0x8010aa02 // _IOR, struct uffdio_range (16)
	_UFFDIO_COPY         = 0xc028aa03 // _IOWR, struct uffdio_copy (40)
	_UFFDIO_ZEROPAGE     = 0xc020aa04 // _IOWR, struct uffdio_zeropage (32)
	_UFFDIO_MOVE         = 0xc028aa05 // _IOWR, struct uffdio_move (40)
	_UFFDIO_WRITEPROTECT = 0xc018aa06 // _IOWR, struct uffdio_writeprotect (24)
	_UFFDIO_CONTINUE     = 0xc020aa07 // _IOWR, struct uffdio_continue (32)
	_UFFDIO_POISON       = 0xc020aa08 // _IOWR, struct uffdio_poison (32)
	_UFFDIO_API          = 0xc018aa3f // _IOWR, struct uffdio_api (24)
)

// Bit numbers of uffdio_register.ioctls / uffdio_api.ioctls.
const (
	IoctlRegister     = 0x00
	IoctlUnregister   = 0x01
	IoctlWake         = 0x02
	IoctlCopy         = 0x03
	IoctlZeropage     = 0x04
	IoctlMove         = 0x05
	IoctlWriteProtect = 0x06
	IoctlContinue     = 0x07
	IoctlPoison       = 0x08
	IoctlAPI          = 0x3f
)

// Events in uffd_msg.event.
const (
	EventPagefault = 0x12
	EventFork      = 0x13
	EventRemap     = 0x14
	EventRemove    = 0x15
	EventUnmap     = 0x16
)

// uffd_msg.arg.pagefault.flags.
const (
	PagefaultFlagWrite = 1 << 0
	PagefaultFlagWP    = 1 << 1
	PagefaultFlagMinor = 1 << 2
)

// UFFD_FEATURE_* (uffdio_api.features).
const (
	FeaturePagefaultFlagWP  = 1 << 0
	FeatureEventFork        = 1 << 1
	FeatureEventRemap       = 1 << 2
	FeatureEventRemove      = 1 << 3
	FeatureMissingHugetlbfs = 1 << 4
	FeatureMissingShmem     = 1 << 5
	FeatureEventUnmap       = 1 << 6
	FeatureSigbus           = 1 << 7
	FeatureThreadID         = 1 << 8
	FeatureMinorHugetlbfs   = 1 << 9
	FeatureMinorShmem       = 1 << 10
	FeatureExactAddress     = 1 << 11
	FeatureWPHugetlbfsShmem = 1 << 12
	FeatureWPUnpopulated    = 1 << 13
	FeaturePoison           = 1 << 14
	FeatureWPAsync          = 1 << 15
	FeatureMove             = 1 << 16
	FeatureNonCoop          = FeatureEventFork | FeatureEventRemap | FeatureEventRemove | FeatureEventUnmap
)

// UFFDIO_REGISTER_MODE_*.
const (
	ModeMissing = 1 << 0
	ModeWP      = 1 << 1
	ModeMinor   = 1 << 2
)

// Per-ioctl mode bits.
const (
	CopyModeDontWake         = 1 << 0 // UFFDIO_COPY_MODE_DONTWAKE
	CopyModeWP               = 1 << 1 // UFFDIO_COPY_MODE_WP
	ZeropageModeDontWake     = 1 << 0 // UFFDIO_ZEROPAGE_MODE_DONTWAKE
	WriteProtectModeWP       = 1 << 0 // UFFDIO_WRITEPROTECT_MODE_WP
	WriteProtectModeDontWake = 1 << 1 // UFFDIO_WRITEPROTECT_MODE_DONTWAKE
	ContinueModeDontWake     = 1 << 0 // UFFDIO_CONTINUE_MODE_DONTWAKE
	ContinueModeWP           = 1 << 1 // UFFDIO_CONTINUE_MODE_WP
	PoisonModeDontWake       = 1 << 0 // UFFDIO_POISON_MODE_DONTWAKE
	MoveModeDontWake         = 1 << 0 // UFFDIO_MOVE_MODE_DONTWAKE
	MoveModeAllowSrcHoles    = 1 << 1 // UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES
)

type uffdioAPI struct {
	API      uint64
	Features uint64
	Ioctls   uint64
}

type uffdioRange struct {
	Start uint64
	Len   uint64
}

type uffdioRegister struct {
	Range  uffdioRange
	Mode   uint64
	Ioctls uint64
}

type uffdioCopy struct {
	Dst  uint64
	Src  uint64
	Len  uint64
	Mode uint64
	Copy int64
}

type uffdioZeropage struct {
	Range    uffdioRange
	Mode     uint64
	Zeropage int64
}

type uffdioWriteProtect struct {
	Range uffdioRange
	Mode  uint64
}

type uffdioContinue struct {
	Range  uffdioRange
	Mode   uint64
	Mapped int64
}

type uffdioPoison struct {
	Range   uffdioRange
	Mode    uint64
	Updated int64
}

type uffdioMove struct {
	Dst  uint64
	Src  uint64
	Len  uint64
	Mode uint64
	Move int64
}

// uffd_msg is 32 bytes: event u8, 7 reserved bytes, then a 24-byte union.
const msgSize = 32
