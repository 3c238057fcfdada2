package nsstate

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
)

// sysctl is one ipc sysctl of the namespace, where IPCVar keeps it.
type sysctl struct {
	path string // under /proc/sys
	u32  func(v *model.IPCVar) *uint32
	u64  func(v *model.IPCVar) *uint64
	i32  func(v *model.IPCVar) *int32
}

// ipcSysctls are the namespace's own sysctls, in the order the restore
// writes them: the *_next_id knobs last (they are what the objects were
// made with).
var ipcSysctls = []sysctl{
	{path: "kernel/msgmax", u32: func(v *model.IPCVar) *uint32 { return &v.MsgCtlmax }},
	{path: "kernel/msgmnb", u32: func(v *model.IPCVar) *uint32 { return &v.MsgCtlmnb }},
	{path: "kernel/msgmni", u32: func(v *model.IPCVar) *uint32 { return &v.MsgCtlmni }},
	{path: "kernel/auto_msgmni", u32: func(v *model.IPCVar) *uint32 { return &v.AutoMsgmni }},
	{path: "kernel/shmmax", u64: func(v *model.IPCVar) *uint64 { return &v.ShmCtlmax }},
	{path: "kernel/shmall", u64: func(v *model.IPCVar) *uint64 { return &v.ShmCtlall }},
	{path: "kernel/shmmni", u32: func(v *model.IPCVar) *uint32 { return &v.ShmCtlmni }},
	{path: "kernel/shm_rmid_forced", u32: func(v *model.IPCVar) *uint32 { return &v.ShmRmidForced }},
	{path: "fs/mqueue/queues_max", u32: func(v *model.IPCVar) *uint32 { return &v.MqQueuesMax }},
	{path: "fs/mqueue/msg_max", u32: func(v *model.IPCVar) *uint32 { return &v.MqMsgMax }},
	{path: "fs/mqueue/msgsize_max", u32: func(v *model.IPCVar) *uint32 { return &v.MqMsgsizeMax }},
	{path: "fs/mqueue/msg_default", u32: func(v *model.IPCVar) *uint32 { return &v.MqMsgDefault }},
	{path: "fs/mqueue/msgsize_default", u32: func(v *model.IPCVar) *uint32 { return &v.MqMsgsizeDefault }},
	{path: "kernel/msg_next_id", i32: func(v *model.IPCVar) *int32 { return &v.MsgNextID }},
	{path: "kernel/sem_next_id", i32: func(v *model.IPCVar) *int32 { return &v.SemNextID }},
	{path: "kernel/shm_next_id", i32: func(v *model.IPCVar) *int32 { return &v.ShmNextID }},
}

