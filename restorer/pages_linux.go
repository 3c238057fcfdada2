package restorer

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"godwit/internal/images"
	"godwit/internal/pagexfer"
	"godwit/internal/ptrace"
)

// PageMethod is how page data gets into the task.
type PageMethod int

const (
	// PagesPreadv has the task itself read the pages file: an injected
	// preadv with up to 1024 iovecs per call, straight from the page
	// cache into its memory (one copy, no buffer in godwit). Sources
	// that are not files fall back to PagesVMWritev. The zero value: the
	// fastest measured here (BenchmarkRestore1GiB).
	PagesPreadv PageMethod = iota
	// PagesVMWritev reads data into a bounded buffer of godwit and
	// process_vm_writev's it into the task (two copies).
	PagesVMWritev
	// PagesProcMem writes through /proc/PID/mem from the buffer.
	PagesProcMem
)

func (m PageMethod) String() string {
	switch m {
	case PagesVMWritev:
		return "process_vm_writev"
	case PagesPreadv:
		return "injected preadv"
	case PagesProcMem:
		return "/proc/PID/mem"
	}
	return "method " + strconv.Itoa(int(m))
}

// DefaultPageMethod is the zero PageMethod.
const DefaultPageMethod = PagesPreadv

// fillBufSize bounds godwit's own buffer for page data.
const fillBufSize = 1 << 20

// maxRun caps one iovec: the kernel transfers at most MAX_RW_COUNT
// (2 GiB - 4 KiB) per call.
const maxRun = 1 << 30

// run is one stretch of pages to write.
type run struct {
	vaddr, size uint64
}

// FillPages writes every run of src into the laid-out root task. It may be
// called any number of times, with runs in any order; pages not written
// stay zero (fresh anonymous memory), and a page written twice keeps the
// last data.
func (r *Restorer) FillPages(src pagexfer.Source) error {
	if err := r.need(phaseLaidOut, "fill pages"); err != nil {
		return err
	}
	if err := r.root.fillPages(src); err != nil {
		return r.fail("fill pages", err)
	}
	return nil
}

// smallFillPages is the most pages of a task's images that are written
// from godwit (process_vm_writev) whatever the page method: the task's
// own preadv costs five ptrace stops (session, open, read, close), each a
// trip through the scheduler, dearer than copying a MiB twice.
const smallFillPages = 256

// smallFill reports a task whose images hold at most smallFillPages
// pages to fill, and no pages file method other than the preadv default
// was asked for.
func (r *taskRun) smallFill() bool {
	if r.o.PageMethod != PagesPreadv || r.img.pages == nil {
		return false
	}
	n := uint64(0)
	for e := range r.img.pages.Ranges() {
		if e.Flags&(images.PagePresent|images.PageInParent) != 0 {
			if n += e.NrPages; n > smallFillPages {
				return false
			}
		}
	}
	return true
}

// fillPages writes every run of src into this task.
func (r *taskRun) fillPages(src pagexfer.Source) error {
	if fr, ok := src.(pagexfer.FileRuns); ok && r.o.PageMethod == PagesPreadv {
		return r.fillPreadv(src, fr, r.checkRun)
	}
	return r.fillBuffered(src, r.checkRun)
}

// checkRun refuses runs outside the task's private VMAs.
func (r *taskRun) checkRun(vaddr, size uint64) (uint64, error) {
	if vaddr%pageSize != 0 || size == 0 || vaddr+size < vaddr || !coveredPrivate(r.img.mm.VMAs, vaddr, vaddr+size) {
		return 0, fmt.Errorf("pages %#x-%#x: not inside the private VMAs of the task", vaddr, vaddr+size)
	}
	return vaddr, nil
}

// fillBuffered copies through a bounded buffer with process_vm_writev or
// /proc/PID/mem. place maps a run to the task address it goes to.
func (r *taskRun) fillBuffered(src pagexfer.Source, place func(vaddr, size uint64) (uint64, error)) error {
	pid := r.img.pid
	write := func(addr uint64, b []byte) error { return ptrace.WriteMem(pid, addr, b) }
	if r.o.PageMethod == PagesProcMem {
		f, err := os.OpenFile("/proc/"+strconv.Itoa(pid)+"/mem", os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		write = func(addr uint64, b []byte) error {
			_, err := f.WriteAt(b, int64(addr))
			return err
		}
	}
	buf := make([]byte, fillBufSize)
	for {
		vaddr, n, err := src.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		size := n * pageSize
		addr, err := place(vaddr, size)
		if err != nil {
			return err
		}
		if r.o.PageMethod != PagesProcMem { // /proc/PID/mem writes through any protection
			if err := r.ensureWritable(nil, addr, size); err != nil {
				return err
			}
		}
		for done := uint64(0); done < size; {
			b := buf[:min(uint64(len(buf)), size-done)]
			if _, err := io.ReadFull(src, b); err != nil {
				if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
					err = fmt.Errorf("short page data at %#x", vaddr+done)
				}
				return fmt.Errorf("read pages %#x-%#x: %w", vaddr, vaddr+size, err)
			}
			if err := write(addr+done, b); err != nil {
				return fmt.Errorf("write pages at %#x: %w", addr+done, err)
			}
			done += uint64(len(b))
		}
		r.pagesRestored += n
	}
}

