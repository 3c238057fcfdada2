package nsstate

import (
	"os"
	"os/exec"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
)

// startInNewNS starts sleep in new UTS and IPC namespaces and returns its
// pid once it is in them; the process is killed and reaped at cleanup.
func startInNewNS(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("unshare", "-iu", "sleep", "300")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	self, err := os.Readlink("/proc/self/ns/ipc")
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		exe, _ := os.Readlink("/proc/" + itoa(pid) + "/exe")
		ns, _ := os.Readlink("/proc/" + itoa(pid) + "/ns/ipc")
		if strings.HasSuffix(exe, "/sleep") && ns != "" && ns != self {
			return pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("unshare -iu: pid %d not in new namespaces (exe %q)", pid, exe)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestUTSRoundTrip(t *testing.T) {
	src, dst := startInNewNS(t), startInNewNS(t)
	want := model.UTSNamespace{Nodename: "godwit-uts-test", Domainname: "example.test"}
	if err := RestoreUTS(src, &want); err != nil {
		t.Fatal(err)
	}
	got, err := ReadUTS(src)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("read %+v, set %+v", got, want)
	}
	if err := RestoreUTS(dst, &got); err != nil {
		t.Fatal(err)
	}
	if got2, err := ReadUTS(dst); err != nil || got2 != want {
		t.Fatalf("restored %+v (%v), want %+v", got2, err, want)
	}
	if h, _ := os.Hostname(); h == want.Nodename {
		t.Fatal("godwit's own hostname changed")
	}
}

// populate makes, in pid's IPC namespace, objects of every kind with
// non-default ids, owners, creators, modes and contents, and changes the
// sysctls.
func populate(t *testing.T, pid int) {
	t.Helper()
	err := inNamespace(pid, "ipc", unix.CLONE_NEWIPC, func() error {
		for _, w := range [][2]string{{"kernel/msgmax", "9000"}, {"kernel/shmmni", "1000"}, {"kernel/sem", "250 32000 32 128"}, {"fs/mqueue/msg_max", "20"}} {
			if err := writeSysctl(w[0], w[1]); err != nil {
				return err
			}
		}
		shm := &model.SysVShm{Desc: model.IPCDesc{Key: 0x1234, UID: 1000, GID: 1001, CUID: 1002, CGID: 1003, Mode: 0640, ID: 65538}, Size: 10000}
		// Its second page untouched: neither dumped nor restored.
		first, last := make([]byte, 4096), make([]byte, shm.Size-8192)
		for i := range first {
			first[i] = byte(i*7) | 1
		}
		for i := range last {
			last[i] = byte(i*3) | 1
		}
		shm.Pages = []model.SysVShmPages{{Off: 0, Data: first}, {Off: 8192, Data: last}}
		if err := restoreShm(shm); err != nil {
			return err
		}
		priv := &model.SysVShm{Desc: model.IPCDesc{Key: 0, Mode: 0600, ID: 3}, Size: 1, Pages: []model.SysVShmPages{{Data: []byte{42}}}}
		if err := restoreShm(priv); err != nil {
			return err
		}
		sem := &model.SysVSem{Desc: model.IPCDesc{Key: 0x77, UID: 5, GID: 6, Mode: 0660, ID: 32770}, Values: []uint16{1, 0, 32767, 9}}
		if err := restoreSem(sem); err != nil {
			return err
		}
		// A program's semop: sem_otime is set, and must stay set.
		if err := semop(int(sem.Desc.ID), []sembuf{{Num: 1, Op: 1}, {Num: 1, Op: -1}}); err != nil {
			return err
		}
		// A queue filled the ordinary way: msgsnd in order.
		id, err := msgget(0x99, 0600|unix.IPC_CREAT)
		if err != nil {
			return err
		}
		for i, m := range []model.SysVMsg{{Type: 3, Data: []byte("first")}, {Type: 1, Data: []byte("second, longer")}, {Type: 3, Data: nil}, {Type: 7, Data: make([]byte, 9000)}} {
			buf := make([]byte, 8+len(m.Data))
			*(*int64)(unsafe.Pointer(&buf[0])) = m.Type
			copy(buf[8:], m.Data)
			if err := msgsnd(id, buf); err != nil {
				t.Errorf("msgsnd %d: %v", i, err)
			}
		}
		return writeSysctl("kernel/sem_next_id", "12")
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestIPCRoundTrip(t *testing.T) {
	src, dst := startInNewNS(t), startInNewNS(t)
	populate(t, src)
	ns, err := ReadIPC(src, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(ns.Shm) != 2 || len(ns.Sem) != 1 || len(ns.Msg) != 1 || len(ns.Msg[0].Msgs) != 4 {
		t.Fatalf("read %d segments, %d semaphore sets, %d queues", len(ns.Shm), len(ns.Sem), len(ns.Msg))
	}
	if ns.Shm[0].Desc.CUID != 1002 || ns.Shm[0].Desc.ID != 3 && ns.Shm[1].Desc.ID != 3 {
		t.Fatalf("segments: %+v %+v", ns.Shm[0].Desc, ns.Shm[1].Desc)
	}
	if !ns.Sem[0].Operated {
		t.Fatal("the set a semop ran on reads as never operated (sem_otime 0)")
	}
	if ns.Var.MsgCtlmax != 9000 || ns.Var.SemCtls != [4]uint32{250, 32000, 32, 128} || ns.Var.SemNextID != 12 || ns.Var.MqMsgMax != 20 {
		t.Fatalf("sysctls: %+v", ns.Var)
	}
	if err := RestoreIPC(dst, ns); err != nil {
		t.Fatal(err)
	}
	got, err := ReadIPC(dst, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, ns) {
		t.Fatalf("restored namespace differs:\n got %+v\nwant %+v", got.Var, ns.Var)
	}
	// The restored queue gives its messages back in order.
	err = inNamespace(dst, "ipc", unix.CLONE_NEWIPC, func() error {
		q := ns.Msg[0]
		buf := make([]byte, 8+9000)
		for i, m := range q.Msgs {
			r, _, e := unix.Syscall6(unix.SYS_MSGRCV, uintptr(q.Desc.ID), uintptr(unsafe.Pointer(&buf[0])), 9000, 0, unix.IPC_NOWAIT, 0)
			if e != 0 {
				t.Errorf("msgrcv %d: %v", i, e)
				continue
			}
			if typ := *(*int64)(unsafe.Pointer(&buf[0])); typ != m.Type || string(buf[8:8+r]) != string(m.Data) {
				t.Errorf("message %d: type %d, %d bytes", i, typ, r)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// attach makes a segment and attaches it in the test's own address space
// until the test ends.
func attach(t *testing.T) error {
	id, err := unix.SysvShmGet(0, 4096, 0600|unix.IPC_CREAT)
	if err != nil {
		return err
	}
	b, err := unix.SysvShmAttach(id, 0, 0)
	if err != nil {
		return err
	}
	t.Cleanup(func() { _ = unix.SysvShmDetach(b) })
	return nil
}

func TestIPCRefusals(t *testing.T) {
	for _, c := range []struct {
		name, want string
		make       func() error
	}{
		{"attached", "attached by a process outside the tree", func() error { return attach(t) }},
		{"rmid forced", "shm_rmid_forced", func() error {
			// Attached, or the kernel removes it when this thread ends.
			if err := attach(t); err != nil {
				return err
			}
			return writeSysctl("kernel/shm_rmid_forced", "1")
		}},
		{"mqueue", "POSIX message queue /q1", func() error {
			fsfd, err := unix.Fsopen("mqueue", unix.FSOPEN_CLOEXEC)
			if err != nil {
				return err
			}
			defer unix.Close(fsfd)
			if err := unix.FsconfigCreate(fsfd); err != nil {
				return err
			}
			mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(mfd)
			fd, err := unix.Openat(mfd, "q1", unix.O_CREAT|unix.O_RDWR, 0600)
			if err != nil {
				return err
			}
			return unix.Close(fd)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			pid := startInNewNS(t)
			if err := inNamespace(pid, "ipc", unix.CLONE_NEWIPC, c.make); err != nil {
				t.Fatal(err)
			}
			_, err := ReadIPC(pid, nil)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("ReadIPC: %v, want an error with %q", err, c.want)
			}
		})
	}
}

// TestReadLeavesOwnNamespaces reads a tree's namespaces many times: each
// read joins them on a thread that must end with it, never Go's main
// thread (which Go keeps, and which /proc/self/ns shows), so godwit's own
// namespaces stay as they were for the next dump in the same process.
func TestReadLeavesOwnNamespaces(t *testing.T) {
	pid := startInNewNS(t)
	before := map[string]string{}
	for _, ns := range []string{"uts", "ipc"} {
		l, err := os.Readlink("/proc/self/ns/" + ns)
		if err != nil {
			t.Fatal(err)
		}
		before[ns] = l
	}
	for range 20 {
		if _, err := ReadUTS(pid); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadIPC(pid, nil); err != nil {
			t.Fatal(err)
		}
	}
	for ns, l := range before {
		if got, _ := os.Readlink("/proc/self/ns/" + ns); got != l {
			t.Errorf("godwit's /proc/self/ns/%s moved from %s to %s", ns, l, got)
		}
	}
}

// shmInfoT is struct shm_info (include/uapi/linux/shm.h), what
// shmctl(SHM_INFO) fills: shm_rss is the resident pages of every segment.
type shmInfoT struct {
	UsedIDs                     int32
	_                           int32
	ShmTot, ShmRss, ShmSwp      uint64
	SwapAttempts, SwapSuccesses uint64
}

// TestReadShmLeavesItUnpopulated dumps a 256 MiB segment of which one
// page was written: the read must not populate the rest (the namespace's
// resident shm pages stay as they were) and holds that page alone.
func TestReadShmLeavesItUnpopulated(t *testing.T) {
	pid := startInNewNS(t)
	rss := func() uint64 {
		var si shmInfoT
		if err := inNamespace(pid, "ipc", unix.CLONE_NEWIPC, func() error {
			_, err := shmctl(0, shmInfo, (*unix.SysvShmDesc)(unsafe.Pointer(&si)))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return si.ShmRss
	}
	if err := inNamespace(pid, "ipc", unix.CLONE_NEWIPC, func() error {
		id, err := unix.SysvShmGet(0, 256<<20, 0600|unix.IPC_CREAT)
		if err != nil {
			return err
		}
		b, err := unix.SysvShmAttach(id, 0, 0)
		if err != nil {
			return err
		}
		b[100<<20] = 7
		return unix.SysvShmDetach(b)
	}); err != nil {
		t.Fatal(err)
	}
	before := rss()
	ns, err := ReadIPC(pid, nil)
	if err != nil {
		t.Fatal(err)
	}
	if after := rss(); after != before {
		t.Errorf("reading the namespace populated the segment: %d -> %d resident pages", before, after)
	}
	// One run around the byte: a page, or a huge page where shmem uses
	// them (transparent_hugepage/shmem_enabled).
	if len(ns.Shm) != 1 || len(ns.Shm[0].Pages) != 1 {
		t.Fatalf("segments %+v", ns.Shm)
	}
	p := ns.Shm[0].Pages[0]
	if p.Off > 100<<20 || p.Off+uint64(len(p.Data)) <= 100<<20 || len(p.Data) > 2<<20 || p.Data[100<<20-p.Off] != 7 {
		t.Errorf("segment's pages: %d bytes at %#x", len(p.Data), p.Off)
	}
}

// TestCheckJoinedIPC checks a dump's SysV objects against a namespace a
// restore joins: the namespace they were read from passes, an empty one
// is refused naming a missing object, and one whose object with the same
// id differs (size, semaphores, key, mode) is refused naming it.
func TestCheckJoinedIPC(t *testing.T) {
	src, empty := startInNewNS(t), startInNewNS(t)
	populate(t, src)
	ns, err := ReadIPC(src, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckJoinedIPC(src, ns); err != nil {
		t.Fatalf("the dump's own namespace: %v", err)
	}
	if err := CheckJoinedIPC(empty, ns); err == nil || !strings.Contains(err.Error(), "not in the joined namespace") {
		t.Fatalf("an empty namespace: %v", err)
	}
	for name, change := range map[string]func(ns *model.IPCNamespace){
		"segment size": func(ns *model.IPCNamespace) { ns.Shm[0].Size += 4096 },
		"semaphores":   func(ns *model.IPCNamespace) { ns.Sem[0].Values = append(ns.Sem[0].Values, 0) },
		"queue key":    func(ns *model.IPCNamespace) { ns.Msg[0].Desc.Key++ },
		"segment mode": func(ns *model.IPCNamespace) { ns.Shm[1].Desc.Mode ^= 0004 },
	} {
		other, err := ReadIPC(src, nil)
		if err != nil {
			t.Fatal(err)
		}
		change(other)
		if err := CheckJoinedIPC(src, other); err == nil || !strings.Contains(err.Error(), "is another object in the joined namespace") {
			t.Errorf("%s changed: %v", name, err)
		}
	}
}
