package kerndat

import (
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/abi/linux"
	"godwit/internal/procfs"
)

// fdinfo parses /proc/PID/fdinfo/FD of one of our own descriptors.
func fdinfo(fd int) (*procfs.FDInfo, error) {
	return procfs.ReadFDInfo(os.Getpid(), fd)
}

// probeFdinfoExt: eventfd, epoll, signalfd and inotify show their state in
// /proc/PID/fdinfo.
func probeFdinfoExt() error {
	efd, err := unix.Eventfd(13, unix.EFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	defer unix.Close(efd)
	fi, err := fdinfo(efd)
	if err != nil {
		return err
	}
	if v, ok := fi.Get("eventfd-count"); !ok || strings.TrimLeft(v, "0") != "d" {
		return fmt.Errorf("eventfd fdinfo: count %q, want 0xd", v)
	}

	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return err
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("epoll_create1: %w", err)
	}
	defer unix.Close(ep)
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, p[0], &unix.EpollEvent{Events: unix.EPOLLIN}); err != nil {
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	if fi, err = fdinfo(ep); err != nil {
		return err
	}
	if v, ok := fi.Get("tfd"); !ok || !strings.HasPrefix(v, strconv.Itoa(p[0])+" ") {
		return fmt.Errorf("epoll fdinfo: tfd line %q, want target %d", v, p[0])
	}

	var mask unix.Sigset_t
	mask.Val[0] = 1 << (unix.SIGUSR1 - 1)
	sfd, err := unix.Signalfd(-1, &mask, unix.SFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("signalfd: %w", err)
	}
	defer unix.Close(sfd)
	if fi, err = fdinfo(sfd); err != nil {
		return err
	}
	if v, ok := fi.Get("sigmask"); !ok || strings.TrimLeft(v, "0") != "200" {
		return fmt.Errorf("signalfd fdinfo: sigmask %q, want SIGUSR1 (0x200)", v)
	}

	ifd, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("inotify_init1: %w", err)
	}
	defer unix.Close(ifd)
	wd, err := unix.InotifyAddWatch(ifd, "/", unix.IN_ALL_EVENTS)
	if err != nil {
		return fmt.Errorf("inotify_add_watch: %w", err)
	}
	if fi, err = fdinfo(ifd); err != nil {
		return err
	}
	if v, ok := fi.Get("inotify wd"); !ok || !strings.HasPrefix(v, strconv.FormatInt(int64(wd), 16)+" ") {
		return fmt.Errorf("inotify fdinfo: wd line %q, want wd %d", v, wd)
	}
	return nil
}

// probeMntID: fdinfo carries mnt_id.
func probeMntID() error {
	f, err := os.Open("/proc/self/comm")
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := fdinfo(int(f.Fd()))
	if err != nil {
		return err
	}
	if fi.MntID < 0 {
		return fmt.Errorf("fdinfo has no mnt_id")
	}
	return nil
}

// probeFdinfoLock: a flock shows as a "lock:" line in fdinfo.
func probeFdinfoLock() error {
	fd, err := unix.MemfdCreate("godwit-check-lock", unix.MFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("memfd_create: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		return fmt.Errorf("flock: %w", err)
	}
	fi, err := fdinfo(fd)
	if err != nil {
		return err
	}
	if v, ok := fi.Get("lock"); !ok || !strings.Contains(v, "FLOCK") {
		return fmt.Errorf("fdinfo of a flocked file has no FLOCK lock line")
	}
	return nil
}

// probeTimerfd: timerfd state in fdinfo and TFD_IOC_SET_TICKS.
func probeTimerfd() error {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_CLOEXEC|unix.TFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("timerfd_create: %w", err)
	}
	defer unix.Close(fd)
	its := unix.ItimerSpec{Value: unix.Timespec{Sec: 3600}, Interval: unix.Timespec{Sec: 3600}}
	if err := unix.TimerfdSettime(fd, 0, &its, nil); err != nil {
		return fmt.Errorf("timerfd_settime: %w", err)
	}
	fi, err := fdinfo(fd)
	if err != nil {
		return err
	}
	if v, ok := fi.Get("it_interval"); !ok || !strings.Contains(v, "3600") {
		return fmt.Errorf("timerfd fdinfo: it_interval %q, want 3600 s", v)
	}
	ticks := uint64(5)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), linux.TfdIocSetTicks, uintptr(unsafe.Pointer(&ticks))); e != 0 {
		return fmt.Errorf("TFD_IOC_SET_TICKS: %w", e)
	}
	var c [8]byte
	if n, err := unix.Read(fd, c[:]); err != nil || n != 8 || binary.NativeEndian.Uint64(c[:]) != 5 {
		return fmt.Errorf("read timerfd after TFD_IOC_SET_TICKS 5: %x, %v", c[:n], err)
	}
	return nil
}

// probeTTY: a locked pty master refuses to open its slave.
func probeTTY() error {
	m, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/ptmx: %w", err)
	}
	defer unix.Close(m)
	if err := unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 1); err != nil {
		return fmt.Errorf("TIOCSPTLCK: %w", err)
	}
	n, err := unix.IoctlGetUint32(m, unix.TIOCGPTN)
	if err != nil {
		return fmt.Errorf("TIOCGPTN: %w", err)
	}
	s, err := unix.Open(fmt.Sprintf("/dev/pts/%d", n), unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err == nil {
		unix.Close(s)
		return fmt.Errorf("opened the slave of a locked pty")
	}
	if err != unix.EIO {
		return fmt.Errorf("open locked pty slave: %w, want EIO", err)
	}
	return nil
}

// probeOpenat2: openat2 with RESOLVE_NO_MAGICLINKS.
func probeOpenat2() error {
	fd, err := unix.Openat2(unix.AT_FDCWD, "/", &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_NO_MAGICLINKS})
	if err != nil {
		return fmt.Errorf("openat2: %w", err)
	}
	unix.Close(fd)
	return nil
}
