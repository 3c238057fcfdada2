package testutil

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The physical floors the engine's benchmarks are compared with: the
// cheapest ways this kernel offers to do the same copy. Each floor is
// the faster of the candidates measured in one call, so a benchmark whose
// ratio to it drops below 1.0 has found a cheaper way than every
// candidate here, and that way belongs in this file.

const floorChunk = 1 << 20

// DumpFloor copies the memory [start, end) of process pid into a new file
// in dir, and as much memory of v's, by the two cheapest ways the kernel
// allows, and returns the faster time and which way it was:
//   - "readv+write": process_vm_readv from pid in 1 MiB chunks into two
//     cache-hot buffers, one written to the file while the other is read
//     (the second copy stays in cache; both cores work);
//   - "vmsplice+splice": v, the owner of as much written private anonymous
//     memory, vmsplices it into a pipe, and the pipe is spliced into the
//     file: one copy, which is godwit's injected-vmsplice path without the
//     injection (a third party cannot vmsplice another's memory, so v
//     owns a copy of its own). Skipped when v is nil.
//
// The files are removed again; dir should be on the same filesystem as
// the images (tmpfs in the benchmarks).
func DumpFloor(pid int, start, end uint64, v *Vmsplicer, dir string) (time.Duration, string, error) {
	size := end - start
	rd, err := floorReadvWrite(pid, start, size, dir)
	if err != nil {
		return 0, "", fmt.Errorf("readv+write floor: %w", err)
	}
	if v == nil {
		return rd, "readv+write", nil
	}
	vs, err := floorVmsplice(v, dir)
	if err != nil {
		return 0, "", fmt.Errorf("vmsplice floor: %w", err)
	}
	if vs < rd {
		return vs, "vmsplice+splice", nil
	}
	return rd, "readv+write", nil
}

func floorReadvWrite(pid int, start, size uint64, dir string) (time.Duration, error) {
	f, err := os.CreateTemp(dir, "floor-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	// Two buffers: one is read into while the other is written out, as
	// both cores allow (and as godwit's own readv transfer does).
	bufs := [2][]byte{make([]byte, floorChunk), make([]byte, floorChunk)}
	type chunk struct {
		b []byte
		n int
	}
	full := make(chan chunk, 1)
	free := make(chan []byte, 2)
	free <- bufs[0]
	free <- bufs[1]
	werr := make(chan error, 1)
	go func() {
		var err error
		for c := range full {
			if err == nil {
				_, err = f.Write(c.b[:c.n])
			}
			free <- c.b
		}
		werr <- err
	}()
	t0 := time.Now()
	var rerr error
	for off := uint64(0); off < size && rerr == nil; off += floorChunk {
		n := min(floorChunk, size-off)
		b := <-free
		local := []unix.Iovec{{Base: &b[0]}}
		local[0].SetLen(int(n))
		remote := []unix.RemoteIovec{{Base: uintptr(start + off), Len: int(n)}}
		got, err := unix.ProcessVMReadv(pid, local, remote, 0)
		if err != nil {
			rerr = err
			free <- b
			break
		}
		full <- chunk{b, got}
	}
	close(full)
	if err := <-werr; rerr == nil {
		rerr = err
	}
	return time.Since(t0), rerr
}

// Vmsplicer is a process (vmsplicer.c) that owns written private
// anonymous memory and vmsplices all of it into a pipe on request: the
// owner's side of the vmsplice floor, in a process of its own as godwit's
// target is.
type Vmsplicer struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	pipe int // read end
	Size uint64
}

// StartVmsplicer starts a vmsplicer owning size bytes (a multiple of 1
// MiB). Close stops it.
func StartVmsplicer(t testing.TB, size uint64) *Vmsplicer {
	t.Helper()
	bin := cBin(t, "vmsplicer", filepath.Join("e2e", "workloads", "vmsplicer.c"))
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	// As large a pipe as pipe-max-size allows without CAP_SYS_RESOURCE,
	// as godwit's own transfer uses.
	if _, err := unix.FcntlInt(uintptr(p[1]), unix.F_SETPIPE_SZ, floorChunk); err != nil {
		t.Fatal(err)
	}
	w := os.NewFile(uintptr(p[1]), "vmsplice-pipe")
	defer w.Close()
	cmd := exec.Command(bin, strconv.FormatUint(size>>20, 10))
	cmd.ExtraFiles = []*os.File{w}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	v := &Vmsplicer{cmd: cmd, in: in, pipe: p[0], Size: size}
	t.Cleanup(v.Close)
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("vmsplicer: %q %v", line, err)
	}
	return v
}

