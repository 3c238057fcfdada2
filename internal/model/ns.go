package model

import "fmt"

// UTSNamespace is the tree's own UTS namespace (not godwit's): CRIU's
// utsns_entry. ID is its inode, the tasks' IDs.NS.UTS.
type UTSNamespace struct {
	ID                   uint32
	Nodename, Domainname string
}

// IPCNamespace is the tree's own IPC namespace (not godwit's): its
// sysctls and every System V object in it (CRIU's ipcns-* images). ID is
// its inode, the tasks' IDs.NS.IPC.
type IPCNamespace struct {
	ID  uint32
	Var IPCVar
	Shm []SysVShm
	Sem []SysVSem
	Msg []SysVMsgQueue
}

// IPCVar are the namespace's ipc sysctls (CRIU's ipc_var_entry), each
// as /proc/sys reads it inside the namespace.
type IPCVar struct {
	SemCtls                             [4]uint32 // kernel.sem: semmsl, semmns, semopm, semmni
	MsgCtlmax, MsgCtlmnb, MsgCtlmni     uint32
	AutoMsgmni                          uint32
	ShmCtlmax, ShmCtlall                uint64
	ShmCtlmni, ShmRmidForced            uint32
	MqQueuesMax, MqMsgMax, MqMsgsizeMax uint32 // fs.mqueue
	MqMsgDefault, MqMsgsizeDefault      uint32
	MsgNextID, SemNextID, ShmNextID     int32 // -1: unset
}

// IPCDesc is a System V object's identity and permissions (struct
// ipc64_perm; CRIU's ipc_desc_entry). Mode holds only the permission
// bits.
type IPCDesc struct {
	Key                        int32
	UID, GID, CUID, CGID, Mode uint32
	ID                         int32
}

// SysVShm is a shared memory segment and its contents: only the pages
// the segment holds (an untouched page is not read, so a dump neither
// populates the segment nor stores its zeros).
type SysVShm struct {
	Desc  IPCDesc
	Size  uint64
	Pages []SysVShmPages // ascending, disjoint, page-aligned, within Size; the rest reads as zeros
}

// SysVShmPages is a run of a segment's pages at offset Off.
type SysVShmPages struct {
	Off  uint64
	Data []byte
}

// SysVSem is a semaphore set and each semaphore's value.
type SysVSem struct {
	Desc   IPCDesc
	Values []uint16
	// Operated: a semop had run on it (sem_otime non-zero), which
	// programs wait for to know the set is initialised.
	Operated bool
}

// SysVMsgQueue is a message queue, its byte limit and its messages in
// queue order.
type SysVMsgQueue struct {
	Desc   IPCDesc
	QBytes uint32
	Msgs   []SysVMsg
}

// SysVMsg is one queued message.
type SysVMsg struct {
	Type int64
	Data []byte
}

// CheckPages refuses pages that are not ascending, disjoint and
// page-aligned (pageSize bytes) within the segment; a run's data may end
// short of a page only at the segment's end.
func (s *SysVShm) CheckPages(pageSize uint64) error {
	var end uint64
	for i, p := range s.Pages {
		n := uint64(len(p.Data))
		switch {
		case n == 0 || p.Off%pageSize != 0 || p.Off < end || p.Off > s.Size || n > s.Size-p.Off:
			return fmt.Errorf("segment %d: pages %d (%d bytes at %d) out of order or past its %d bytes", s.Desc.ID, i, n, p.Off, s.Size)
		case n%pageSize != 0 && p.Off+n != s.Size:
			return fmt.Errorf("segment %d: pages %d (%d bytes at %d) not whole pages", s.Desc.ID, i, n, p.Off)
		}
		end = p.Off + n
	}
	return nil
}