// readSysctl reads /proc/sys/path, which shows the calling thread's
// namespace.
func readSysctl(path string) (string, error) {
	b, err := os.ReadFile("/proc/sys/" + path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func writeSysctl(path, v string) error {
	if err := os.WriteFile("/proc/sys/"+path, []byte(v), 0); err != nil {
		return fmt.Errorf("%s = %s: %w", strings.ReplaceAll(path, "/", "."), v, err)
	}
	return nil
}

func readVar() (model.IPCVar, error) {
	var v model.IPCVar
	for _, c := range ipcSysctls {
		s, err := readSysctl(c.path)
		if err != nil {
			return v, err
		}
		switch {
		case c.u32 != nil:
			n, err := strconv.ParseUint(s, 10, 32)
			if err != nil {
				return v, fmt.Errorf("%s: %w", c.path, err)
			}
			*c.u32(&v) = uint32(n)
		case c.u64 != nil:
			n, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				return v, fmt.Errorf("%s: %w", c.path, err)
			}
			*c.u64(&v) = n
		default:
			n, err := strconv.ParseInt(s, 10, 32)
			if err != nil {
				return v, fmt.Errorf("%s: %w", c.path, err)
			}
			*c.i32(&v) = int32(n)
		}
	}
	s, err := readSysctl("kernel/sem")
	if err != nil {
		return v, err
	}
	f := strings.Fields(s)
	if len(f) != 4 {
		return v, fmt.Errorf("kernel/sem: %q", s)
	}
	for i := range f {
		n, err := strconv.ParseUint(f[i], 10, 32)
		if err != nil {
			return v, fmt.Errorf("kernel/sem: %w", err)
		}
		v.SemCtls[i] = uint32(n)
	}
	return v, nil
}

func writeVar(v *model.IPCVar) error {
	s := v.SemCtls
	if err := writeSysctl("kernel/sem", fmt.Sprintf("%d %d %d %d", s[0], s[1], s[2], s[3])); err != nil {
		return err
	}
	for _, c := range ipcSysctls {
		var val string
		switch {
		case c.u32 != nil:
			val = strconv.FormatUint(uint64(*c.u32(v)), 10)
		case c.u64 != nil:
			val = strconv.FormatUint(*c.u64(v), 10)
		default:
			if *c.i32(v) < 0 {
				// Unset, which is not writable: each object made
				// here used the knob, which the kernel then unset.
				continue
			}
			val = strconv.FormatInt(int64(*c.i32(v)), 10)
		}
		if err := writeSysctl(c.path, val); err != nil {
			return err
		}
	}
	return nil
}

func desc(p *unix.SysvIpcPerm, id int) model.IPCDesc {
	return model.IPCDesc{Key: p.Key, UID: p.Uid, GID: p.Gid, CUID: p.Cuid, CGID: p.Cgid, Mode: p.Mode & 0777, ID: int32(id)}
}

// ReadIPC reads pid's IPC namespace: its sysctls and every System V
// object, with shared memory contents, semaphore values and queued
// messages. attaches are the VMAs of the dumped tasks that map each
// segment (by id): a segment attached elsewhere too is refused, as is
// anything else it cannot carry exactly, by name.
func ReadIPC(pid int, attaches map[int32]uint64) (*model.IPCNamespace, error) {
	ns := &model.IPCNamespace{}
	err := inNamespace(pid, "ipc", unix.CLONE_NEWIPC, func() error {
		var err error
		if ns.Var, err = readVar(); err != nil {
			return err
		}
		if err := checkMqueues(); err != nil {
			return err
		}
		if ns.Shm, err = readShm(ns.Var.ShmRmidForced != 0, attaches); err != nil {
			return err
		}
		if ns.Sem, err = readSem(); err != nil {
			return err
		}
		ns.Msg, err = readMsg()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ipc namespace: %w", err)
	}
	return ns, nil
}

// checkMqueues refuses POSIX message queues: it mounts this thread's
// namespace's mqueue filesystem, detached, and lists it.
func checkMqueues() error {
	fsfd, err := unix.Fsopen("mqueue", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("fsopen mqueue: %w", err)
	}
	defer unix.Close(fsfd)
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return fmt.Errorf("mqueue: %w", err)
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_RDONLY)
	if err != nil {
		return fmt.Errorf("fsmount mqueue: %w", err)
	}
	defer unix.Close(mfd)
	// The mount's fd is a path: open its root to list it.
	dfd, err := unix.Openat(mfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open mqueue: %w", err)
	}
	dir := os.NewFile(uintptr(dfd), "mqueue")
	defer dir.Close()
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("list mqueue: %w", err)
	}
	if len(names) > 0 {
		return fmt.Errorf("POSIX message queue /%s: not supported", names[0])
	}
	return nil
}

