package kerndat

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/abi/linux"
	"godwit/internal/procfs"
	"godwit/internal/ptrace"
	"godwit/internal/puppet"
)

// probeMapFiles: /proc/PID/map_files of another process names and opens
// the file behind a mapping (the ELF header of its executable).
func probeMapFiles() error {
	s, err := startSleeper(sleeperOpts{})
	if err != nil {
		return err
	}
	defer s.kill()
	pid := strconv.Itoa(s.pid)
	exe, err := os.Readlink("/proc/" + pid + "/exe")
	if err != nil {
		return err
	}
	maps, err := procfs.ReadMaps(s.pid)
	if err != nil {
		return err
	}
	for _, m := range maps {
		if m.Path != exe {
			continue
		}
		p := fmt.Sprintf("/proc/%s/map_files/%x-%x", pid, m.Start, m.End)
		l, err := os.Readlink(p)
		if err != nil {
			return fmt.Errorf("readlink %s: %w", p, err)
		}
		if l != exe {
			return fmt.Errorf("%s points to %q, want %q", p, l, exe)
		}
		f, err := os.Open(p)
		if err != nil {
			return fmt.Errorf("open %s: %w", p, err)
		}
		defer f.Close()
		var hdr [4]byte
		if _, err := f.ReadAt(hdr[:], 0); err != nil {
			return fmt.Errorf("read %s: %w", p, err)
		}
		if string(hdr[:]) != "\x7fELF" {
			return fmt.Errorf("%s does not start with an ELF header", p)
		}
		return nil
	}
	return fmt.Errorf("no mapping of %s in /proc/%s/maps", exe, pid)
}

// probeProcessVMReadv: process_vm_readv reads another process's memory and
// agrees with /proc/PID/mem.
func probeProcessVMReadv() error {
	s, err := startSleeper(sleeperOpts{})
	if err != nil {
		return err
	}
	defer s.kill()
	pid := strconv.Itoa(s.pid)
	maps, err := procfs.ReadMaps(s.pid)
	if err != nil {
		return err
	}
	if len(maps) == 0 {
		return fmt.Errorf("/proc/%s/maps is empty", pid)
	}
	// The first mapping of an executable starts with its ELF header.
	m := maps[0]
	buf := make([]byte, 4096)
	local := []unix.Iovec{{Base: &buf[0]}}
	local[0].SetLen(len(buf))
	remote := []unix.RemoteIovec{{Base: uintptr(m.Start), Len: len(buf)}}
	n, err := unix.ProcessVMReadv(s.pid, local, remote, 0)
	if err != nil {
		return fmt.Errorf("process_vm_readv %s at %#x: %w", pid, m.Start, err)
	}
	if n != len(buf) {
		return fmt.Errorf("process_vm_readv %s: %d bytes, want %d", pid, n, len(buf))
	}
	f, err := os.Open("/proc/" + pid + "/mem")
	if err != nil {
		return err
	}
	defer f.Close()
	want := make([]byte, len(buf))
	if _, err := f.ReadAt(want, int64(m.Start)); err != nil {
		return fmt.Errorf("read /proc/%s/mem: %w", pid, err)
	}
	if !bytes.Equal(buf, want) {
		return fmt.Errorf("process_vm_readv and /proc/%s/mem disagree at %#x", pid, m.Start)
	}
	if !bytes.HasPrefix(buf, []byte("\x7fELF")) {
		return fmt.Errorf("first mapping of %s at %#x does not hold the ELF header", pid, m.Start)
	}
	return nil
}

// probePidfdGetfd: pidfd_open + pidfd_getfd take a copy of a child's stdin
// pipe, and bytes written to our end come out of the copy.
func probePidfdGetfd() error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	defer w.Close()
	s, err := startSleeper(sleeperOpts{stdin: r})
	if err != nil {
		return err
	}
	defer s.kill()
	pidfd, err := unix.PidfdOpen(s.pid, 0)
	if err != nil {
		return fmt.Errorf("pidfd_open %d: %w", s.pid, err)
	}
	defer unix.Close(pidfd)
	fd, err := unix.PidfdGetfd(pidfd, 0, 0)
	if err != nil {
		return fmt.Errorf("pidfd_getfd %d fd 0: %w", s.pid, err)
	}
	defer unix.Close(fd)
	if _, err := w.Write([]byte("kd")); err != nil {
		return err
	}
	var b [2]byte
	n, err := unix.Read(fd, b[:])
	if err != nil || string(b[:n]) != "kd" {
		return fmt.Errorf("read through the taken fd: %q, %v", b[:n], err)
	}
	return nil
}

