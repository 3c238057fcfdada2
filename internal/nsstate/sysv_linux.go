package nsstate

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// System V IPC commands and flags that x/sys/unix does not have
// (include/uapi/linux/ipc.h, shm.h, sem.h, msg.h). On x86-64 the calls
// take the 64-bit structures without IPC_64.
const (
	shmInfo    = 14 // SHM_INFO: returns the highest index in use
	shmStatAny = 15 // SHM_STAT_ANY: by index, returns the id

	semGetAll  = 13 // GETALL
	semSetAll  = 17 // SETALL
	semInfo    = 19 // SEM_INFO
	semStatAny = 20 // SEM_STAT_ANY

	msgInfo    = 12     // MSG_INFO
	msgStatAny = 13     // MSG_STAT_ANY
	msgCopy    = 040000 // MSG_COPY: msgrcv reads message N without removing it

	shmDest   = 01000 // SHM_DEST: removed once the last attach goes
	shmLocked = 02000 // SHM_LOCKED

	// ipcMNI is the most objects of one kind (IPCMNI), and the index
	// part of an id: an id is index + seq*ipcMNI.
	ipcMNI = 32768

	hugetlbfsMagic = 0x958458f6 // HUGETLBFS_MAGIC, include/uapi/linux/magic.h
)

// semid64Ds is struct semid64_ds (arch/x86/include/uapi/asm/sembuf.h).
type semid64Ds struct {
	Perm  unix.SysvIpcPerm
	Otime int64
	_     uint64
	Ctime int64
	_     uint64
	Nsems uint64
	_     uint64
	_     uint64
}

// msqid64Ds is struct msqid64_ds (include/uapi/asm-generic/msgbuf.h, as
// x86-64 uses it).
type msqid64Ds struct {
	Perm   unix.SysvIpcPerm
	Stime  int64
	Rtime  int64
	Ctime  int64
	Cbytes uint64
	Qnum   uint64
	Qbytes uint64
	Lspid  int32
	Lrpid  int32
	_      uint64
	_      uint64
}

func shmctl(id, cmd int, ds *unix.SysvShmDesc) (int, error) {
	r, _, e := unix.Syscall(unix.SYS_SHMCTL, uintptr(id), uintptr(cmd), uintptr(unsafe.Pointer(ds)))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// semctl passes arg as the union semun (a pointer, by value).
func semctl(id, num, cmd int, arg unsafe.Pointer) (int, error) {
	r, _, e := unix.Syscall6(unix.SYS_SEMCTL, uintptr(id), uintptr(num), uintptr(cmd), uintptr(arg), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// sembuf is struct sembuf (include/uapi/linux/sem.h).
type sembuf struct {
	Num uint16
	Op  int16
	Flg int16
}

// semVMX is SEMVMX (include/uapi/linux/sem.h): a semaphore's maximum.
const semVMX = 32767

func semop(id int, ops []sembuf) error {
	_, _, e := unix.Syscall(unix.SYS_SEMOP, uintptr(id), uintptr(unsafe.Pointer(&ops[0])), uintptr(len(ops)))
	if e != 0 {
		return e
	}
	return nil
}

func semget(key int32, nsems, flag int) (int, error) {
	r, _, e := unix.Syscall(unix.SYS_SEMGET, uintptr(key), uintptr(nsems), uintptr(flag))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

func msgctl(id, cmd int, ds *msqid64Ds) (int, error) {
	r, _, e := unix.Syscall(unix.SYS_MSGCTL, uintptr(id), uintptr(cmd), uintptr(unsafe.Pointer(ds)))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

func msgget(key int32, flag int) (int, error) {
	r, _, e := unix.Syscall(unix.SYS_MSGGET, uintptr(key), uintptr(flag), 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// msgrcvCopy copies message n of queue id into buf (mtype, then text)
// without removing it; it returns the text's length.
func msgrcvCopy(id, n int, buf []byte) (int, error) {
	r, _, e := unix.Syscall6(unix.SYS_MSGRCV, uintptr(id), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)-8),
		uintptr(n), uintptr(msgCopy|unix.IPC_NOWAIT), 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// msgsnd queues buf (mtype, then text) without waiting.
func msgsnd(id int, buf []byte) error {
	_, _, e := unix.Syscall6(unix.SYS_MSGSND, uintptr(id), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)-8),
		uintptr(unix.IPC_NOWAIT), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// setEIDs sets this thread's effective uid and gid only (the raw calls:
// Go's Setresuid changes every thread).
func setEIDs(uid, gid uint32) error {
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, ^uintptr(0), uintptr(gid), ^uintptr(0)); e != 0 {
		return e
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); e != 0 {
		return e
	}
	return nil
}

// rootEIDs gives this thread back effective uid and gid 0 (and with them
// its effective capabilities).
func rootEIDs() error {
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), 0, ^uintptr(0)); e != 0 {
		return e
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, ^uintptr(0), 0, ^uintptr(0)); e != 0 {
		return e
	}
	return nil
}