// readShm reads every segment; rmidForced is kernel.shm_rmid_forced.
func readShm(rmidForced bool, attaches map[int32]uint64) ([]model.SysVShm, error) {
	var ds unix.SysvShmDesc
	maxIdx, err := shmctl(0, shmInfo, &ds)
	if err != nil {
		return nil, fmt.Errorf("shmctl SHM_INFO: %w", err)
	}
	var out []model.SysVShm
	for idx := 0; idx <= maxIdx; idx++ {
		id, err := shmctl(idx, shmStatAny, &ds)
		if err == unix.EINVAL {
			continue // no segment at this index
		}
		if err != nil {
			return nil, fmt.Errorf("shmctl SHM_STAT_ANY %d: %w", idx, err)
		}
		what := fmt.Sprintf("SysV shared memory segment %d (key %#x)", id, uint32(ds.Perm.Key))
		if rmidForced {
			// The restored segments' creator is godwit, which exits:
			// with the knob set the kernel would remove them then.
			return nil, fmt.Errorf("%s with kernel.shm_rmid_forced=1: not supported (the restored segment would be removed)", what)
		}
		if ds.Perm.Mode&shmDest != 0 {
			return nil, fmt.Errorf("%s is marked for removal and still attached: not supported", what)
		}
		if n := attaches[int32(id)]; ds.Nattch != n {
			return nil, fmt.Errorf("%s has %d attaches, %d of them in the dumped tasks: attached by a process outside the tree; not supported", what, ds.Nattch, n)
		}
		if ds.Perm.Mode&shmLocked != 0 {
			// CRIU's image has no field for it.
			return nil, fmt.Errorf("%s is locked in memory (SHM_LOCK): not supported", what)
		}
		s := model.SysVShm{Desc: desc(&ds.Perm, id), Size: ds.Segsz}
		if s.Pages, err = shmContents(id, ds.Segsz); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		out = append(out, s)
	}
	return out, nil
}

// shmContents copies the pages a segment holds, attached read-only for
// the time of the copy: the data ranges of its shmem file (SEEK_DATA and
// SEEK_HOLE on /proc/self/map_files: pages in memory or in swap), so an
// untouched page is neither populated nor stored. A hugetlb segment is
// refused.
func shmContents(id int, size uint64) ([]model.SysVShmPages, error) {
	b, err := unix.SysvShmAttach(id, 0, unix.SHM_RDONLY)
	if err != nil {
		return nil, fmt.Errorf("shmat: %w", err)
	}
	defer unix.SysvShmDetach(b)
	start := uintptr(unsafe.Pointer(&b[0]))
	var st unix.Statfs_t
	end := (start + uintptr(len(b)) + uintptr(os.Getpagesize()) - 1) &^ (uintptr(os.Getpagesize()) - 1)
	mf := fmt.Sprintf("/proc/self/map_files/%x-%x", start, end)
	if err := unix.Statfs(mf, &st); err != nil {
		return nil, fmt.Errorf("statfs %s: %w", mf, err)
	}
	if st.Type == hugetlbfsMagic {
		return nil, errors.New("hugetlb (SHM_HUGETLB) segment: not supported")
	}
	f, err := os.Open(mf)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []model.SysVShmPages
	for off := int64(0); off < int64(size); {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err == unix.ENXIO || err == nil && data >= int64(size) {
			break // no data past off
		}
		if err != nil {
			return nil, fmt.Errorf("SEEK_DATA at %d: %w", off, err)
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("SEEK_HOLE at %d: %w", data, err)
		}
		hole = min(hole, int64(size))
		out = append(out, model.SysVShmPages{Off: uint64(data), Data: append([]byte(nil), b[data:hole]...)})
		off = hole
	}
	return out, nil
}

// readSem reads every semaphore set and its values. Tasks' SEM_UNDO
// adjustments are not read: no kernel interface shows them (kcmp's
// KCMP_SYSVSEM only tells whether a task has an undo list, and every
// process that made a thread has one), so they are not restored.
func readSem() ([]model.SysVSem, error) {
	var ds semid64Ds
	maxIdx, err := semctl(0, 0, semInfo, unsafe.Pointer(&ds))
	if err != nil {
		return nil, fmt.Errorf("semctl SEM_INFO: %w", err)
	}
	var out []model.SysVSem
	for idx := 0; idx <= maxIdx; idx++ {
		id, err := semctl(idx, 0, semStatAny, unsafe.Pointer(&ds))
		if err == unix.EINVAL {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("semctl SEM_STAT_ANY %d: %w", idx, err)
		}
		vals := make([]uint16, ds.Nsems)
		if len(vals) > 0 {
			if _, err := semctl(id, 0, semGetAll, unsafe.Pointer(&vals[0])); err != nil {
				return nil, fmt.Errorf("SysV semaphore set %d: GETALL: %w", id, err)
			}
		}
		out = append(out, model.SysVSem{Desc: desc(&ds.Perm, id), Values: vals, Operated: ds.Otime != 0})
	}
	return out, nil
}

