package uffd

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// PageSize is the base page size the ioctls work in.
var PageSize = uint64(os.Getpagesize())

// Uffd is one userfaultfd. It may belong to this process's mm or, when the
// fd came from another process (SCM_RIGHTS, pidfd_getfd, syscall injection),
// to that process's mm: every ioctl acts on the mm the fd was created in.
type Uffd struct {
	fd       int
	closed   atomic.Bool
	features uint64 // granted by UFFDIO_API
	ioctls   uint64 // ioctls offered by UFFDIO_API
	apiDone  bool
}

// Open creates a userfaultfd in this process through the syscall, falling back
// to /dev/userfaultfd when the syscall is refused (vm.unprivileged_userfaultfd).
// flags is a mix of unix.O_CLOEXEC, unix.O_NONBLOCK and UserModeOnly;
// O_CLOEXEC and O_NONBLOCK are always added.
func Open(flags int) (*Uffd, error) {
	flags |= unix.O_CLOEXEC | unix.O_NONBLOCK
	fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, uintptr(flags), 0, 0)
	if errno == 0 {
		return &Uffd{fd: int(fd)}, nil
	}
	if errno != unix.EPERM && errno != unix.ENOSYS {
		return nil, fmt.Errorf("userfaultfd(%#x): %w", flags, errno)
	}
	u, err := OpenDev(flags)
	if err != nil {
		return nil, fmt.Errorf("userfaultfd(%#x): %w; %w", flags, errno, err)
	}
	return u, nil
}

// OpenDev creates a userfaultfd through /dev/userfaultfd (USERFAULTFD_IOC_NEW),
// which access to the device node, not vm.unprivileged_userfaultfd, governs.
func OpenDev(flags int) (*Uffd, error) {
	flags |= unix.O_CLOEXEC | unix.O_NONBLOCK
	dev, err := unix.Open("/dev/userfaultfd", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/userfaultfd: %w", err)
	}
	defer unix.Close(dev)
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(dev), _USERFAULTFD_IOC_NEW, uintptr(flags))
	if e != 0 {
		return nil, fmt.Errorf("USERFAULTFD_IOC_NEW(%#x): %w", flags, e)
	}
	return &Uffd{fd: int(r)}, nil
}

// FromFD wraps an existing userfaultfd (for example one created inside a
// target by syscall injection and taken with pidfd_getfd). The Uffd owns fd
// from now on. It is switched to non-blocking so the event loop can poll it.
// Call API next unless the creator already did (then use FromFDNegotiated).
func FromFD(fd int) (*Uffd, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("uffd fd %d: set non-blocking: %w", fd, err)
	}
	return &Uffd{fd: fd}, nil
}

// FromFDNegotiated wraps a userfaultfd whose UFFDIO_API was already done by
// someone else, recording the features they obtained.
func FromFDNegotiated(fd int, features uint64) (*Uffd, error) {
	u, err := FromFD(fd)
	if err != nil {
		return nil, err
	}
	u.features, u.apiDone = features, true
	return u, nil
}

// Fd returns the file descriptor.
func (u *Uffd) Fd() int { return u.fd }

// Features returns the features granted by API (0 before API).
func (u *Uffd) Features() uint64 { return u.features }

// Ioctls returns the ioctl bitmask returned by API.
func (u *Uffd) Ioctls() uint64 { return u.ioctls }

// Close closes the fd once.
func (u *Uffd) Close() error {
	if u.closed.Swap(true) {
		return nil
	}
	return unix.Close(u.fd)
}

func (u *Uffd) ioctl(req uintptr, arg unsafe.Pointer) error {
	for {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(u.fd), req, uintptr(arg))
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return e
		}
		return nil
	}
}

// API performs the UFFDIO_API handshake asking for want. The kernel refuses the
// whole request if one bit is unknown to it, so on EINVAL API asks which bits
// exist (with a throw-away fd: API can be done only once per fd) and returns an
// error naming the missing ones. It returns the granted features.
func (u *Uffd) API(want uint64) (uint64, error) {
	a := uffdioAPI{API: _UFFD_API, Features: want}
	if err := u.ioctl(_UFFDIO_API, unsafe.Pointer(&a)); err != nil {
		if errors.Is(err, unix.EINVAL) {
			if avail, perr := AvailableFeatures(); perr == nil && want&^avail != 0 {
				return 0, fmt.Errorf("UFFDIO_API features %#x: kernel lacks %s: %w", want, FeatureNames(want&^avail), err)
			}
		}
		return 0, fmt.Errorf("UFFDIO_API features %#x: %w", want, err)
	}
	u.features, u.ioctls, u.apiDone = a.Features, a.Ioctls, true
	return a.Features, nil
}