// probeMemfd: a sealed memfd can be mapped shared and shows in map_files.
func probeMemfd() error {
	fd, err := unix.MemfdCreate("godwit-check", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return fmt.Errorf("memfd_create: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, 4096); err != nil {
		return fmt.Errorf("ftruncate memfd: %w", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW); err != nil {
		return fmt.Errorf("F_ADD_SEALS: %w", err)
	}
	if _, err := unix.Pwrite(fd, []byte("kd"), 0); err != nil {
		return fmt.Errorf("write memfd: %w", err)
	}
	m, err := unix.Mmap(fd, 0, 4096, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mmap memfd: %w", err)
	}
	defer unix.Munmap(m)
	if string(m[:2]) != "kd" {
		return fmt.Errorf("memfd mapping does not show the written bytes")
	}
	addr := uint64(uintptr(unsafe.Pointer(&m[0])))
	p := fmt.Sprintf("/proc/self/map_files/%x-%x", addr, addr+4096)
	l, err := os.Readlink(p)
	if err != nil {
		return fmt.Errorf("readlink %s: %w", p, err)
	}
	if !strings.HasPrefix(l, "/memfd:godwit-check") {
		return fmt.Errorf("%s points to %q, want /memfd:godwit-check", p, l)
	}
	return nil
}

// probeMemfdHugetlb: memfd_create(MFD_HUGETLB).
func probeMemfdHugetlb() error {
	fd, err := unix.MemfdCreate("godwit-check", unix.MFD_CLOEXEC|unix.MFD_HUGETLB)
	if err != nil {
		return fmt.Errorf("memfd_create(MFD_HUGETLB): %w", err)
	}
	unix.Close(fd)
	return nil
}

// b may be Go memory converted in the call (KCMP_EPOLL_TFD's slot):
// kept on the heap and alive for the call, as the ptrace wrapper's.
//
//go:uintptrescapes
func kcmp(pid1, pid2, typ int, a, b uintptr) (uintptr, error) {
	r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(pid1), uintptr(pid2), uintptr(typ), a, b, 0)
	if e != 0 {
		return 0, e
	}
	return r, nil
}

// probeKcmp: kcmp tells a dup'ed descriptor from another file.
func probeKcmp() error {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return err
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	d, err := unix.FcntlInt(uintptr(p[0]), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(d)
	me := os.Getpid()
	if r, err := kcmp(me, me, linux.KcmpFile, uintptr(p[0]), uintptr(d)); err != nil || r != 0 {
		return fmt.Errorf("kcmp(KCMP_FILE) of a dup: %d, %v; want 0", r, err)
	}
	if r, err := kcmp(me, me, linux.KcmpFile, uintptr(p[0]), uintptr(p[1])); err != nil || r == 0 {
		return fmt.Errorf("kcmp(KCMP_FILE) of two pipe ends: %d, %v; want non-zero", r, err)
	}
	if r, err := kcmp(me, me, linux.KcmpVM, 0, 0); err != nil || r != 0 {
		return fmt.Errorf("kcmp(KCMP_VM) of self: %d, %v; want 0", r, err)
	}
	return nil
}

// probeKcmpEpoll: KCMP_EPOLL_TFD finds a target file in an epoll set.
func probeKcmpEpoll() error {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return err
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	defer unix.Close(ep)
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, p[0], &unix.EpollEvent{Events: unix.EPOLLIN}); err != nil {
		return err
	}
	slot := linux.KcmpEpollSlot{Efd: uint32(ep), Tfd: uint32(p[0])}
	me := os.Getpid()
	if r, err := kcmp(me, me, linux.KcmpEpollTFD, uintptr(p[0]), uintptr(unsafe.Pointer(&slot))); err != nil || r != 0 {
		return fmt.Errorf("kcmp(KCMP_EPOLL_TFD): %d, %v; want 0", r, err)
	}
	return nil
}

// probePrctl: PR_GET_TID_ADDRESS and the PR_SET_MM_MAP_SIZE query.
func probePrctl() error {
	var tidAddr uint64
	if err := unix.Prctl(unix.PR_GET_TID_ADDRESS, uintptr(unsafe.Pointer(&tidAddr)), 0, 0, 0); err != nil {
		return fmt.Errorf("PR_GET_TID_ADDRESS: %w", err)
	}
	var size uint32
	if err := unix.Prctl(unix.PR_SET_MM, unix.PR_SET_MM_MAP_SIZE, uintptr(unsafe.Pointer(&size)), 0, 0); err != nil {
		return fmt.Errorf("PR_SET_MM_MAP_SIZE: %w", err)
	}
	if want := uint32(unsafe.Sizeof(linux.PrctlMmMap{})); size != want {
		return fmt.Errorf("PR_SET_MM_MAP_SIZE says %d, want %d", size, want)
	}
	return nil
}

// probePrctlMMMap: a puppet sets its whole mm layout with PR_SET_MM_MAP
// (to the values it already has, auxv included), injected as restore does.
func probePrctlMMMap() error {
	return inPuppet(func(pid int, s *ptrace.Session, scratch uint64) error {
		st, err := procfs.ReadStat(pid)
		if err != nil {
			return err
		}
		brk, err := s.Syscall(unix.SYS_BRK, 0)
		if err != nil {
			return fmt.Errorf("brk(0) in a puppet: %w", err)
		}
		auxv, err := procfs.ReadAuxvRaw(pid)
		if err != nil {
			return err
		}
		const mapSize = uint64(unsafe.Sizeof(linux.PrctlMmMap{}))
		if len(auxv) == 0 || mapSize+uint64(len(auxv)) > puppetScratchSize {
			return fmt.Errorf("/proc/%d/auxv has %d bytes", pid, len(auxv))
		}
		m := linux.PrctlMmMap{
			StartCode: st.StartCode, EndCode: st.EndCode, StartStack: st.StartStack,
			StartData: st.StartData, EndData: st.EndData, StartBrk: st.StartBrk, Brk: brk,
			ArgStart: st.ArgStart, ArgEnd: st.ArgEnd, EnvStart: st.EnvStart, EnvEnd: st.EnvEnd,
			Auxv: scratch + mapSize, AuxvSize: uint32(len(auxv)),
			ExeFd: ^uint32(0), // keep the exe link
		}
		buf := append(unsafe.Slice((*byte)(unsafe.Pointer(&m)), mapSize), auxv...)
		if err := ptrace.WriteMem(pid, scratch, buf); err != nil {
			return fmt.Errorf("puppet %d: %w", pid, err)
		}
		if _, err := s.Syscall(unix.SYS_PRCTL, unix.PR_SET_MM, unix.PR_SET_MM_MAP, scratch, mapSize, 0); err != nil {
			return fmt.Errorf("PR_SET_MM_MAP in a puppet: %w", err)
		}
		return nil
	})
}

// probeClone3SetTID: clone3 with set_tid makes a task with a chosen free
// PID. It runs on the restore engine itself: a puppet (the restore stub,
// driven by ptrace) is started and clone3 with set_tid is injected into
// it, exactly as restore makes every task.
func probeClone3SetTID() error {
	last, err := readIntFile("/proc/sys/kernel/ns_last_pid")
	if err != nil {
		return err
	}
	max, err := puppet.PidMax()
	if err != nil {
		return err
	}
	const low = 301 // stay above the PIDs the kernel reserves after a wrap
	if max <= low+1 {
		return fmt.Errorf("pid_max %d leaves no room to choose a PID", max)
	}
	tr := ptrace.New()
	defer tr.Close()
	p, stop, err := startPuppet(tr)
	if err != nil {
		return err
	}
	defer stop()
	var lastErr error
	for try := 0; try < 20; try++ {
		cand := low + (last+1000-low+try*97)%(max-low)
		if _, err := os.Stat("/proc/" + strconv.Itoa(cand)); err == nil {
			continue
		}
		// A sibling: godwit is its parent and reaps it on Kill.
		c, err := p.Clone(cand, true)
		if errors.Is(err, puppet.ErrPidInUse) {
			lastErr = err
			continue
		}
		if err != nil {
			return fmt.Errorf("clone3 set_tid=%d in a puppet: %w", cand, err)
		}
		got := c.Pid
		if err := c.Kill(); err != nil {
			return fmt.Errorf("kill task %d made by clone3 set_tid: %w", got, err)
		}
		if got != cand {
			return fmt.Errorf("clone3 set_tid=%d made PID %d", cand, got)
		}
		return nil
	}
	return fmt.Errorf("no free PID could be taken with clone3 set_tid: %v", lastErr)
}

func readIntFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return v, nil
}

