package drivers

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"godwit/internal/abi/linux"
	"godwit/internal/inject"
)

// rlimitsDriver dumps and restores the resource limits.
type rlimitsDriver struct{}

func (rlimitsDriver) Name() string { return "rlimits" }

// After the last injected open and mmap: a task dumped at its
// RLIMIT_NOFILE (or with a low RLIMIT_AS) would make them fail.
func (rlimitsDriver) After() []string { return []string{"memory"} }

// CollectInjected reads every limit with prlimit64 from outside, or, when
// that is refused (no CAP_SYS_RESOURCE over a task of another user),
// with prlimit64 injected into the task.
func (rlimitsDriver) CollectInjected(d *Dump, s *inject.Session) error {
	for r := 0; r < linux.RlimNlimits; r++ {
		var lim unix.Rlimit
		err := unix.Prlimit(d.Pid, r, nil, &lim)
		if errors.Is(err, unix.EPERM) {
			if _, err = s.Call(fmt.Sprintf("prlimit64(%d)", r), unix.SYS_PRLIMIT64, 0, uint64(r), 0, s.Scratch()+scratchRlimit); err == nil {
				var b [16]byte
				if err = s.Read(scratchRlimit, b[:]); err == nil {
					lim.Cur, lim.Max = le.Uint64(b[0:]), le.Uint64(b[8:])
				}
			}
		}
		if err != nil {
			return fmt.Errorf("rlimit %d: %w", r, err)
		}
		d.Task.Rlimits = append(d.Task.Rlimits, lim)
	}
	return nil
}

var rlimitNames = []string{"RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE",
	"RLIMIT_RSS", "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS", "RLIMIT_LOCKS",
	"RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_RTTIME"}

// Restore sets the dumped limits. Raising a hard limit needs
// CAP_SYS_RESOURCE, which root lacks on these machines: that is an error
// naming the limit, never a silently lower limit.
func (rlimitsDriver) Restore(r *Restore, s *inject.Session) error {
	var buf []byte
	var calls []inject.Call
	raises := false
	for i, rl := range r.Task.Rlimits {
		if i >= linux.RlimNlimits {
			break
		}
		a := s.Scratch() + uint64(len(buf))
		buf = le64(le64(buf, rl.Cur), rl.Max)
		calls = append(calls, inject.C("prlimit64 "+rlimitNames[i], unix.SYS_PRLIMIT64, 0, uint64(i), a, 0))
		// The task has godwit's limits until now (inherited).
		var cur unix.Rlimit
		if err := unix.Getrlimit(i, &cur); err != nil || rl.Max > cur.Max {
			raises = true
		}
	}
	if len(calls) == 0 {
		return nil
	}
	if !raises {
		// No hard limit goes up: nothing to explain if one fails, so
		// queued for the session's next stop, in their order.
		a, err := s.Stash(buf)
		if err != nil {
			return err
		}
		for i, c := range calls {
			s.Later(c.What, c.Nr, c.Args[0], c.Args[1], a+uint64(16*i), 0)
		}
		return nil
	}
	if _, err := s.Put(0, buf); err != nil {
		return err
	}
	done, err := s.Batch(calls)
	if err != nil {
		i := len(done) // the limit that failed
		if en, ok := inject.Errno(err); ok && en == unix.EPERM && i < len(calls) {
			var cur unix.Rlimit
			_ = unix.Getrlimit(i, &cur)
			return fmt.Errorf("%s: the images' hard limit %d is above godwit's %d, and raising it needs CAP_SYS_RESOURCE, which this root lacks: %w",
				rlimitNames[i], r.Task.Rlimits[i].Max, cur.Max, err)
		}
		return err
	}
	return nil
}
