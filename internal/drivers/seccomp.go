package drivers

import (
	"bytes"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"godwit/internal/inject"
	"godwit/internal/model"
	"godwit/internal/procfs"
)

// seccompDriver dumps and restores each thread's seccomp state: strict
// mode, or filter mode with its chain of classic BPF filters
// (PTRACE_SECCOMP_GET_FILTER, and PTRACE_GET_SECCOMP_METADATA for the
// flags the kernel keeps). Both ends trace such a task with
// PTRACE_O_SUSPEND_SECCOMP, so the filters never see godwit's injected
// calls: that lets the filters go in before the credentials, while every
// thread still has CAP_SYS_ADMIN (a task that installed its filter as
// root and dropped privileges since has no no_new_privs to install it
// with), and the calls injected after them run unfiltered all the same.
//
// Threads share filters: a filter installed with
// SECCOMP_FILTER_FLAG_TSYNC, or before a thread was made, is one object
// in all of them, and a later TSYNC needs that. The kernel does not say
// which threads share a filter, so identical content stands for it: the
// filters every thread has in common (the leading part of every chain)
// are installed once with TSYNC, the rest thread by thread.
type seccompDriver struct{}

func (seccompDriver) Name() string    { return "seccomp" }
func (seccompDriver) After() []string { return []string{"rlimits", "guards"} }

// CollectThread reads the thread's mode.
func (seccompDriver) CollectThread(d *Dump, th *model.Thread) error {
	st, err := procfs.ReadStatus(th.Tid)
	if err != nil {
		return err
	}
	switch st.Seccomp {
	case unix.SECCOMP_MODE_DISABLED, unix.SECCOMP_MODE_STRICT, unix.SECCOMP_MODE_FILTER:
		th.Seccomp.Mode = st.Seccomp
	default:
		return fmt.Errorf("unknown seccomp mode %d", st.Seccomp)
	}
	return nil
}

// CollectThreadInjected reads the filters (ptrace requests of the tracer
// thread, while the thread is stopped for injection).
func (seccompDriver) CollectThreadInjected(d *Dump, s *inject.Session, th *model.Thread) error {
	if th.Seccomp.Mode != unix.SECCOMP_MODE_FILTER {
		return nil
	}
	fs, err := s.Ptrace().Tracer().SeccompFilters(th.Tid)
	if err != nil {
		return err
	}
	if len(fs) == 0 {
		return fmt.Errorf("seccomp filter mode without a filter")
	}
	for _, f := range fs {
		if f.Flags&^unix.SECCOMP_FILTER_FLAG_LOG != 0 {
			return fmt.Errorf("seccomp filter with flags %#x godwit does not know", f.Flags)
		}
		th.Seccomp.Filters = append(th.Seccomp.Filters, model.SeccompFilter{Prog: f.Prog, Flags: uint32(f.Flags)})
	}
	return nil
}

// RestoreThread puts the thread in strict mode or installs its filters.
func (seccompDriver) RestoreThread(r *Restore, s *inject.Session, th *model.Thread) error {
	k := r.Task
	if th.Tid == k.Pid {
		// Before any filter exists, in every thread (a TSYNC from the
		// leader reaches them all).
		any := false
		for _, t := range k.Threads {
			any = any || t.Seccomp.Mode != unix.SECCOMP_MODE_DISABLED
		}
		if any {
			for _, t := range k.Threads {
				if err := s.Ptrace().Tracer().SuspendSeccomp(t.Tid); err != nil {
					return err
				}
			}
		}
	}
	switch th.Seccomp.Mode {
	case unix.SECCOMP_MODE_DISABLED:
		return nil
	case unix.SECCOMP_MODE_STRICT:
		_, err := s.Call("prctl(PR_SET_SECCOMP, strict)", unix.SYS_PRCTL, unix.PR_SET_SECCOMP, unix.SECCOMP_MODE_STRICT)
		return err
	case unix.SECCOMP_MODE_FILTER:
	default:
		return fmt.Errorf("seccomp mode %d", th.Seccomp.Mode)
	}
	shared := sharedSeccompPrefix(k.Threads)
	fs := th.Seccomp.Filters
	if th.Tid == k.Pid {
		for i, f := range fs[:shared] {
			if err := installFilter(s, i, f, unix.SECCOMP_FILTER_FLAG_TSYNC); err != nil {
				return err
			}
		}
	}
	for i, f := range fs[shared:] {
		if err := installFilter(s, shared+i, f, 0); err != nil {
			return err
		}
	}
	return nil
}

// sharedSeccompPrefix is how many filters, from the oldest, every thread
// has alike (0 unless every thread is in filter mode).
func sharedSeccompPrefix(ts []*model.Thread) int {
	if len(ts) == 0 {
		return 0
	}
	n := len(ts[0].Seccomp.Filters)
	for _, t := range ts {
		if t.Seccomp.Mode != unix.SECCOMP_MODE_FILTER {
			return 0
		}
		n = min(n, len(t.Seccomp.Filters))
		for i := 0; i < n; i++ {
			a, b := ts[0].Seccomp.Filters[i], t.Seccomp.Filters[i]
			if a.Flags != b.Flags || !bytes.Equal(a.Prog, b.Prog) {
				n = i
				break
			}
		}
	}
	return n
}

// installFilter installs filter f (the i-th from the oldest) in the
// session's thread: seccomp(SECCOMP_SET_MODE_FILTER) with a struct
// sock_fprog in scratch.
func installFilter(s *inject.Session, i int, f model.SeccompFilter, extra uint64) error {
	// The struct sock_fprog (16 bytes) first, the program after it:
	// up to BPF_MAXINSNS instructions (32 KiB), in a mapping of its
	// own when the scratch below the batch tables cannot hold it.
	const fprogSize = 16
	n := len(f.Prog) / 8
	if n == 0 || n > linuxBPFMaxInsns || len(f.Prog)%8 != 0 {
		return fmt.Errorf("seccomp filter %d: %d bytes is no BPF program", i, len(f.Prog))
	}
	what := fmt.Sprintf("seccomp filter %d (%d instructions)", i, n)
	prog, free, err := s.PutLarge(what, fprogSize, f.Prog)
	if err != nil {
		return err
	}
	fprog := le.AppendUint16(nil, uint16(n))
	fprog = append(fprog, 0, 0, 0, 0, 0, 0)
	fprog = le64(fprog, prog)
	a, err := s.Put(0, fprog)
	if err != nil {
		return errors.Join(err, free())
	}
	ret, err := s.Call(what, unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, uint64(f.Flags)|extra, a)
	if err == nil && ret != 0 {
		// TSYNC names the thread it could not synchronise.
		err = fmt.Errorf("%s: thread %d cannot take it", what, ret)
	}
	return errors.Join(err, free())
}

// linuxBPFMaxInsns is BPF_MAXINSNS (include/uapi/linux/bpf_common.h).
const linuxBPFMaxInsns = 4096