// AvailableFeatures asks the kernel which features it offers, on a scratch
// userfaultfd (UFFDIO_API with features 0 reports them all).
func AvailableFeatures() (uint64, error) {
	s, err := Open(0)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	a := uffdioAPI{API: _UFFD_API}
	if err := s.ioctl(_UFFDIO_API, unsafe.Pointer(&a)); err != nil {
		return 0, fmt.Errorf("UFFDIO_API query: %w", err)
	}
	return a.Features, nil
}

var featureNames = []string{
	"PAGEFAULT_FLAG_WP", "EVENT_FORK", "EVENT_REMAP", "EVENT_REMOVE",
	"MISSING_HUGETLBFS", "MISSING_SHMEM", "EVENT_UNMAP", "SIGBUS", "THREAD_ID",
	"MINOR_HUGETLBFS", "MINOR_SHMEM", "EXACT_ADDRESS", "WP_HUGETLBFS_SHMEM",
	"WP_UNPOPULATED", "POISON", "WP_ASYNC", "MOVE",
}

// FeatureNames renders a UFFD_FEATURE_* mask as "WP_ASYNC|MOVE".
func FeatureNames(f uint64) string {
	s := ""
	for i := 0; i < 64; i++ {
		if f&(1<<i) == 0 {
			continue
		}
		n := fmt.Sprintf("bit%d", i)
		if i < len(featureNames) {
			n = featureNames[i]
		}
		if s != "" {
			s += "|"
		}
		s += n
	}
	if s == "" {
		return "none"
	}
	return s
}

// Register registers [start, start+length) in the given modes (ModeMissing,
// ModeWP, ModeMinor) and returns the ioctls usable on the range.
func (u *Uffd) Register(start, length, mode uint64) (uint64, error) {
	r := uffdioRegister{Range: uffdioRange{start, length}, Mode: mode}
	if err := u.ioctl(_UFFDIO_REGISTER, unsafe.Pointer(&r)); err != nil {
		return 0, fmt.Errorf("UFFDIO_REGISTER %#x-%#x mode %#x: %w", start, start+length, mode, err)
	}
	return r.Ioctls, nil
}

// Unregister undoes Register on the range.
func (u *Uffd) Unregister(start, length uint64) error {
	r := uffdioRange{start, length}
	if err := u.ioctl(_UFFDIO_UNREGISTER, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("UFFDIO_UNREGISTER %#x-%#x: %w", start, start+length, err)
	}
	return nil
}

// Wake wakes the threads waiting on faults in the range (after DONTWAKE ops).
func (u *Uffd) Wake(start, length uint64) error {
	r := uffdioRange{start, length}
	if err := u.ioctl(_UFFDIO_WAKE, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("UFFDIO_WAKE %#x-%#x: %w", start, start+length, err)
	}
	return nil
}

// IsGone reports whether err means the target range or mm no longer exists
// (ENOENT: unmapped or unregistered under us; ESRCH: the process's mm is
// gone). Lazy-pages servers drop such faults instead of failing.
func IsGone(err error) bool { return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) }

// Outcomes the kernel documents for a resolving ioctl that did not fill the
// whole range; the caller decides whether they matter.
var (
	// ErrExist: a page in the range is already present (another thread, or
	// a racing fault, resolved it). The pages before it were filled.
	ErrExist = unix.EEXIST
	// ErrGone: the range (or part of it) is no longer mapped or registered in
	// the target (ENOENT: the mm changed under us, e.g. munmap/mremap raced;
	// ESRCH: the target mm is gone).
	ErrGone = unix.ENOENT
)

// resolve runs an ioctl that fills a range and reports progress in *done,
// looping on EAGAIN (the kernel stopped part way, because of a pending
// non-cooperative event or a signal) until the range is complete or a real
// error occurs. It returns the bytes handled.
func (u *Uffd) resolve(name string, req uintptr, arg unsafe.Pointer, dst, src, length *uint64, done *int64) (uint64, error) {
	start, total := *dst, *length
	var n uint64
	for {
		*done = 0
		err := u.ioctl(req, arg)
		if *done > 0 {
			n += uint64(*done)
		}
		if err == nil {
			return n, nil
		}
		if err == unix.EAGAIN && *done > 0 && n < total {
			// Partial: continue after what was done.
			*dst += uint64(*done)
			if src != nil {
				*src += uint64(*done)
			}
			*length -= uint64(*done)
			continue
		}
		return n, fmt.Errorf("%s %#x-%#x (done %#x): %w", name, start, start+total, n, err)
	}
}