// probeAioRemap: an AIO ring moved with mremap keeps working.
func probeAioRemap() error {
	var ctx uint64
	if _, _, e := unix.Syscall(unix.SYS_IO_SETUP, 16, uintptr(unsafe.Pointer(&ctx)), 0); e != 0 {
		return fmt.Errorf("io_setup: %w", e)
	}
	destroy := func() { unix.Syscall(unix.SYS_IO_DESTROY, uintptr(ctx), 0, 0) }
	maps, err := procfs.ReadMaps(os.Getpid())
	if err != nil {
		destroy()
		return err
	}
	var ring procfs.Mapping
	for _, m := range maps {
		if m.Start == ctx {
			ring = m
		}
	}
	if ring.Start == 0 || !strings.HasPrefix(ring.Path, "/[aio]") {
		destroy()
		return fmt.Errorf("no AIO ring mapping at %#x", ctx)
	}
	size := uintptr(ring.End - ring.Start)
	dst, _, e := unix.Syscall6(unix.SYS_MMAP, 0, size, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uintptr(0), 0)
	if e != 0 {
		destroy()
		return fmt.Errorf("mmap: %w", e)
	}
	if _, _, e := unix.Syscall6(unix.SYS_MREMAP, uintptr(ctx), size, size, unix.MREMAP_FIXED|unix.MREMAP_MAYMOVE, dst, 0); e != 0 {
		unix.Syscall(unix.SYS_MUNMAP, dst, size, 0)
		destroy()
		return fmt.Errorf("mremap AIO ring: %w", e)
	}
	ctx = uint64(dst)
	defer destroy()
	if _, _, e := unix.Syscall6(unix.SYS_IO_GETEVENTS, uintptr(ctx), 0, 1, 0, 0, 0); e != 0 {
		return fmt.Errorf("io_getevents on the moved ring: %w", e)
	}
	return nil
}