// iovMax is IOV_MAX: the most iovecs one preadv takes.
const iovMax = 1024

// fillPreadv has the task read its pages from the source's file.
func (r *taskRun) fillPreadv(src pagexfer.Source, fr pagexfer.FileRuns, place func(vaddr, size uint64) (uint64, error)) error {
	s, err := r.begin(r.img.pid)
	if err != nil {
		return err
	}
	return s.End(r.preadvAll(s, src, fr, place))
}

func (r *taskRun) preadvAll(s *session, src pagexfer.Source, fr pagexfer.FileRuns, place func(vaddr, size uint64) (uint64, error)) error {
	type fileRun struct {
		run
		off int64
	}
	var batch []fileRun
	var file *os.File
	var tfd uint64
	opened := false
	defer func() {
		if opened {
			s.Call("close pages file", unix.SYS_CLOSE, tfd)
		}
	}()
	flush := func() error {
		for len(batch) > 0 {
			iov := make([]byte, 0, 16*len(batch))
			var total uint64
			for _, b := range batch {
				iov = le64(le64(iov, b.vaddr), b.size)
				total += b.size
			}
			a, err := s.Put(pageSize, iov)
			if err != nil {
				return err
			}
			got, err := s.Call(fmt.Sprintf("preadv %d runs at %#x", len(batch), batch[0].vaddr),
				unix.SYS_PREADV, tfd, a, uint64(len(batch)), uint64(batch[0].off), 0)
			if err != nil {
				return err
			}
			if got == 0 {
				return fmt.Errorf("pages file ends at %d: truncated", batch[0].off)
			}
			// Drop what was read (a short read stops anywhere).
			for got > 0 && len(batch) > 0 {
				b := &batch[0]
				if got >= b.size {
					got -= b.size
					r.pagesRestored += b.size / pageSize
					batch = batch[1:]
					continue
				}
				b.vaddr += got
				b.size -= got
				b.off += int64(got)
				r.pagesRestored += got / pageSize
				got = 0
			}
		}
		return nil
	}
	for {
		vaddr, n, err := src.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		size := n * pageSize
		addr, err := place(vaddr, size)
		if err != nil {
			return err
		}
		if err := r.ensureWritable(s, addr, size); err != nil {
			return err
		}
		f, off := fr.RunFile()
		if f == nil {
			return fmt.Errorf("pages %#x: source has no file", vaddr)
		}
		if !opened || f != file {
			if err := flush(); err != nil {
				return err
			}
			if opened {
				s.Call("close pages file", unix.SYS_CLOSE, tfd)
				opened = false
			}
			// The task opens our descriptor's file through /proc:
			// works for any file we hold, whatever its path.
			path := fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), f.Fd())
			if tfd, err = s.Openat("fill pages", path, unix.O_RDONLY|unix.O_CLOEXEC); err != nil {
				return err
			}
			file, opened = f, true
		}
		for size > 0 {
			c := min(size, maxRun)
			if len(batch) > 0 {
				last := batch[len(batch)-1]
				if last.off+int64(last.size) != off || len(batch) == iovMax {
					if err := flush(); err != nil {
						return err
					}
				}
			}
			batch = append(batch, fileRun{run{addr, c}, off})
			addr += c
			off += int64(c)
			size -= c
		}
	}
	return flush()
}

// fillShmem writes the pages of the shared anonymous objects this task
// makes, whose pagemap addresses are offsets in the object: all of them,
// through the object's file (shmem_linux.go), whatever task maps each.
func (r *taskRun) fillShmem() error { return r.fillShmemBut(nil) }

// fillShmemBut is fillShmem but for the objects in skip.
func (r *taskRun) fillShmemBut(skip map[uint64]bool) error {
	for _, v := range r.ownShmem() {
		if skip[v.Shmid] || r.img.shmem[v.Shmid] == nil {
			continue // never written to: zero pages
		}
		if err := r.fillShmemObject(v, nil, r.shmemSource(v.Shmid)); err != nil {
			return err
		}
	}
	return nil
}

// imageSource is the task's private pages from the images: through the
// parent images for an incremental dump.
func (ti *taskImages) imageSource() pagexfer.Source {
	if ti.chain != nil {
		return ti.chain.Source()
	}
	return pagexfer.NewImageSource(ti.pages)
}

// dedupRestored punches the pages the restore consumed out of the
// images (--auto-dedup): they are in the tasks now. The images are read
// again: the restore's readers are closed by now.
func (r *Restorer) dedupRestored() error {
	d, err := images.Open(r.o.ImagesDir, false)
	if err != nil {
		return err
	}
	defer d.Close()
	for _, t := range r.img.tasks {
		name := images.PagemapImg(t.pid)
		if !d.Exists(name) {
			continue
		}
		if err := punchChain(d, name); err != nil {
			return err
		}
	}
	return nil
}

func punchChain(d *images.Dir, name string) error {
	top, err := images.OpenPages(d, name)
	if err != nil {
		return err
	}
	defer top.Close()
	c, err := pagexfer.OpenChain(d, name, top)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.PunchResolved()
}
