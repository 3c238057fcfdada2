package kerndat

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/abi/linux"
)

// tcpPair makes a connected loopback TCP pair; close all three fds after.
func tcpPair() (client, server int, err error) {
	ln, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, -1, fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(ln)
	if err := unix.Bind(ln, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return -1, -1, fmt.Errorf("bind 127.0.0.1:0: %w", err)
	}
	if err := bounded(ln); err != nil {
		return -1, -1, err
	}
	if err := unix.Listen(ln, 1); err != nil {
		return -1, -1, fmt.Errorf("listen: %w", err)
	}
	sa, err := unix.Getsockname(ln)
	if err != nil {
		return -1, -1, fmt.Errorf("getsockname: %w", err)
	}
	client, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, -1, fmt.Errorf("socket: %w", err)
	}
	if err := bounded(client); err != nil {
		unix.Close(client)
		return -1, -1, err
	}
	if err := unix.Connect(client, sa); err != nil {
		unix.Close(client)
		return -1, -1, fmt.Errorf("connect loopback: %w", err)
	}
	server, _, err = unix.Accept4(ln, unix.SOCK_CLOEXEC)
	if err != nil {
		unix.Close(client)
		return -1, -1, fmt.Errorf("accept: %w", err)
	}
	return client, server, nil
}

// tcpRepairWindow is struct tcp_repair_window (include/uapi/linux/tcp.h).
type tcpRepairWindow struct {
	SndWl1, SndWnd, MaxWindow, RcvWnd, RcvWup uint32
}

// repairInspect puts fd in repair mode, reads the send queue sequence and
// the window, and leaves repair mode without a window probe.
func repairInspect(fd int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR, 1); err != nil {
		return fmt.Errorf("TCP_REPAIR on: %w", err)
	}
	defer unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR, -1)                        // TCP_REPAIR_OFF_NO_WP
	if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR_QUEUE, 2); err != nil { // TCP_SEND_QUEUE
		return fmt.Errorf("TCP_REPAIR_QUEUE: %w", err)
	}
	if _, err := unix.GetsockoptInt(fd, unix.SOL_TCP, unix.TCP_QUEUE_SEQ); err != nil {
		return fmt.Errorf("TCP_QUEUE_SEQ: %w", err)
	}
	var w tcpRepairWindow
	l := uint32(unsafe.Sizeof(w))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_TCP, unix.TCP_REPAIR_WINDOW, uintptr(unsafe.Pointer(&w)), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return fmt.Errorf("TCP_REPAIR_WINDOW: %w", e)
	}
	if w.RcvWnd == 0 || w.MaxWindow == 0 {
		return fmt.Errorf("TCP_REPAIR_WINDOW reads an empty window %+v", w)
	}
	return nil
}

// probeTCPRepair: repair mode on an established loopback connection.
func probeTCPRepair() error {
	c, s, err := tcpPair()
	if err != nil {
		return err
	}
	defer unix.Close(c)
	defer unix.Close(s)
	return repairInspect(c)
}

// probeTCPHalfClosed: repair mode on a socket whose write side was shut
// down and acknowledged (FIN_WAIT2).
func probeTCPHalfClosed() error {
	c, s, err := tcpPair()
	if err != nil {
		return err
	}
	defer unix.Close(c)
	defer unix.Close(s)
	if err := unix.Shutdown(c, unix.SHUT_WR); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	var b [1]byte
	if n, err := unix.Read(s, b[:]); err != nil || n != 0 {
		return fmt.Errorf("peer did not see the FIN (read %d, %v)", n, err)
	}
	if err := repairInspect(c); err != nil {
		return fmt.Errorf("half-closed socket: %w", err)
	}
	return nil
}

// probeSockPeekOff: SO_PEEK_OFF reads -1 on a fresh unix socket.
func probeSockPeekOff() error {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket(AF_UNIX): %w", err)
	}
	defer unix.Close(fd)
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEEK_OFF)
	if err != nil {
		return fmt.Errorf("SO_PEEK_OFF: %w", err)
	}
	if v != -1 {
		return fmt.Errorf("SO_PEEK_OFF reads %d, want -1", v)
	}
	return nil
}

// probeSoGets: the socket filter and bound device can be read back.
func probeSoGets() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	l := uint32(0)
	// SO_GET_FILTER has the value of SO_ATTACH_FILTER.
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, 0, uintptr(unsafe.Pointer(&l)), 0); e != 0 {
		return fmt.Errorf("getsockopt SO_GET_FILTER: %w", e)
	}
	if _, err := unix.GetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE); err != nil {
		return fmt.Errorf("getsockopt SO_BINDTODEVICE: %w", err)
	}
	return nil
}