// probeSoftDirty: after clear_refs 4, writing a page must set bit 55 of its
// pagemap entry. Without CONFIG_MEM_SOFT_DIRTY it never does.
func probeSoftDirty() error {
	page, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	defer unix.Munmap(page)
	page[0] = 1 // populate
	if err := os.WriteFile("/proc/self/clear_refs", []byte("4"), 0); err != nil {
		return fmt.Errorf("write 4 to /proc/self/clear_refs: %w", err)
	}
	page[0] = 2
	pm, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return err
	}
	defer pm.Close()
	var e [8]byte
	addr := uintptr(unsafe.Pointer(&page[0]))
	if _, err := pm.ReadAt(e[:], int64(addr/4096*8)); err != nil {
		return fmt.Errorf("read pagemap: %w", err)
	}
	v := *(*uint64)(unsafe.Pointer(&e[0]))
	if v&(1<<63) == 0 {
		return fmt.Errorf("written page %#x not present in pagemap", addr)
	}
	if v&linux.PagemapSoftDirty == 0 {
		return errors.New("a page written after clear_refs 4 has no soft-dirty bit (pagemap bit 55): CONFIG_MEM_SOFT_DIRTY is off (godwit's dirty tracking is to use userfaultfd WP_ASYNC + PAGEMAP_SCAN: see mem_dirty_track)")
	}
	return nil
}

// probeVmsplice: vmsplice of one unaligned byte with SPLICE_F_GIFT.
func probeVmsplice() error {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return err
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	buf := []byte("xk")
	iov := []unix.Iovec{{Base: &buf[1]}}
	iov[0].SetLen(1)
	if _, err := unix.Vmsplice(p[1], iov, unix.SPLICE_F_GIFT|unix.SPLICE_F_NONBLOCK); err != nil {
		return fmt.Errorf("unaligned vmsplice: %w", err)
	}
	var b [1]byte
	if n, err := unix.Read(p[0], b[:]); err != nil || n != 1 || b[0] != 'k' {
		return fmt.Errorf("read back vmspliced byte: %q, %v", b[:n], err)
	}
	return nil
}