func readMsg() ([]model.SysVMsgQueue, error) {
	var ds msqid64Ds
	maxIdx, err := msgctl(0, msgInfo, &ds)
	if err != nil {
		return nil, fmt.Errorf("msgctl MSG_INFO: %w", err)
	}
	var out []model.SysVMsgQueue
	for idx := 0; idx <= maxIdx; idx++ {
		id, err := msgctl(idx, msgStatAny, &ds)
		if err == unix.EINVAL {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("msgctl MSG_STAT_ANY %d: %w", idx, err)
		}
		if ds.Qbytes > math.MaxUint32 {
			// CRIU's image holds a 32-bit limit.
			return nil, fmt.Errorf("SysV message queue %d (key %#x) has a limit of %d bytes (msg_qbytes over 4 GiB): not supported", id, uint32(ds.Perm.Key), ds.Qbytes)
		}
		q := model.SysVMsgQueue{Desc: desc(&ds.Perm, id), QBytes: uint32(ds.Qbytes)}
		// No message is longer than the bytes in the queue.
		buf := make([]byte, 8+ds.Cbytes+1)
		for n := 0; n < int(ds.Qnum); n++ {
			l, err := msgrcvCopy(id, n, buf)
			if err != nil {
				return nil, fmt.Errorf("SysV message queue %d: copy message %d: %w", id, n, err)
			}
			typ := *(*int64)(unsafe.Pointer(&buf[0]))
			q.Msgs = append(q.Msgs, model.SysVMsg{Type: typ, Data: append([]byte(nil), buf[8:8+l]...)})
		}
		out = append(out, q)
	}
	return out, nil
}

// RestoreIPC makes ns's objects and sysctls in pid's IPC namespace, a new
// one made for the restore: each object with its id, key, owner, creator,
// mode and contents.
func RestoreIPC(pid int, ns *model.IPCNamespace) error {
	err := inNamespace(pid, "ipc", unix.CLONE_NEWIPC, func() error {
		if err := creationLimits(ns); err != nil {
			return err
		}
		for i := range ns.Shm {
			if err := restoreShm(&ns.Shm[i]); err != nil {
				return err
			}
		}
		for i := range ns.Sem {
			if err := restoreSem(&ns.Sem[i]); err != nil {
				return err
			}
		}
		for i := range ns.Msg {
			if err := restoreMsg(&ns.Msg[i]); err != nil {
				return err
			}
		}
		return writeVar(&ns.Var)
	})
	if err != nil {
		return fmt.Errorf("restore ipc namespace: %w", err)
	}
	return nil
}

// creationLimits raises the new namespace's limits so that every object
// fits, whatever the dumped limits (they may have been lowered after the
// objects were made); writeVar sets the dumped ones at the end.
func creationLimits(ns *model.IPCNamespace) error {
	semmsl, semmns := uint64(32000), uint64(1024000000) // the defaults (SEMMSL, SEMMNS)
	var total uint64
	for _, s := range ns.Sem {
		semmsl = max(semmsl, uint64(len(s.Values)))
		total += uint64(len(s.Values))
	}
	semmns = max(semmns, total)
	msgmax := uint64(8192) // MSGMAX
	for _, q := range ns.Msg {
		for _, m := range q.Msgs {
			msgmax = max(msgmax, uint64(len(m.Data)))
		}
	}
	for _, w := range []struct{ path, v string }{
		{"kernel/sem", fmt.Sprintf("%d %d 500 %d", semmsl, semmns, ipcMNI)},
		{"kernel/msgmax", strconv.FormatUint(msgmax, 10)},
		{"kernel/msgmni", strconv.Itoa(ipcMNI)},
		{"kernel/shmmni", strconv.Itoa(ipcMNI)},
	} {
		if err := writeSysctl(w.path, w.v); err != nil {
			return err
		}
	}
	return nil
}

