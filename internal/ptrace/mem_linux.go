package ptrace

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// These helpers need no tracer thread: process_vm_readv/writev and
// /proc/PID/mem only require ptrace access rights, not an attachment.

// ReadMem reads len(b) bytes at addr of process pid with process_vm_readv.
func ReadMem(pid int, addr uint64, b []byte) error {
	return vm(pid, addr, b, false)
}

// WriteMem writes b at addr of process pid with process_vm_writev. It fails
// on mappings the process cannot write itself; see PokeMem.
func WriteMem(pid int, addr uint64, b []byte) error {
	return vm(pid, addr, b, true)
}

func vm(pid int, addr uint64, b []byte, write bool) error {
	for done := 0; done < len(b); {
		local := []unix.Iovec{{Base: &b[done]}}
		local[0].SetLen(len(b) - done)
		remote := []unix.RemoteIovec{{Base: uintptr(addr) + uintptr(done), Len: len(b) - done}}
		var n int
		var err error
		if write {
			n, err = unix.ProcessVMWritev(pid, local, remote, 0)
		} else {
			n, err = unix.ProcessVMReadv(pid, local, remote, 0)
		}
		if err != nil {
			op := "read"
			if write {
				op = "write"
			}
			return fmt.Errorf("%s memory of %d at %#x+%d: %w", op, pid, addr, done, err)
		}
		if n == 0 {
			return fmt.Errorf("memory of %d at %#x: short transfer", pid, addr+uint64(done))
		}
		done += n
	}
	return nil
}

// PeekMem reads memory through /proc/PID/mem, which reads with FOLL_FORCE:
// unlike process_vm_readv it also reads mappings without PROT_READ (as long
// as they may be made readable).
func PeekMem(pid int, addr uint64, b []byte) error {
	return procMem(pid, addr, b, false)
}

// PokeMem writes through /proc/PID/mem, which breaks copy-on-write even on
// read-only private mappings (like a debugger setting a breakpoint).
func PokeMem(pid int, addr uint64, b []byte) error {
	return procMem(pid, addr, b, true)
}

func procMem(pid int, addr uint64, b []byte, write bool) error {
	flag := os.O_RDONLY
	if write {
		flag = os.O_WRONLY
	}
	f, err := os.OpenFile("/proc/"+strconv.Itoa(pid)+"/mem", flag, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// Offsets above 2^63 do not fit an int64; user addresses on x86-64
	// never reach them.
	if write {
		_, err = f.WriteAt(b, int64(addr))
	} else {
		_, err = f.ReadAt(b, int64(addr))
	}
	if err != nil {
		return fmt.Errorf("/proc/%d/mem at %#x: %w", pid, addr, err)
	}
	return nil
}
