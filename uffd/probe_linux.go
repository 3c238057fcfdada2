package uffd

import (
	"bytes"
	"errors"
	"fmt"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ProbeResult says which userfaultfd mechanisms work on this kernel, each
// tried for real on scratch memory of this process.
type ProbeResult struct {
	// Available is nil when a userfaultfd can be created and API'd at all.
	Available error
	// Features is what UFFDIO_API grants when every feature is requested
	// (the kernel's offer).
	Features uint64
	// Ioctls is the UFFDIO_API ioctl mask.
	Ioctls uint64

	basic, noncoop, lazy, dirty error
}

// probeTimeout bounds every wait of the probe, so a broken kernel cannot hang
// `godwit check`.
const probeTimeout = 2 * time.Second

// Probe opens a userfaultfd, negotiates features and tries the mechanisms
// godwit needs: MISSING-mode fault service (uffd, lazy_pages), the
// non-cooperative events (uffd-noncoop), and WP_ASYNC dirty tracking with
// PAGEMAP_SCAN (mem_dirty_track).
func Probe() *ProbeResult {
	p := &ProbeResult{}
	u, err := Open(0)
	if err != nil {
		p.Available = fmt.Errorf("cannot create a userfaultfd: %w", err)
		p.basic, p.noncoop, p.lazy, p.dirty = p.Available, p.Available, p.Available, p.Available
		return p
	}
	a := uffdioAPI{API: _UFFD_API}
	err = u.ioctl(_UFFDIO_API, unsafe.Pointer(&a))
	u.Close()
	if err != nil {
		p.Available = fmt.Errorf("UFFDIO_API: %w", err)
		p.basic, p.noncoop, p.lazy, p.dirty = p.Available, p.Available, p.Available, p.Available
		return p
	}
	p.Features, p.Ioctls = a.Features, a.Ioctls
	p.basic = probeBasic()
	p.noncoop = p.probeNonCoop()
	p.lazy = p.probeLazy()
	p.dirty = p.probeDirty()
	return p
}

// Basic: a userfaultfd is usable at all ("uffd"): register a range in MISSING
// mode, fill it with UFFDIO_COPY and UFFDIO_ZEROPAGE, read the bytes back.
func (p *ProbeResult) Basic() error { return p.basic }

// NonCoop: the FORK/REMAP/REMOVE/UNMAP events are granted and REMAP, REMOVE
// and UNMAP are really delivered ("uffd-noncoop"). FORK is checked as a
// granted feature only: forking the probing Go process is not safe.
func (p *ProbeResult) NonCoop() error { return p.noncoop }

// LazyPages: what lazy restore needs ("lazy_pages"): a real page fault on a
// MISSING range is delivered, served with UFFDIO_COPY and the faulting thread
// resumes with the data; plus the non-cooperative events.
func (p *ProbeResult) LazyPages() error { return p.lazy }

// DirtyTrack: WP_ASYNC write protection plus PAGEMAP_SCAN with
// PM_SCAN_WP_MATCHING|PM_SCAN_CHECK_WPASYNC reports exactly the written pages
// of a test mapping and re-protects them ("mem_dirty_track").
func (p *ProbeResult) DirtyTrack() error { return p.dirty }

type scratch struct{ b []byte }

func newScratch(pages int) (*scratch, error) {
	b, err := unix.Mmap(-1, 0, pages*int(PageSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("mmap scratch: %w", err)
	}
	return &scratch{b}, nil
}

func (s *scratch) addr() uint64 { return uint64(uintptr(unsafe.Pointer(&s.b[0]))) }
func (s *scratch) len() uint64  { return uint64(len(s.b)) }
func (s *scratch) free()        { unix.Munmap(s.b) }

func probeBasic() error {
	u, err := Open(0)
	if err != nil {
		return err
	}
	defer u.Close()
	if _, err := u.API(0); err != nil {
		return err
	}
	s, err := newScratch(2)
	if err != nil {
		return err
	}
	defer s.free()
	ioctls, err := u.Register(s.addr(), s.len(), ModeMissing)
	if err != nil {
		return err
	}
	for _, need := range []uint{IoctlCopy, IoctlZeropage, IoctlWake} {
		if ioctls&(1<<need) == 0 {
			return fmt.Errorf("UFFDIO_REGISTER MISSING does not offer ioctl %#x (got %#x)", need, ioctls)
		}
	}
	src := bytes.Repeat([]byte{0x5a}, int(PageSize))
	if _, err := u.CopyBytes(s.addr(), src, 0); err != nil {
		return err
	}
	if _, err := u.Zeropage(s.addr()+PageSize, PageSize, 0); err != nil {
		return err
	}
	if !bytes.Equal(s.b[:PageSize], src) {
		return errors.New("UFFDIO_COPY succeeded but the page does not hold the copied bytes")
	}
	if !bytes.Equal(s.b[PageSize:], make([]byte, PageSize)) {
		return errors.New("UFFDIO_ZEROPAGE succeeded but the page is not zero")
	}
	// A second copy over a present page must say EEXIST, as documented.
	if _, err := u.CopyBytes(s.addr(), src, 0); !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("UFFDIO_COPY over a present page: want EEXIST, got %v", err)
	}
	return u.Unregister(s.addr(), s.len())
}

func (p *ProbeResult) probeNonCoop() error {
	if miss := FeatureNonCoop &^ p.Features; miss != 0 {
		return fmt.Errorf("kernel does not offer %s", FeatureNames(miss))
	}
	u, err := Open(0)
	if err != nil {
		return err
	}
	ps := PageSize
	// Raw mappings (not Go slices): they are moved and unmapped below.
	addr, err := rawMmap(0, 4*ps)
	if err != nil {
		u.Close()
		return err
	}
	dst, err := rawMmap(0, 2*ps)
	if err != nil {
		u.Close()
		rawMunmap(addr, 4*ps)
		return err
	}
	defer func() {
		// Closing the uffd first drops the registrations, so these munmaps
		// do not wait for anyone to read UNMAP events.
		u.Close()
		rawMunmap(addr, 4*ps)
		rawMunmap(dst, 2*ps)
	}()
	if _, err := u.API(FeatureEventRemap | FeatureEventRemove | FeatureEventUnmap); err != nil {
		return err
	}
	if _, err := u.Register(addr, 4*ps, ModeMissing); err != nil {
		return err
	}
	if _, err := u.Zeropage(addr, 4*ps, 0); err != nil {
		return err
	}
	// Each operation blocks until its event is read, so run it in a goroutine
	// (a syscall: the Go scheduler carries on) and read the event here.
	// Each operation blocks until its events are read, so run it in a
	// goroutine (a syscall: the Go scheduler carries on) and keep reading
	// events until it returns; one operation can raise several events (a
	// moving mremap also unmaps the old place).
	try := func(name string, want Msg, op func() error) error {
		done := make(chan error, 1)
		go func() { done <- op() }()
		var got []Msg
		seen, finished := false, false
		var opErr error
		deadline := time.Now().Add(probeTimeout)
		for !(seen && finished) {
			if time.Now().After(deadline) {
				u.Close() // releases the operation waiting for its event
				select {
				case <-done:
				case <-time.After(probeTimeout):
				}
				return fmt.Errorf("%s: event %v not seen within %v (got %v)", name, want, probeTimeout, got)
			}
			m, err := waitMsg(u, 10*time.Millisecond)
			if err == nil {
				got = append(got, m)
				if m == want {
					seen = true
				}
			} else if !errors.Is(err, errTimeout) {
				return fmt.Errorf("%s: %w", name, err)
			}
			select {
			case opErr = <-done:
				finished = true
			default:
			}
		}
		if opErr != nil {
			return fmt.Errorf("%s: %w", name, opErr)
		}
		return nil
	}
	if err := try("madvise(MADV_DONTNEED)", Msg{Event: EventRemove, Start: addr, End: addr + ps, UFD: -1}, func() error {
		return sysErr(unix.Syscall(unix.SYS_MADVISE, uintptr(addr), uintptr(ps), unix.MADV_DONTNEED))
	}); err != nil {
		return err
	}
	if err := try("mremap", Msg{Event: EventRemap, From: addr + 2*ps, To: dst, Len: 2 * ps, UFD: -1}, func() error {
		return sysErr6(unix.Syscall6(unix.SYS_MREMAP, uintptr(addr+2*ps), uintptr(2*ps), uintptr(2*ps),
			unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, uintptr(dst), 0))
	}); err != nil {
		return err
	}
	if err := try("munmap", Msg{Event: EventUnmap, Start: dst, End: dst + 2*ps, UFD: -1}, func() error {
		return sysErr(unix.Syscall(unix.SYS_MUNMAP, uintptr(dst), uintptr(2*ps), 0))
	}); err != nil {
		return err
	}
	return nil
}

func sysErr(_, _ uintptr, e unix.Errno) error {
	if e != 0 {
		return e
	}
	return nil
}

func sysErr6(r1, r2 uintptr, e unix.Errno) error { return sysErr(r1, r2, e) }

// rawMmap maps length bytes of private anonymous memory outside Go's
// bookkeeping, for memory that will be moved or unmapped with raw syscalls.
func rawMmap(hint, length uint64) (uint64, error) {
	r, _, e := unix.Syscall6(unix.SYS_MMAP, uintptr(hint), uintptr(length), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uintptr(0), 0)
	if e != 0 {
		return 0, fmt.Errorf("mmap %#x bytes: %w", length, e)
	}
	return uint64(r), nil
}

func rawMunmap(addr, length uint64) {
	unix.Syscall(unix.SYS_MUNMAP, uintptr(addr), uintptr(length), 0)
}

var errTimeout = errors.New("no userfaultfd message within the timeout")

// waitMsg waits up to d for one message on u.
func waitMsg(u *Uffd, d time.Duration) (Msg, error) {
	deadline := time.Now().Add(d)
	buf := make([]byte, msgSize)
	for {
		msgs, err := u.Read(buf, nil)
		if len(msgs) > 0 {
			return msgs[0], nil
		}
		if err != nil && !errors.Is(err, unix.EAGAIN) {
			return Msg{}, err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return Msg{}, errTimeout
		}
		fds := []unix.PollFd{{Fd: int32(u.fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, int(left/time.Millisecond)+1); err != nil && err != unix.EINTR {
			return Msg{}, fmt.Errorf("poll uffd: %w", err)
		}
	}
}

func (p *ProbeResult) probeLazy() error {
	u, err := Open(0)
	if err != nil {
		return err
	}
	defer u.Close()
	if _, err := u.API(FeatureThreadID); err != nil {
		return err
	}
	s, err := newScratch(1)
	if err != nil {
		return err
	}
	defer s.free()
	if _, err := u.Register(s.addr(), s.len(), ModeMissing); err != nil {
		return err
	}
	// Fault through a syscall (read(2) from a pipe into the missing page): the
	// faulting goroutine is then in a syscall, which the Go runtime copes with.
	var pfd [2]int
	if err := unix.Pipe2(pfd[:], unix.O_CLOEXEC); err != nil {
		return fmt.Errorf("pipe: %w", err)
	}
	defer unix.Close(pfd[0])
	defer unix.Close(pfd[1])
	if _, err := unix.Write(pfd[1], []byte("godwit")); err != nil {
		return fmt.Errorf("pipe write: %w", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := unix.Read(pfd[0], s.b[100:106])
		done <- err
	}()
	m, err := waitMsg(u, probeTimeout)
	if err != nil {
		u.Unregister(s.addr(), s.len()) // wakes the reader
		<-done
		return fmt.Errorf("page fault not delivered: %w", err)
	}
	if m.Event != EventPagefault || m.Address&^(PageSize-1) != s.addr() {
		u.Unregister(s.addr(), s.len())
		<-done
		return fmt.Errorf("expected a page fault at %#x, got %v", s.addr(), m)
	}
	page := bytes.Repeat([]byte{0xa5}, int(PageSize))
	if _, err := u.CopyBytes(s.addr(), page, 0); err != nil {
		u.Unregister(s.addr(), s.len())
		<-done
		return err
	}
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("read into the faulted page: %w", err)
		}
	case <-time.After(probeTimeout):
		u.Unregister(s.addr(), s.len())
		<-done
		return errors.New("faulting thread not woken by UFFDIO_COPY")
	}
	if string(s.b[100:106]) != "godwit" || s.b[0] != 0xa5 {
		return errors.New("page content wrong after serving the fault")
	}
	if p.noncoop != nil {
		return fmt.Errorf("non-cooperative events: %w", p.noncoop)
	}
	return nil
}

func (p *ProbeResult) probeDirty() error {
	const need = FeatureWPAsync | FeatureWPUnpopulated | FeaturePagefaultFlagWP
	if miss := need &^ p.Features; miss != 0 {
		return fmt.Errorf("kernel does not offer %s", FeatureNames(miss))
	}
	u, err := Open(0)
	if err != nil {
		return err
	}
	defer u.Close()
	if _, err := u.API(need); err != nil {
		return err
	}
	const pages = 8
	s, err := newScratch(pages)
	if err != nil {
		return err
	}
	defer s.free()
	for i := 0; i < pages; i += 2 { // half populated before tracking starts
		s.b[uint64(i)*PageSize] = 1
	}
	pm, err := OpenPagemap(0)
	if err != nil {
		return err
	}
	defer pm.Close()
	tr, err := NewTracker(u, pm)
	if err != nil {
		return err
	}
	if _, err := tr.Scan([]VMA{{Start: s.addr(), End: s.addr() + s.len()}}); err != nil {
		return err
	}
	vmas := []VMA{{Start: s.addr(), End: s.addr() + s.len()}}
	for round, set := range [][]int{{1, 4}, {0, 7}, {}} {
		for _, i := range set {
			s.b[uint64(i)*PageSize+3] = byte(round + 2)
		}
		res, err := tr.Scan(vmas)
		if err != nil {
			return fmt.Errorf("round %d: %w", round, err)
		}
		// The exact call the design relies on must work on its own too.
		if _, _, err := pm.ScanOnce(&ScanArgs{Start: s.addr(), End: s.addr() + s.len(),
			Flags: ScanWPMatching | ScanCheckWPAsync, CategoryMask: PageIsWritten, ReturnMask: PageIsWritten}, make([]Region, 16)); err != nil {
			return fmt.Errorf("round %d: PM_SCAN_WP_MATCHING|PM_SCAN_CHECK_WPASYNC: %w", round, err)
		}
		got := map[int]bool{}
		for _, r := range res.Written {
			for a := r.Start; a < r.End; a += PageSize {
				got[int((a-s.addr())/PageSize)] = true
			}
		}
		if len(got) != len(set) {
			return fmt.Errorf("round %d: wrote pages %v, PAGEMAP_SCAN reported %v", round, set, res.Written)
		}
		for _, i := range set {
			if !got[i] {
				return fmt.Errorf("round %d: wrote pages %v, PAGEMAP_SCAN reported %v", round, set, res.Written)
			}
		}
	}
	// CHECK_WPASYNC must refuse a mapping not registered in WP_ASYNC mode
	// (otherwise the kernel would silently skip it).
	other, err := newScratch(1)
	if err != nil {
		return err
	}
	defer other.free()
	other.b[0] = 1
	if _, _, err := pm.ScanOnce(&ScanArgs{Start: other.addr(), End: other.addr() + other.len(),
		Flags: ScanWPMatching | ScanCheckWPAsync, CategoryMask: PageIsWritten, ReturnMask: PageIsWritten}, make([]Region, 16)); !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("PM_SCAN_CHECK_WPASYNC on an unregistered mapping: got %v, want EPERM", err)
	}
	return tr.Stop()
}