// create makes one object with the dumped id (next_id is the kernel's
// knob for it) and, on this thread only, the creator's effective uid and
// gid, which the kernel records as the object's creator.
func create(what, nextID string, d *model.IPCDesc, get func() (int, error)) error {
	if err := writeSysctl(nextID, strconv.Itoa(int(d.ID))); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := setEIDs(d.CUID, d.CGID); err != nil {
		return fmt.Errorf("%s: creator %d:%d: %w", what, d.CUID, d.CGID, err)
	}
	id, err := get()
	if rerr := rootEIDs(); rerr != nil {
		return fmt.Errorf("%s: back to uid 0: %w", what, rerr)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if id != int(d.ID) {
		return fmt.Errorf("%s: made with id %d", what, id)
	}
	return nil
}

func setPerm(p *unix.SysvIpcPerm, d *model.IPCDesc) {
	p.Uid, p.Gid, p.Mode = d.UID, d.GID, d.Mode
}

func restoreShm(s *model.SysVShm) error {
	what := fmt.Sprintf("SysV shared memory segment %d (key %#x)", s.Desc.ID, uint32(s.Desc.Key))
	if err := s.CheckPages(uint64(os.Getpagesize())); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	err := create(what, "kernel/shm_next_id", &s.Desc, func() (int, error) {
		return unix.SysvShmGet(int(s.Desc.Key), int(s.Size), int(s.Desc.Mode)|unix.IPC_CREAT|unix.IPC_EXCL)
	})
	if err != nil {
		return err
	}
	id := int(s.Desc.ID)
	var ds unix.SysvShmDesc
	if _, err := shmctl(id, unix.IPC_STAT, &ds); err != nil {
		return fmt.Errorf("%s: IPC_STAT: %w", what, err)
	}
	setPerm(&ds.Perm, &s.Desc)
	if _, err := shmctl(id, unix.IPC_SET, &ds); err != nil {
		return fmt.Errorf("%s: IPC_SET: %w", what, err)
	}
	if len(s.Pages) > 0 {
		b, err := unix.SysvShmAttach(id, 0, 0)
		if err != nil {
			return fmt.Errorf("%s: shmat: %w", what, err)
		}
		// Only the dumped pages: the others stay unpopulated, zeros.
		for _, p := range s.Pages {
			copy(b[p.Off:], p.Data)
		}
		if err := unix.SysvShmDetach(b); err != nil {
			return fmt.Errorf("%s: shmdt: %w", what, err)
		}
	}
	return nil
}

func restoreSem(s *model.SysVSem) error {
	what := fmt.Sprintf("SysV semaphore set %d (key %#x)", s.Desc.ID, uint32(s.Desc.Key))
	err := create(what, "kernel/sem_next_id", &s.Desc, func() (int, error) {
		return semget(s.Desc.Key, len(s.Values), int(s.Desc.Mode)|unix.IPC_CREAT|unix.IPC_EXCL)
	})
	if err != nil {
		return err
	}
	id := int(s.Desc.ID)
	var ds semid64Ds
	if _, err := semctl(id, 0, unix.IPC_STAT, unsafe.Pointer(&ds)); err != nil {
		return fmt.Errorf("%s: IPC_STAT: %w", what, err)
	}
	setPerm(&ds.Perm, &s.Desc)
	if _, err := semctl(id, 0, unix.IPC_SET, unsafe.Pointer(&ds)); err != nil {
		return fmt.Errorf("%s: IPC_SET: %w", what, err)
	}
	if len(s.Values) > 0 {
		if _, err := semctl(id, 0, semSetAll, unsafe.Pointer(&s.Values[0])); err != nil {
			return fmt.Errorf("%s: SETALL: %w", what, err)
		}
	}
	if s.Operated && len(s.Values) > 0 {
		// SETALL leaves sem_otime 0, what "not initialised yet" reads
		// as: one semop that changes nothing (up and down, or down and
		// up at the maximum, atomically) sets it.
		ops := []sembuf{{Op: 1}, {Op: -1}}
		if s.Values[0] >= semVMX {
			ops[0].Op, ops[1].Op = -1, 1
		}
		for i := range ops {
			ops[i].Flg = unix.IPC_NOWAIT
		}
		if err := semop(id, ops); err != nil {
			return fmt.Errorf("%s: semop to set sem_otime: %w", what, err)
		}
	}
	return nil
}

func restoreMsg(q *model.SysVMsgQueue) error {
	what := fmt.Sprintf("SysV message queue %d (key %#x)", q.Desc.ID, uint32(q.Desc.Key))
	// A new queue's byte limit is kernel.msgmnb; raising it later with
	// IPC_SET would need CAP_SYS_RESOURCE.
	if err := writeSysctl("kernel/msgmnb", strconv.FormatUint(uint64(q.QBytes), 10)); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	err := create(what, "kernel/msg_next_id", &q.Desc, func() (int, error) {
		return msgget(q.Desc.Key, int(q.Desc.Mode)|unix.IPC_CREAT|unix.IPC_EXCL)
	})
	if err != nil {
		return err
	}
	id := int(q.Desc.ID)
	var ds msqid64Ds
	if _, err := msgctl(id, unix.IPC_STAT, &ds); err != nil {
		return fmt.Errorf("%s: IPC_STAT: %w", what, err)
	}
	if ds.Qbytes != uint64(q.QBytes) {
		return fmt.Errorf("%s: made with a limit of %d bytes, not %d", what, ds.Qbytes, q.QBytes)
	}
	setPerm(&ds.Perm, &q.Desc)
	if _, err := msgctl(id, unix.IPC_SET, &ds); err != nil {
		return fmt.Errorf("%s: IPC_SET: %w", what, err)
	}
	for i, m := range q.Msgs {
		if m.Type <= 0 {
			return fmt.Errorf("%s: message %d has type %d", what, i, m.Type)
		}
		buf := make([]byte, 8+len(m.Data))
		*(*int64)(unsafe.Pointer(&buf[0])) = m.Type
		copy(buf[8:], m.Data)
		if err := msgsnd(id, buf); err != nil {
			return fmt.Errorf("%s: message %d: %w", what, i, err)
		}
	}
	return nil
}

// CheckJoinedIPC checks that each System V object of ns (the dump's) is
// in pid's IPC namespace, one the restore joins (--join-ns ipc) instead
// of making it: the same id, key, mode and size (a segment) or number of
// semaphores (a set). The tree would otherwise attach or use whatever has
// that id there, or find its objects gone; a missing or different one is
// refused, named. Contents are the joined namespace's own.
func CheckJoinedIPC(pid int, ns *model.IPCNamespace) error {
	return inNamespace(pid, "ipc", unix.CLONE_NEWIPC, func() error {
		check := func(kind string, d *model.IPCDesc, err error, p *unix.SysvIpcPerm, what string, size, want uint64) error {
			name := fmt.Sprintf("SysV %s %d (key %#x, mode %#o)", kind, d.ID, uint32(d.Key), d.Mode)
			switch {
			case err != nil:
				return fmt.Errorf("--join-ns ipc: the dump's %s is not in the joined namespace: %w", name, err)
			case p.Key != d.Key || p.Mode&0777 != d.Mode || size != want:
				if what != "" {
					name += fmt.Sprintf(" of %d %s", want, what)
					what = fmt.Sprintf(", %d %s", size, what)
				}
				return fmt.Errorf("--join-ns ipc: the dump's %s is another object in the joined namespace (key %#x, mode %#o%s)", name, uint32(p.Key), p.Mode&0777, what)
			}
			return nil
		}
		for i := range ns.Shm {
			s := &ns.Shm[i]
			var ds unix.SysvShmDesc
			_, err := shmctl(int(s.Desc.ID), unix.IPC_STAT, &ds)
			if err := check("shared memory segment", &s.Desc, err, &ds.Perm, "bytes", ds.Segsz, s.Size); err != nil {
				return err
			}
		}
		for i := range ns.Sem {
			s := &ns.Sem[i]
			var ds semid64Ds
			_, err := semctl(int(s.Desc.ID), 0, unix.IPC_STAT, unsafe.Pointer(&ds))
			if err := check("semaphore set", &s.Desc, err, &ds.Perm, "semaphores", ds.Nsems, uint64(len(s.Values))); err != nil {
				return err
			}
		}
		for i := range ns.Msg {
			q := &ns.Msg[i]
			var ds msqid64Ds
			_, err := msgctl(int(q.Desc.ID), unix.IPC_STAT, &ds)
			if err := check("message queue", &q.Desc, err, &ds.Perm, "", 0, 0); err != nil {
				return err
			}
		}
		return nil
	})
}
