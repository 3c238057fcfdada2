package uffd

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// runLoop serves u in a goroutine until the test ends.
func runLoop(t *testing.T, u *Uffd, h Handler) {
	t.Helper()
	l, err := NewLoop(u, 16)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- l.Run(h) }()
	t.Cleanup(func() {
		l.Stop()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("loop: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("loop did not stop")
		}
		l.Close()
	})
}

func mapPages(t *testing.T, n int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, n*int(PageSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

func addrOf(b []byte) uint64 { return uint64(uintptr(unsafe.Pointer(&b[0]))) }

// Faults of this process, served from another goroutine. The faults are
// taken inside read(2) (copy_to_user into the missing page), so the faulting
// goroutine is in a syscall and the Go scheduler is unaffected.
func TestFaultsFromGoroutine(t *testing.T) {
	needRoot(t)
	u, err := Open(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	if _, err := u.API(FeatureThreadID); err != nil {
		t.Fatal(err)
	}
	const n = 16
	mem := mapPages(t, n)
	base := addrOf(mem)
	if _, err := u.Register(base, n*PageSize, ModeMissing); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	faults := map[uint64]uint32{}
	page := make([]byte, PageSize)
	runLoop(t, u, func(msgs []Msg) error {
		for _, m := range msgs {
			if m.Event != EventPagefault {
				return fmt.Errorf("unexpected %v", m)
			}
			pa := m.Address &^ (PageSize - 1)
			for i := range page {
				page[i] = byte((pa - base) / PageSize)
			}
			mu.Lock()
			faults[pa] = m.TID
			mu.Unlock()
			if _, err := u.CopyBytes(pa, page, 0); err != nil && !errors.Is(err, ErrExist) {
				return err
			}
		}
		return nil
	})
	zero, err := os.Open("/dev/zero")
	if err != nil {
		t.Fatal(err)
	}
	defer zero.Close()
	// Each read zeroes 8 bytes in the middle of a page: the fault is served
	// first (page filled with its index), then the read overwrites 8 bytes.
	for i := 0; i < n; i += 3 {
		if _, err := zero.Read(mem[i*int(PageSize)+100 : i*int(PageSize)+108]); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < n; i++ {
		pa := base + uint64(i)*PageSize
		mu.Lock()
		tid, faulted := faults[pa]
		mu.Unlock()
		if faulted != (i%3 == 0) {
			t.Errorf("page %d: faulted=%v", i, faulted)
		}
		if !faulted {
			continue
		}
		if tid == 0 {
			t.Errorf("page %d: fault without thread id", i)
		}
		p := mem[i*int(PageSize) : (i+1)*int(PageSize)]
		if p[0] != byte(i) || p[PageSize-1] != byte(i) || !bytes.Equal(p[100:108], make([]byte, 8)) {
			t.Errorf("page %d: content %d %d %v", i, p[0], p[PageSize-1], p[100:108])
		}
	}
}

// Faults of another process, its uffd passed over SCM_RIGHTS, served by the
// loop with 4 KiB copies.
func TestFaultsFromProcess(t *testing.T) {
	needRoot(t)
	c := startChild(t, true)
	u := c.remoteUffd()
	if _, err := u.API(FeatureThreadID); err != nil {
		t.Fatal(err)
	}
	const n = 64
	base := c.doHex("map %d", n)
	if _, err := u.Register(base, n*PageSize, ModeMissing); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	tids := map[uint32]bool{}
	served := 0
	page := make([]byte, PageSize)
	runLoop(t, u, func(msgs []Msg) error {
		for _, m := range msgs {
			if m.Event != EventPagefault {
				return fmt.Errorf("unexpected %v", m)
			}
			pa := m.Address &^ (PageSize - 1)
			page[0] = byte((pa-base)/PageSize + 1)
			// Count before serving: the copy lets the child run on.
			mu.Lock()
			tids[m.TID] = true
			served++
			mu.Unlock()
			if _, err := u.CopyBytes(pa, page, 0); err != nil && !errors.Is(err, ErrExist) {
				return err
			}
		}
		return nil
	})
	got := c.doInt("sum %x %d", base, n)
	want := uint64(n * (n + 1) / 2)
	if got != want {
		t.Fatalf("child read sum %d, want %d", got, want)
	}
	mu.Lock()
	defer mu.Unlock()
	if served != n {
		t.Errorf("served %d faults, want %d", served, n)
	}
	if !tids[uint32(c.pid())] {
		t.Errorf("fault thread ids %v do not include the child %d", tids, c.pid())
	}
}

// Every non-cooperative event, provoked for real in another process whose
// uffd was taken with pidfd_getfd.
func TestEvents(t *testing.T) {
	needRoot(t)
	c := startChild(t, false)
	u := c.remoteUffd()
	if _, err := u.API(FeatureNonCoop | FeatureThreadID); err != nil {
		t.Fatal(err)
	}
	ps := PageSize
	base := c.doHex("map %d", 8)
	dst := c.doHex("map %d", 2)
	if _, err := u.Register(base, 8*ps, ModeMissing); err != nil {
		t.Fatal(err)
	}
	events := make(chan Msg, 64)
	runLoop(t, u, func(msgs []Msg) error {
		for _, m := range msgs {
			if m.Event == EventPagefault {
				if _, err := u.Zeropage(m.Address&^(ps-1), ps, 0); err != nil && !errors.Is(err, ErrExist) {
					return err
				}
				continue
			}
			events <- m
		}
		return nil
	})
	expect := func(what string, want Msg) {
		t.Helper()
		for {
			select {
			case m := <-events:
				if m == want {
					return
				}
				if m.Event == EventFork {
					unix.Close(m.UFD)
				}
				t.Logf("%s: also got %v", what, m)
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: no %v", what, want)
			}
		}
	}
	if r := c.do("fill %x %d", base, 8); r != "ok" {
		t.Fatal(r)
	}
	if r := c.do("dontneed %x %x", base, ps); r != "0" {
		t.Fatal(r)
	}
	expect("madvise(DONTNEED)", Msg{Event: EventRemove, Start: base, End: base + ps, UFD: -1})
	if r := c.do("mremap %x %x %x", base+6*ps, 2*ps, dst); r != "0" {
		t.Fatal(r)
	}
	expect("mremap", Msg{Event: EventRemap, From: base + 6*ps, To: dst, Len: 2 * ps, UFD: -1})
	if r := c.do("munmap %x %x", base+2*ps, ps); r != "0" {
		t.Fatal(r)
	}
	expect("munmap", Msg{Event: EventUnmap, Start: base + 2*ps, End: base + 3*ps, UFD: -1})

	c.send("fork")
	var fork Msg
	select {
	case fork = <-events:
	case <-time.After(10 * time.Second):
		t.Fatal("fork: no event")
	}
	if fork.Event != EventFork || fork.UFD < 0 {
		t.Fatalf("fork: got %v", fork)
	}
	defer unix.Close(fork.UFD)
	link, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fork.UFD))
	if err != nil || !strings.Contains(link, "userfaultfd") {
		t.Fatalf("fork event fd %d is %q (%v), not a userfaultfd", fork.UFD, link, err)
	}
	if pid := c.doInt(""); pid == 0 {
		t.Fatal("fork failed in child")
	}
}

// UFFDIO_* ioctls other than plain COPY, on this process's memory.
func TestIoctls(t *testing.T) {
	needRoot(t)
	u, err := Open(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	want := uint64(FeaturePagefaultFlagWP | FeatureMove | FeaturePoison | FeatureMinorShmem | FeatureWPUnpopulated)
	if got, err := u.API(want); err != nil || got&want != want {
		t.Fatalf("API: %s, %v", FeatureNames(got), err)
	}
	ps := PageSize
	mem := mapPages(t, 8)
	base := addrOf(mem)
	ioctls, err := u.Register(base, 8*ps, ModeMissing|ModeWP)
	if err != nil {
		t.Fatal(err)
	}
	for _, bit := range []int{IoctlCopy, IoctlZeropage, IoctlWake, IoctlWriteProtect, IoctlMove, IoctlPoison} {
		if ioctls&(1<<bit) == 0 {
			t.Errorf("register: ioctl bit %d not offered (%#x)", bit, ioctls)
		}
	}
	src := bytes.Repeat([]byte{7}, int(PageSize))
	// COPY with WP and DONTWAKE, then WAKE (no waiter: must still succeed).
	if n, err := u.CopyBytes(base, src, CopyModeWP|CopyModeDontWake); err != nil || n != ps {
		t.Fatalf("copy wp: %d %v", n, err)
	}
	if err := u.Wake(base, ps); err != nil {
		t.Fatal(err)
	}
	// A write to the WP page must now fault with the WP flag; serve by
	// un-protecting. The write is done by read(2) from /dev/zero.
	errc := make(chan error, 1)
	go func() {
		z, err := os.Open("/dev/zero")
		if err == nil {
			_, err = z.Read(mem[10:12])
			z.Close()
		}
		errc <- err
	}()
	m, err := waitMsg(u, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if m.Event != EventPagefault || m.Flags&PagefaultFlagWP == 0 || m.Flags&PagefaultFlagWrite == 0 || m.Address&^(ps-1) != base {
		t.Fatalf("want WP write fault at %#x, got %v", base, m)
	}
	if err := u.WriteProtect(base, ps, false, false); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if mem[9] != 7 || mem[10] != 0 || mem[12] != 7 {
		t.Fatalf("after WP fault: %v", mem[8:14])
	}
	// EEXIST on a present page; ZEROPAGE.
	if _, err := u.CopyBytes(base, src, 0); !errors.Is(err, ErrExist) {
		t.Fatalf("copy over present page: %v", err)
	}
	if n, err := u.Zeropage(base+ps, ps, 0); err != nil || n != ps {
		t.Fatalf("zeropage: %d %v", n, err)
	}
	// MOVE page 0 to page 2 (inside the registered range, page 2 missing).
	if n, err := u.Move(base+2*ps, base, ps, 0); err != nil || n != ps {
		t.Fatalf("move: %d %v", n, err)
	}
	if mem[2*ps] != 7 || mem[2*ps+10] != 0 {
		t.Fatalf("moved page content %v", mem[2*ps:2*ps+12])
	}
	// POISON page 3: reading it with read(2)/write(2) must fail (EFAULT), not
	// crash us.
	if n, err := u.Poison(base+3*ps, ps, 0); err != nil || n != ps {
		t.Fatalf("poison: %d %v", n, err)
	}
	pfd := make([]int, 2)
	if err := unix.Pipe(pfd); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pfd[0])
	defer unix.Close(pfd[1])
	if _, err := unix.Write(pfd[1], mem[3*ps:3*ps+8]); err != unix.EFAULT {
		t.Fatalf("write from poisoned page: %v, want EFAULT", err)
	}
	// Batched copy over 4..7 with page 5 already present: the present page
	// is skipped, the other three are filled.
	if _, err := u.CopyBytes(base+5*ps, src, 0); err != nil {
		t.Fatal(err)
	}
	block := bytes.Repeat([]byte{9}, int(4*ps))
	if n, err := u.CopySkipExisting(base+4*ps, unsafe.Pointer(&block[0]), 4*ps, 0); err != nil || n != 3*ps {
		t.Fatalf("copy skipping existing: %d %v", n, err)
	}
	if mem[4*ps] != 9 || mem[5*ps] != 7 || mem[6*ps] != 9 || mem[7*ps] != 9 {
		t.Fatalf("after skipping copy: %d %d %d %d", mem[4*ps], mem[5*ps], mem[6*ps], mem[7*ps])
	}
	if err := u.Unregister(base, 8*ps); err != nil {
		t.Fatal(err)
	}
	// The range is no longer ours: the kernel says ENOENT, IsGone says so.
	if _, err := u.Zeropage(base, ps, 0); !IsGone(err) {
		t.Fatalf("zeropage on an unregistered range: %v, want ENOENT", err)
	}

	// CONTINUE: a memfd mapped twice; MINOR-register one view, fill the page
	// cache through the other, then CONTINUE maps it.
	mfd, err := unix.MemfdCreate("uffd-minor", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(mfd)
	if err := unix.Ftruncate(mfd, int64(2*ps)); err != nil {
		t.Fatal(err)
	}
	view, err := unix.Mmap(mfd, 0, int(2*ps), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(view)
	fill, err := unix.Mmap(mfd, 0, int(2*ps), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(fill)
	if _, err := u.Register(addrOf(view), 2*ps, ModeMinor); err != nil {
		t.Fatal(err)
	}
	fill[5] = 0x42
	if n, err := u.Continue(addrOf(view), ps, 0); err != nil || n != ps {
		t.Fatalf("continue: %d %v", n, err)
	}
	if view[5] != 0x42 {
		t.Fatalf("continue: view sees %#x", view[5])
	}
	if err := u.Unregister(addrOf(view), 2*ps); err != nil {
		t.Fatal(err)
	}
}

// Stop ends Run promptly whether or not it is waiting, and Run cannot be
// started twice.
func TestLoopStop(t *testing.T) {
	needRoot(t)
	u, err := Open(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	if _, err := u.API(0); err != nil {
		t.Fatal(err)
	}
	l, err := NewLoop(u, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// Two Runs at once: whichever comes second is refused at once, the
	// other waits until Stop.
	done := make(chan error, 2)
	for i := 0; i < 2; i++ {
		go func() { done <- l.Run(func([]Msg) error { return nil }) }()
	}
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a Run returned without Stop")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("second concurrent Run was not refused")
	}
	if err := l.Stop(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after Stop")
	}
}

// /dev/userfaultfd gives a working userfaultfd too.
func TestOpenDev(t *testing.T) {
	needRoot(t)
	u, err := OpenDev(0)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if _, err := u.API(FeatureThreadID); err != nil {
		t.Fatal(err)
	}
	mem := mapPages(t, 1)
	if _, err := u.Register(addrOf(mem), PageSize, ModeMissing); err != nil {
		t.Fatal(err)
	}
	if _, err := u.CopyBytes(addrOf(mem), bytes.Repeat([]byte{3}, int(PageSize)), 0); err != nil {
		t.Fatal(err)
	}
	if mem[100] != 3 {
		t.Fatalf("page content %d", mem[100])
	}
	if err := u.Unregister(addrOf(mem), PageSize); err != nil {
		t.Fatal(err)
	}
}