// Close stops the process and reaps it.
func (v *Vmsplicer) Close() {
	if v.cmd == nil {
		return
	}
	v.in.Close()
	_ = v.cmd.Process.Kill()
	_ = v.cmd.Wait()
	unix.Close(v.pipe)
	v.cmd = nil
}

// floorVmsplice has the vmsplicer vmsplice its memory into the pipe and
// splices the pipe into a new file in dir: one copy.
func floorVmsplice(v *Vmsplicer, dir string) (time.Duration, error) {
	f, err := os.CreateTemp(dir, "floor-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	t0 := time.Now()
	if _, err := v.in.Write([]byte{1}); err != nil {
		return 0, err
	}
	for left := int64(v.Size); left > 0; {
		n, err := unix.Splice(v.pipe, nil, int(f.Fd()), nil, int(min(left, floorChunk)), unix.SPLICE_F_MOVE)
		if err != nil {
			return 0, err
		}
		if n == 0 {
			return 0, errors.New("vmsplicer exited")
		}
		left -= n
	}
	return time.Since(t0), nil
}

// RestoreFloor copies the file f (size bytes from offset 0) into fresh
// memory by the two cheapest ways the kernel allows, and returns the
// faster time and which way it was:
//   - "pread": pread into fresh private anonymous memory of this process,
//     one copy, which is godwit's injected-preadv path without the
//     injection;
//   - "mmap+writev": process_vm_writev from a mapping of the file into
//     fresh memory of process pid at addr (one copy, page-cache pages
//     read in place); skipped when pid is 0.
func RestoreFloor(f *os.File, size int64, pid int, addr uint64) (time.Duration, string, error) {
	best, how, err := floorPread(f, size)
	if err != nil {
		return 0, "", fmt.Errorf("pread floor: %w", err)
	}
	if pid == 0 {
		return best, how, nil
	}
	wv, err := floorWritev(f, size, pid, addr)
	if err != nil {
		return 0, "", fmt.Errorf("mmap+writev floor: %w", err)
	}
	if wv < best {
		return wv, "mmap+writev", nil
	}
	return best, how, nil
}

func floorPread(f *os.File, size int64) (time.Duration, string, error) {
	mem, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return 0, "", err
	}
	defer unix.Munmap(mem)
	t0 := time.Now()
	for off := int64(0); off < size; {
		n, err := unix.Pread(int(f.Fd()), mem[off:min(size, off+64*floorChunk)], off)
		if err != nil {
			return 0, "", err
		}
		if n == 0 {
			return 0, "", fmt.Errorf("short file at %d", off)
		}
		off += int64(n)
	}
	return time.Since(t0), "pread", nil
}

func floorWritev(f *os.File, size int64, pid int, addr uint64) (time.Duration, error) {
	src, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return 0, err
	}
	defer unix.Munmap(src)
	t0 := time.Now()
	for off := int64(0); off < size; off += 64 * floorChunk {
		n := min(64*floorChunk, size-off)
		local := []unix.Iovec{{Base: (*byte)(unsafe.Pointer(&src[off]))}}
		local[0].SetLen(int(n))
		remote := []unix.RemoteIovec{{Base: uintptr(addr + uint64(off)), Len: int(n)}}
		if _, err := unix.ProcessVMWritev(pid, local, remote, 0); err != nil {
			return 0, err
		}
	}
	return time.Since(t0), nil
}

// Median returns the median of ds (the mean of the middle two for an even
// count); 0 for none.
func Median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// MedianRatio returns the median of a[i]/b[i]: the ratio of interleaved
// pairs, which cancels drifts of the machine's speed between pairs.
func MedianRatio(a, b []time.Duration) float64 {
	n := min(len(a), len(b))
	if n == 0 {
		return 0
	}
	r := make([]float64, n)
	for i := range n {
		r[i] = a[i].Seconds() / b[i].Seconds()
	}
	sort.Float64s(r)
	if n%2 == 1 {
		return r[n/2]
	}
	return (r[n/2-1] + r[n/2]) / 2
}