// Copy atomically fills [dst, dst+length) in the uffd's mm with the bytes at
// src in this process (UFFDIO_COPY) and wakes the faulting threads unless mode
// has CopyModeDontWake. CopyModeWP leaves the pages write-protected.
// Returns bytes copied; the error wraps ErrExist/ErrGone/EAGAIN as the kernel
// reported them.
func (u *Uffd) Copy(dst uint64, src unsafe.Pointer, length, mode uint64) (uint64, error) {
	c := uffdioCopy{Dst: dst, Src: uint64(uintptr(src)), Len: length, Mode: mode}
	return u.resolve("UFFDIO_COPY", _UFFDIO_COPY, unsafe.Pointer(&c), &c.Dst, &c.Src, &c.Len, &c.Copy)
}

// CopySkipExisting is Copy for batched or prefetch copies: pages already
// present (a racing fault or an earlier copy filled them: EEXIST) are skipped
// and the copy goes on after them. Returns the bytes copied.
func (u *Uffd) CopySkipExisting(dst uint64, src unsafe.Pointer, length, mode uint64) (uint64, error) {
	var total uint64
	for off := uint64(0); off < length; {
		n, err := u.Copy(dst+off, unsafe.Add(src, off), length-off, mode)
		total += n
		off += n
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EEXIST) {
			return total, err
		}
		off += PageSize // the present page
	}
	return total, nil
}

// CopyBytes is Copy from a Go byte slice.
func (u *Uffd) CopyBytes(dst uint64, b []byte, mode uint64) (uint64, error) {
	if len(b) == 0 {
		return 0, nil
	}
	return u.Copy(dst, unsafe.Pointer(&b[0]), uint64(len(b)), mode)
}

// Zeropage maps zero pages over the range (UFFDIO_ZEROPAGE).
func (u *Uffd) Zeropage(start, length, mode uint64) (uint64, error) {
	z := uffdioZeropage{Range: uffdioRange{start, length}, Mode: mode}
	return u.resolve("UFFDIO_ZEROPAGE", _UFFDIO_ZEROPAGE, unsafe.Pointer(&z), &z.Range.Start, nil, &z.Range.Len, &z.Zeropage)
}

// Continue maps the page-cache pages already present behind a MINOR-registered
// range (UFFDIO_CONTINUE).
func (u *Uffd) Continue(start, length, mode uint64) (uint64, error) {
	c := uffdioContinue{Range: uffdioRange{start, length}, Mode: mode}
	return u.resolve("UFFDIO_CONTINUE", _UFFDIO_CONTINUE, unsafe.Pointer(&c), &c.Range.Start, nil, &c.Range.Len, &c.Mapped)
}

// Poison marks the range so that accesses raise SIGBUS (UFFDIO_POISON).
func (u *Uffd) Poison(start, length, mode uint64) (uint64, error) {
	p := uffdioPoison{Range: uffdioRange{start, length}, Mode: mode}
	return u.resolve("UFFDIO_POISON", _UFFDIO_POISON, unsafe.Pointer(&p), &p.Range.Start, nil, &p.Range.Len, &p.Updated)
}

// Move moves pages from src to dst, both inside the uffd's mm (UFFDIO_MOVE);
// src must be anonymous, exclusive memory. Returns bytes moved.
func (u *Uffd) Move(dst, src, length, mode uint64) (uint64, error) {
	m := uffdioMove{Dst: dst, Src: src, Len: length, Mode: mode}
	return u.resolve("UFFDIO_MOVE", _UFFDIO_MOVE, unsafe.Pointer(&m), &m.Dst, &m.Src, &m.Len, &m.Move)
}

// WriteProtect sets (wp=true) or clears write protection on a WP-registered
// range (UFFDIO_WRITEPROTECT). Clearing wakes the blocked writers unless
// dontWake.
func (u *Uffd) WriteProtect(start, length uint64, wp, dontWake bool) error {
	w := uffdioWriteProtect{Range: uffdioRange{start, length}}
	if wp {
		w.Mode |= WriteProtectModeWP
	}
	if dontWake {
		w.Mode |= WriteProtectModeDontWake
	}
	// EAGAIN (the mm is changing because of a non-cooperative event not yet
	// read) is returned to the caller: retrying here before the event loop
	// drains the event would spin.
	if err := u.ioctl(_UFFDIO_WRITEPROTECT, unsafe.Pointer(&w)); err != nil {
		return fmt.Errorf("UFFDIO_WRITEPROTECT %#x-%#x wp=%v: %w", start, start+length, wp, err)
	}
	return nil
}
