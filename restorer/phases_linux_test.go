package restorer

import (
	"bytes"
	"io"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/images"
	"godwit/internal/opts"
)

// listSource serves fixed runs, in the given order, with data from fn.
type listSource struct {
	runs [][2]uint64 // vaddr, pages
	i    int
	data func(vaddr uint64, p []byte) error
	at   uint64
	left uint64
}

func (s *listSource) Next() (uint64, uint64, error) {
	if s.i >= len(s.runs) {
		return 0, 0, io.EOF
	}
	r := s.runs[s.i]
	s.i++
	s.at, s.left = r[0], r[1]*pageSize
	return r[0], r[1], nil
}

func (s *listSource) Read(p []byte) (int, error) {
	if s.left == 0 {
		return 0, io.EOF
	}
	p = p[:min(uint64(len(p)), s.left)]
	if err := s.data(s.at, p); err != nil {
		return 0, err
	}
	s.at += uint64(len(p))
	s.left -= uint64(len(p))
	return len(p), nil
}

// TestRestorePhases drives the phases one by one, with each page method:
// pages are filled twice, garbage first, then the real data in reverse
// order, from a source that is not the image reader; before Resume the
// per-thread state is compared with the images.
func TestRestorePhases(t *testing.T) {
	needRoot(t)
	for _, m := range []PageMethod{PagesPreadv, PagesVMWritev, PagesProcMem} {
		t.Run(m.String(), func(t *testing.T) {
			dir := t.TempDir()
			log := filepath.Join(dir, "log")
			w := startWorkload(t, log, "tick 3", counterBin(t, false), "-t", "3", "-m", "4", log)
			imgs := filepath.Join(dir, "img")
			dump(t, w.pid, imgs, nil)
			w.reaped(t)
			n := ticks(t, log)

			o := opts.New()
			o.ImagesDir = imgs
			r, err := New(o, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if !r.waited {
					r.Abort()
				}
			})
			r.PageMethod = m
			if err := r.Layout(); err != nil {
				t.Fatal(err)
			}
			var runs [][2]uint64
			for p := range r.img.pages.Ranges() {
				if p.Present() {
					runs = append([][2]uint64{{p.Vaddr, p.NrPages}}, runs...) // reversed
				}
			}
			garbage := &listSource{runs: runs, data: func(_ uint64, p []byte) error {
				copy(p, bytes.Repeat([]byte{0xa5}, len(p)))
				return nil
			}}
			if err := r.FillPages(garbage); err != nil {
				t.Fatal(err)
			}
			real := &listSource{runs: runs, data: func(va uint64, p []byte) error {
				_, err := r.img.pages.ReadAt(p, va)
				return err
			}}
			if err := r.FillPages(real); err != nil {
				t.Fatal(err)
			}
			if err := r.Finalize(); err != nil {
				t.Fatal(err)
			}
			for _, th := range r.img.threads {
				tc := th.core.GetThreadCore()
				rs, err := r.tr.GetRseqConfig(th.tid)
				if err != nil {
					t.Fatal(err)
				}
				if re := tc.GetRseqEntry(); rs.AbiPointer != re.GetRseqAbiPointer() || rs.Signature != re.GetSignature() {
					t.Errorf("thread %d: rseq %+v, image %v", th.tid, rs, re)
				}
				var head, size uint64
				if _, _, e := unix.Syscall(unix.SYS_GET_ROBUST_LIST, uintptr(th.tid),
					uintptr(unsafe.Pointer(&head)), uintptr(unsafe.Pointer(&size))); e != 0 {
					t.Fatal(e)
				}
				if head != tc.GetFutexRla() || size != uint64(tc.GetFutexRlaLen()) {
					t.Errorf("thread %d: robust list %#x/%d, image %#x/%d", th.tid, head, size, tc.GetFutexRla(), tc.GetFutexRlaLen())
				}
				regs, err := r.tr.GetRegs(th.tid)
				if err != nil {
					t.Fatal(err)
				}
				want := gpRegs(th.core.GetThreadInfo().GetGpregs())
				if regs.Rip != want.Rip || regs.Rsp != want.Rsp || regs.Fs_base != want.Fs_base || regs.Orig_rax != want.Orig_rax {
					t.Errorf("thread %d: regs rip %#x sp %#x fs %#x orig %d, image %#x %#x %#x %d", th.tid,
						regs.Rip, regs.Rsp, regs.Fs_base, int64(regs.Orig_rax), want.Rip, want.Rsp, want.Fs_base, int64(want.Orig_rax))
				}
			}
			if err := r.Resume(); err != nil {
				t.Fatal(err)
			}
			if r.pagesRestored == 0 {
				t.Fatal("no pages counted")
			}
			waitTicks(t, log, n+2)
			finish(t, r, log)
			d, _ := images.Open(imgs, false)
			defer d.Close()
			if st, err := images.ReadStats(d, images.StatsRestore); err != nil || st.GetRestore().GetPagesRestored() == 0 {
				t.Errorf("stats-restore: %v, %v", st, err)
			}
		})
	}
}
