package restorer

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
	"godwit/internal/pagexfer"
	"godwit/internal/procfs"
)

// A shared anonymous object's pagemap holds its pages at their offsets
// in the object, whatever task maps each page (the dump reads the whole
// object). They are all written the same way, by one rule: through the
// object's shmem file, opened from the restorer via any mapping of it
// (map_files names the whole object, not only the part mapped there),
// each page at its object offset. A page only another task maps, or that
// no task maps now, is restored all the same, and no ptrace stop is
// needed.

// openShmem opens the object task pid maps at v for writing.
func openShmem(pid int, v *model.VMA) (*os.File, error) {
	f, err := os.OpenFile(procfs.Path(pid, fmt.Sprintf("map_files/%x-%x", v.Start, v.End)), os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open shared object %d: %w", v.Shmid, err)
	}
	return f, nil
}

// writeShmem writes every run of src (addresses are object offsets) to f
// at its offset and returns the pages written. A page past the object's
// end grows it, as the dumped object was that large.
func writeShmem(f *os.File, src pagexfer.Source) (uint64, error) {
	buf := make([]byte, fillBufSize)
	var pages uint64
	for {
		off, n, err := src.Next()
		if err == io.EOF {
			return pages, nil
		}
		if err != nil {
			return pages, err
		}
		size := n * pageSize
		if off%pageSize != 0 || size == 0 || off+size < off || off+size > 1<<62 {
			return pages, fmt.Errorf("shared pages %#x-%#x: not a page range of an object", off, off+size)
		}
		for done := uint64(0); done < size; {
			b := buf[:min(uint64(len(buf)), size-done)]
			if _, err := io.ReadFull(src, b); err != nil {
				if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
					err = fmt.Errorf("short page data at %#x", off+done)
				}
				return pages, fmt.Errorf("read shared pages %#x-%#x: %w", off, off+size, err)
			}
			if _, err := f.WriteAt(b, int64(off+done)); err != nil {
				return pages, fmt.Errorf("write shared pages at %#x: %w", off+done, err)
			}
			done += uint64(len(b))
		}
		pages += n
	}
}

// removeShmem frees the pages at offsets rs of the object: every mapping
// reads zero there after, as MADV_REMOVE would, and the size stays.
func removeShmem(f *os.File, rs [][2]uint64) error {
	for _, z := range rs {
		if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(z[0]), int64(z[1]-z[0])); err != nil {
			return fmt.Errorf("remove shared pages %#x-%#x: %w", z[0], z[1], err)
		}
	}
	return nil
}

// ownShmem lists the shared anonymous objects this task fills (the
// images' owner of each: ti.shmem), each with a VMA of it, in address
// order.
func (r *taskRun) ownShmem() []*model.VMA {
	var out []*model.VMA
	seen := map[uint64]bool{}
	for i := range r.img.mm.VMAs {
		v := &r.img.mm.VMAs[i]
		if !v.SharedAnon() || seen[v.Shmid] {
			continue
		}
		if _, ok := r.img.shmem[v.Shmid]; !ok {
			continue // another task's to fill
		}
		seen[v.Shmid] = true
		out = append(out, v)
	}
	return out
}

// shmemSource is every page the images hold for object id (through the
// parent images for an incremental dump).
func (r *taskRun) shmemSource(id uint64) pagexfer.Source {
	if c := r.img.shmChain[id]; c != nil {
		return c.Source()
	}
	return pagexfer.NewImageSource(r.img.shmem[id])
}

// fillShmemObject writes the sources into the object this task maps at
// v, after removing rm.
func (r *taskRun) fillShmemObject(v *model.VMA, rm [][2]uint64, srcs ...pagexfer.Source) error {
	f, err := openShmem(r.img.pid, v)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := removeShmem(f, rm); err != nil {
		return fmt.Errorf("shared object %d: %w", v.Shmid, err)
	}
	for _, src := range srcs {
		n, err := writeShmem(f, src)
		r.pagesRestored += n
		if err != nil {
			return fmt.Errorf("fill shared object %d: %w", v.Shmid, err)
		}
	}
	return nil
}
