package ptrace

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// PTRACE_GET_SECCOMP_METADATA (include/uapi/linux/ptrace.h; x/sys/unix
// lacks it) and its struct seccomp_metadata.
const ptraceGetSeccompMetadata = 0x420d

type seccompMetadata struct {
	FilterOff uint64
	Flags     uint64
}

// sizeofSockFilter is sizeof(struct sock_filter) (include/uapi/linux/filter.h).
const sizeofSockFilter = 8

// maxSeccompFilters bounds the chain read (the kernel's own bound,
// MAX_INSNS_PER_PATH over the 4-instruction charge of each filter, is
// 8192).
const maxSeccompFilters = 8192

// SeccompFilter is one installed seccomp filter: its classic BPF program
// (struct sock_filter array) and the flags it was installed with, as far
// as the kernel reports them (SECCOMP_FILTER_FLAG_LOG).
type SeccompFilter struct {
	Prog  []byte
	Flags uint64
}

// SeccompFilters reads the filters of stopped thread tid, oldest first
// (PTRACE_SECCOMP_GET_FILTER's index 0 is the first installed);
// CAP_SYS_ADMIN.
func (t *Tracer) SeccompFilters(tid int) ([]SeccompFilter, error) {
	var out []SeccompFilter
	err := t.Do(func() error {
		if _, err := t.getStopped(tid); err != nil {
			return err
		}
		for i := 0; ; i++ {
			if i == maxSeccompFilters {
				return fmt.Errorf("seccomp filters of %d: more than %d", tid, maxSeccompFilters)
			}
			n, err := ptrace(unix.PTRACE_SECCOMP_GET_FILTER, tid, uintptr(i), 0)
			if errors.Is(err, unix.ENOENT) {
				break
			}
			if err != nil {
				return fmt.Errorf("PTRACE_SECCOMP_GET_FILTER %d of %d: %w", i, tid, err)
			}
			prog := make([]byte, n*sizeofSockFilter)
			if n == 0 {
				return fmt.Errorf("PTRACE_SECCOMP_GET_FILTER %d of %d: empty program", i, tid)
			}
			m, err := ptrace(unix.PTRACE_SECCOMP_GET_FILTER, tid, uintptr(i), uintptr(unsafe.Pointer(&prog[0])))
			if err != nil {
				return fmt.Errorf("PTRACE_SECCOMP_GET_FILTER %d of %d: %w", i, tid, err)
			}
			if m != n {
				return fmt.Errorf("PTRACE_SECCOMP_GET_FILTER %d of %d: %d instructions, then %d", i, tid, n, m)
			}
			md := seccompMetadata{FilterOff: uint64(i)}
			if _, err := ptrace(ptraceGetSeccompMetadata, tid, unsafe.Sizeof(md), uintptr(unsafe.Pointer(&md))); err != nil {
				return fmt.Errorf("PTRACE_GET_SECCOMP_METADATA %d of %d: %w", i, tid, err)
			}
			out = append(out, SeccompFilter{Prog: prog, Flags: md.Flags})
		}
		return nil
	})
	return out, err
}

// SuspendSeccomp adds PTRACE_O_SUSPEND_SECCOMP to stopped tracee tid's
// options: its seccomp filters (or strict mode) then leave injected
// syscalls alone until it is detached. Needs CAP_SYS_ADMIN and a tracer
// not itself under seccomp.
func (t *Tracer) SuspendSeccomp(tid int) error {
	return t.Do(func() error {
		tk, err := t.getStopped(tid)
		if err != nil {
			return err
		}
		if tk.opts&unix.PTRACE_O_SUSPEND_SECCOMP != 0 {
			return nil
		}
		opts := tk.opts | unix.PTRACE_O_SUSPEND_SECCOMP
		if _, err := ptrace(unix.PTRACE_SETOPTIONS, tid, 0, uintptr(opts)); err != nil {
			return fmt.Errorf("PTRACE_O_SUSPEND_SECCOMP on %d: %w", tid, err)
		}
		tk.opts = opts
		return nil
	})
}

// SeccompSuspended reports whether tracee tid is traced with
// PTRACE_O_SUSPEND_SECCOMP.
func (t *Tracer) SeccompSuspended(tid int) bool {
	ok := false
	_ = t.Do(func() error {
		tk, err := t.get(tid)
		ok = err == nil && tk.opts&unix.PTRACE_O_SUSPEND_SECCOMP != 0
		return nil
	})
	return ok
}

// ExitKill makes the stopped tracee tid die with the tracer
// (PTRACE_O_EXITKILL) rather than run on if godwit dies: for a task whose
// copy may already run elsewhere (post-copy after the switch-over).
func (t *Tracer) ExitKill(tid int) error {
	return t.Do(func() error {
		tk, err := t.getStopped(tid)
		if err != nil {
			return err
		}
		if tk.opts&unix.PTRACE_O_EXITKILL != 0 {
			return nil
		}
		opts := tk.opts | unix.PTRACE_O_EXITKILL
		if _, err := ptrace(unix.PTRACE_SETOPTIONS, tid, 0, uintptr(opts)); err != nil {
			return fmt.Errorf("PTRACE_O_EXITKILL on %d: %w", tid, err)
		}
		tk.opts = opts
		return nil
	})
}