// probeSigqueueinfo: a task queues itself a signal with a positive si_code,
// what restoring pending signals needs. It runs on the restore engine: the
// syscall is injected into a puppet, whose signals are all blocked during
// the injection, and the signal must then be pending in /proc/PID/status.
func probeSigqueueinfo() error {
	return inPuppet(func(pid int, s *ptrace.Session, scratch uint64) error {
		var si [128]byte // siginfo_t
		*(*int32)(unsafe.Pointer(&si[0])) = int32(unix.SIGUSR1)
		*(*int32)(unsafe.Pointer(&si[8])) = 1 // si_code > 0: "kernel" origin
		if err := ptrace.WriteMem(pid, scratch, si[:]); err != nil {
			return fmt.Errorf("puppet %d: %w", pid, err)
		}
		if _, err := s.Syscall(unix.SYS_RT_SIGQUEUEINFO, uint64(pid), uint64(unix.SIGUSR1), scratch); err != nil {
			return fmt.Errorf("rt_sigqueueinfo to self with si_code 1: %w", err)
		}
		st, err := procfs.ReadStatus(pid)
		if err != nil {
			return err
		}
		if bit := uint64(1) << (unix.SIGUSR1 - 1); st.ShdPnd&bit == 0 {
			return fmt.Errorf("SIGUSR1 queued by rt_sigqueueinfo is not pending (ShdPnd %#x)", st.ShdPnd)
		}
		return nil
	})
}

// probeNsLastPid: /proc/sys/kernel/ns_last_pid is writable and readable.
func probeNsLastPid() error {
	f, err := os.OpenFile("/proc/sys/kernel/ns_last_pid", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	b := make([]byte, 32)
	n, err := f.Read(b)
	if err != nil {
		return fmt.Errorf("read ns_last_pid: %w", err)
	}
	if _, err := strconv.Atoi(strings.TrimSpace(string(b[:n]))); err != nil {
		return fmt.Errorf("ns_last_pid: %w", err)
	}
	return nil
}

// probeProcStat: /proc/PID/stat has the fields up to exit_code (52).
func probeProcStat() error {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return err
	}
	// ParseStat insists on every field up to exit_code.
	if _, err := procfs.ParseStat(b); err != nil {
		return fmt.Errorf("/proc/self/stat lacks the C/R fields: %w", err)
	}
	return nil
}

// probeIPC: the SysV IPC next-id sysctls are writable.
func probeIPC() error {
	for _, n := range []string{"sem_next_id", "msg_next_id", "shm_next_id"} {
		f, err := os.OpenFile("/proc/sys/kernel/"+n, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		f.Close()
	}
	return nil
}

// probeFcntlOwnerUIDs: F_GETOWNER_UIDS.
func probeFcntlOwnerUIDs() error {
	f, err := os.Open("/proc/self/comm")
	if err != nil {
		return err
	}
	defer f.Close()
	var v [2]uint32
	const fGetOwnerUIDs = 17 // F_GETOWNER_UIDS, include/uapi/asm-generic/fcntl.h
	if _, _, e := unix.Syscall(unix.SYS_FCNTL, f.Fd(), fGetOwnerUIDs, uintptr(unsafe.Pointer(&v[0]))); e != 0 {
		return fmt.Errorf("F_GETOWNER_UIDS: %w", e)
	}
	return nil
}

// probePosixTimers: a forked child's POSIX timer shows in /proc/PID/timers.
func probePosixTimers() error {
	return inPuppet(func(pid int, s *ptrace.Session, scratch uint64) error {
		// timer_create(CLOCK_MONOTONIC, NULL, &id): the id lands in scratch.
		if _, err := s.Syscall(unix.SYS_TIMER_CREATE, unix.CLOCK_MONOTONIC, 0, scratch); err != nil {
			return fmt.Errorf("timer_create in a puppet: %w", err)
		}
		ts, err := procfs.ReadTimers(pid)
		if err != nil {
			return err
		}
		if len(ts) == 0 {
			return fmt.Errorf("/proc/%d/timers does not list the puppet's timer", pid)
		}
		return nil
	})
}
