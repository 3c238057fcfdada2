package ptrace

import (
	"encoding/binary"
	"fmt"
)

// Offsets in struct rseq and struct rseq_cs, from include/uapi/linux/rseq.h.
const (
	rseqCsOffset   = 8  // struct rseq: __u64 rseq_cs (pointer to struct rseq_cs)
	rseqCsDescSize = 32 // struct rseq_cs: version, flags, start_ip, post_commit_offset, abort_ip
)

// rseqAbort applies to r what the kernel does when a task that was
// preempted inside an rseq critical section returns to user mode: rip jumps
// to the section's abort handler and the thread's rseq_cs pointer is
// cleared. A thread stopped by ptrace is still inside the section (the
// kernel aborts on the way out, after the stop); running injected code
// first would make the kernel see our rip, clear rseq_cs and never abort,
// so the thread would resume mid-section after having been preempted.
func rseqAbort(tid, pid int, r *Regs) (bool, error) {
	c, err := getRseqConfig(tid)
	if err != nil {
		return false, err
	}
	if c.AbiPointer == 0 {
		return false, nil
	}
	var p [8]byte
	if err := ReadMem(pid, c.AbiPointer+rseqCsOffset, p[:]); err != nil {
		return false, fmt.Errorf("rseq area of %d: %w", tid, err)
	}
	cs := binary.NativeEndian.Uint64(p[:])
	if cs == 0 {
		return false, nil
	}
	var d [rseqCsDescSize]byte
	if err := ReadMem(pid, cs, d[:]); err != nil {
		// The kernel would kill the task with SIGSEGV; leave that to it.
		return false, nil
	}
	start := binary.NativeEndian.Uint64(d[8:])
	postCommit := binary.NativeEndian.Uint64(d[16:])
	abort := binary.NativeEndian.Uint64(d[24:])
	if r.Rip < start || r.Rip-start >= postCommit {
		return false, nil
	}
	var zero [8]byte
	if err := WriteMem(pid, c.AbiPointer+rseqCsOffset, zero[:]); err != nil {
		return false, fmt.Errorf("clear rseq_cs of %d: %w", tid, err)
	}
	r.Rip = abort
	return true, nil
}

// AbortRseq moves stopped thread tid out of an rseq critical section it was
// stopped in, to the section's abort handler, as the kernel would on its
// return to user mode. It reports whether it did. Dumpers call it before
// saving registers; injection does it by itself.
func (t *Tracer) AbortRseq(tid int) (bool, error) {
	var done bool
	err := t.Do(func() error {
		tk, err := t.getStopped(tid)
		if err != nil {
			return err
		}
		var r Regs
		if err := getRegs(tid, &r); err != nil {
			return err
		}
		done, err = rseqAbort(tid, t.tgidOf(tk), &r)
		if err != nil || !done {
			return err
		}
		return setRegs(tid, &r)
	})
	return done, err
}
