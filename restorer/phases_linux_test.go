package restorer

import (
	"bytes"
	"io"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"godwit/internal/ptrace"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/images"
	"godwit/internal/pagexfer"
	"godwit/internal/testutil"
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
			w := startWorkload(t, log, "tick 3", testutil.CounterBin(t, false), "-t", "3", "-m", "4", log)
			imgs := filepath.Join(dir, "img")
			dump(t, w.Pid, imgs, nil)
			w.Reaped(t)
			n := ticks(t, log)

			o := Options{}
			o.ImagesDir = imgs
			o.PageMethod = m
			r, err := New(o, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if !r.waited {
					r.Abort()
				}
			})
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
				rs, err := r.tr.GetRseqConfig(th.Tid)
				if err != nil {
					t.Fatal(err)
				}
				if re := th.Rseq; rs.AbiPointer != re.Pointer || rs.Signature != re.Signature {
					t.Errorf("thread %d: rseq %+v, image %v", th.Tid, rs, re)
				}
				var head, size uint64
				if _, _, e := unix.Syscall(unix.SYS_GET_ROBUST_LIST, uintptr(th.Tid),
					uintptr(unsafe.Pointer(&head)), uintptr(unsafe.Pointer(&size))); e != 0 {
					t.Fatal(e)
				}
				if head != th.RobustList || size != th.RobustLen {
					t.Errorf("thread %d: robust list %#x/%d, image %#x/%d", th.Tid, head, size, th.RobustList, th.RobustLen)
				}
				regs, err := r.tr.GetRegs(th.Tid)
				if err != nil {
					t.Fatal(err)
				}
				want := th.Regs
				if regs.Rip != want.Rip || regs.Rsp != want.Rsp || regs.Fs_base != want.Fs_base || regs.Orig_rax != want.Orig_rax {
					t.Errorf("thread %d: regs rip %#x sp %#x fs %#x orig %d, image %#x %#x %#x %d", th.Tid,
						regs.Rip, regs.Rsp, regs.Fs_base, int64(regs.Orig_rax), want.Rip, want.Rsp, want.Fs_base, int64(want.Orig_rax))
				}
			}
			if err := r.Resume(); err != nil {
				t.Fatal(err)
			}
			if pages, _ := r.Stats(); pages == 0 {
				t.Fatal("no pages counted")
			}
			waitTicks(t, log, n+2)
			finish(t, r, log)
			d, _ := images.Open(imgs, false)
			defer d.Close()
			if st, err := images.ReadStats(d, images.StatsRestore); err != nil || st.GetRestore().GetPagesRestored() == 0 {
				t.Errorf("stats-restore: %v, %v", st, err)
			}
			// Debian's crit is the oracle of the format.
			out, err := exec.Command("crit", "show", filepath.Join(imgs, images.StatsRestore)).CombinedOutput()
			if err != nil || !bytes.Contains(out, []byte("pages_restored")) {
				t.Errorf("crit show stats-restore: %v\n%s", err, out)
			}
		})
	}
}

// TestRestoreNanosleep: a task dumped inside nanosleep (-ERESTART_RESTARTBLOCK,
// whose restart block the new task does not have) gets its syscall re-run
// by the kernel (rax = -ERESTARTNOHAND) and completes normally.
func TestRestoreNanosleep(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	// coreutils sleep: a relative nanosleep (absolute sleeps, like
	// Python's, come back with ERESTARTNOHAND instead).
	w := startWorkload(t, filepath.Join(dir, "none"), "", "/bin/sleep", "1.5")
	time.Sleep(200 * time.Millisecond)
	imgs := filepath.Join(dir, "img")
	dump(t, w.Pid, imgs, nil)
	w.Reaped(t)
	o := Options{}
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
	img := r.img.leader().Regs
	if ptrace.Restart(&img) != ptrace.RestartBlock {
		t.Fatalf("dumped regs: orig_rax %d rax %d, want a sleep interrupted with ERESTART_RESTARTBLOCK",
			int64(img.Orig_rax), int64(img.Rax))
	}
	if err := r.Layout(); err != nil {
		t.Fatal(err)
	}
	if err := r.FillPages(pagexfer.NewImageSource(r.img.pages)); err != nil {
		t.Fatal(err)
	}
	if err := r.Finalize(); err != nil {
		t.Fatal(err)
	}
	regs, err := r.tr.GetRegs(r.PID())
	if err != nil {
		t.Fatal(err)
	}
	if regs.Orig_rax != img.Orig_rax || int64(regs.Rax) != -ptrace.ERESTARTNOHAND {
		t.Fatalf("restored regs: orig_rax %d rax %d", int64(regs.Orig_rax), int64(regs.Rax))
	}
	if err := r.Resume(); err != nil {
		t.Fatal(err)
	}
	code, err := r.Wait()
	if err != nil || code != 0 {
		t.Fatalf("exit %d, %v", code, err)
	}
}
