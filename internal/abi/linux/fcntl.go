package linux

// File owners (include/uapi/asm-generic/fcntl.h): F_GETOWN_EX and
// F_SETOWN_EX take a struct f_owner_ex, F_GETOWNER_UIDS fills uid_t[2]
// (the uid and euid of the task that set the owner).
const (
	FGetOwnerUIDs = 17

	FOwnerTID  = 0
	FOwnerPID  = 1
	FOwnerPGRP = 2
)

// FOwnerEx is struct f_owner_ex.
type FOwnerEx struct {
	Type int32
	Pid  int32
}

// ProcPidInitIno is the inode of the initial pid namespace's nsfs file
// (PROC_PID_INIT_INO, include/linux/proc_ns.h).
const ProcPidInitIno = 0xEFFFFFFC