// probeSkNs: SIOCGSKNS gives the socket's network namespace.
func probeSkNs() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	ns, err := unix.IoctlRetInt(fd, unix.SIOCGSKNS)
	if err != nil {
		return fmt.Errorf("SIOCGSKNS: %w", err)
	}
	defer unix.Close(ns)
	return sameFile(ns, "/proc/thread-self/ns/net")
}

func sameFile(fd int, path string) error {
	var a, b unix.Stat_t
	if err := unix.Fstat(fd, &a); err != nil {
		return fmt.Errorf("fstat: %w", err)
	}
	if err := unix.Stat(path, &b); err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if a.Dev != b.Dev || a.Ino != b.Ino {
		return fmt.Errorf("fd %d is %d:%d, %s is %d:%d", fd, a.Dev, a.Ino, path, b.Dev, b.Ino)
	}
	return nil
}

// probeSkUnixFile: SIOCUNIXFILE opens the file a unix socket is bound to.
func probeSkUnixFile() error {
	dir, err := os.MkdirTemp("", "godwit-check-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket(AF_UNIX): %w", err)
	}
	defer unix.Close(fd)
	path := filepath.Join(dir, "sk")
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return fmt.Errorf("bind %s: %w", path, err)
	}
	f, err := unix.IoctlRetInt(fd, linux.SiocUnixFile)
	if err != nil {
		return fmt.Errorf("SIOCUNIXFILE: %w", err)
	}
	defer unix.Close(f)
	return sameFile(f, path)
}

// probeSockoptBufLock: SO_BUF_LOCK can be set and read back.
func probeSockoptBufLock() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	const both = 3 // SOCK_SNDBUF_LOCK | SOCK_RCVBUF_LOCK
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BUF_LOCK, both); err != nil {
		return fmt.Errorf("set SO_BUF_LOCK: %w", err)
	}
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BUF_LOCK)
	if err != nil {
		return fmt.Errorf("get SO_BUF_LOCK: %w", err)
	}
	if v != both {
		return fmt.Errorf("SO_BUF_LOCK reads %d, want %d", v, both)
	}
	return nil
}

// inNewNetns runs fn on this OS thread inside a fresh network namespace,
// so that devices it makes are never visible on the host, then moves the
// thread back. If the thread cannot go back it stays locked and the Go
// runtime retires it when the goroutine ends.
func inNewNetns(fn func() error) error {
	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open own netns: %w", err)
	}
	defer unix.Close(orig)
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("unshare(CLONE_NEWNET): %w", err)
	}
	ferr := fn()
	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		return errors.Join(ferr, fmt.Errorf("return to own netns: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}

func openTun() (int, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq("")
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("TUNSETIFF: %w", err)
	}
	if ifr.Name() == "" {
		unix.Close(fd)
		return -1, fmt.Errorf("TUNSETIFF gave no device name")
	}
	return fd, nil
}

// probeTun: a tun device can be made (in a throw-away netns; it goes away
// with its fd) and its parameters read back.
func probeTun() error {
	return inNewNetns(func() error {
		fd, err := openTun()
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		ifr, _ := unix.NewIfreq("")
		if err := unix.IoctlIfreq(fd, unix.TUNGETIFF, ifr); err != nil {
			return fmt.Errorf("TUNGETIFF: %w", err)
		}
		if ifr.Uint16()&unix.IFF_TUN == 0 {
			return fmt.Errorf("TUNGETIFF flags %#x lack IFF_TUN", ifr.Uint16())
		}
		return nil
	})
}

// probeTunNs: TUNGETDEVNETNS names the namespace the device lives in.
func probeTunNs() error {
	return inNewNetns(func() error {
		fd, err := openTun()
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		ns, err := unix.IoctlRetInt(fd, unix.TUNGETDEVNETNS)
		if err != nil {
			return fmt.Errorf("TUNGETDEVNETNS: %w", err)
		}
		defer unix.Close(ns)
		return sameFile(ns, "/proc/thread-self/ns/net")
	})
}

// bounded makes blocking connect, accept and receive on fd give up after
// stopTimeout: a firewall rule dropping loopback packets must not hang
// `godwit check` (SO_SNDTIMEO bounds connect, SO_RCVTIMEO accept and recv).
func bounded(fd int) error {
	tv := unix.NsecToTimeval(stopTimeout.Nanoseconds())
	for _, opt := range []int{unix.SO_SNDTIMEO, unix.SO_RCVTIMEO} {
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, opt, &tv); err != nil {
			return fmt.Errorf("socket timeout: %w", err)
		}
	}
	return nil
}
