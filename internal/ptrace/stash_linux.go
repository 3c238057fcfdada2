package ptrace

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	"godwit/internal/procfs"
)

// stashed is a signal a tracee dequeued while we injected calls, with its
// siginfo (ok: read at its signal-delivery-stop).
type stashed struct {
	sig unix.Signal
	si  Siginfo
	ok  bool
}

// stash keeps the signal of tk's signal-delivery-stop, which resuming it
// with no signal discards, to be sent again on detach.
func (t *Tracer) stash(tk *task, sig unix.Signal) {
	s := stashed{sig: sig}
	_, err := ptrace(unix.PTRACE_GETSIGINFO, tk.tid, 0, uintptr(unsafe.Pointer(&s.si[0])))
	s.ok = err == nil && s.si.Signo() == int32(sig)
	tk.stash = append(tk.stash, s)
}

// catchable: a signal whose siginfo a handler may see (SIGKILL and
// SIGSTOP have none to see: tgkill sends them as they were).
func catchable(sig unix.Signal) bool { return sig != unix.SIGKILL && sig != unix.SIGSTOP }

// requeueStash queues tk's stashed catchable signals to it again with
// their own siginfo, before it is detached: rt_tgsigqueueinfo injected in
// the thread itself, the only sender the kernel lets queue a siginfo it
// did not make (si_code >= 0: a kernel's, kill's) to a thread. The
// siginfo is written below the thread's stack red zone, which a signal
// frame would overwrite anyway. What it could not queue stays in the
// stash, for tgkill (signal number only), and the error says so.
func (t *Tracer) requeueStash(tk *task) error {
	var keep, send []stashed
	for _, s := range tk.stash {
		if s.ok && catchable(s.sig) {
			send = append(send, s)
		} else {
			keep = append(keep, s)
		}
	}
	if len(send) == 0 {
		return nil
	}
	tk.stash = nil
	sent := 0
	err := func() error {
		s, err := t.begin(tk.tid)
		if err != nil {
			return err
		}
		defer s.end()
		tgid := t.tgidOf(tk)
		// The call runs in the tracee: its ids in its own pid namespace.
		ownTgid, ownTid, err := t.ownIDs(tk)
		if err != nil {
			return err
		}
		const redZone = 128
		at := (s.saved.Rsp - redZone - uint64(len(Siginfo{}))) &^ 15
		for _, q := range send {
			if err := WriteMem(tgid, at, q.si[:]); err != nil {
				return err
			}
			ret, err := s.syscall(unix.SYS_RT_TGSIGQUEUEINFO, []uint64{uint64(ownTgid), uint64(ownTid), uint64(q.sig), at})
			if err == nil && int64(ret) < 0 && int64(ret) >= -4095 {
				err = unix.Errno(-int64(ret))
			}
			if err != nil {
				return err
			}
			sent++
		}
		return s.end()
	}()
	keep = append(keep, send[sent:]...)
	// Stashed during this session (only what cannot be blocked): as is.
	tk.stash = append(keep, tk.stash...)
	if err != nil {
		return fmt.Errorf("detach %d: queue its stashed signals again with their siginfo: %w (sent by number only)", tk.tid, err)
	}
	return nil
}

// ownIDs are tk's tgid and tid as it sees them itself, in its own pid
// namespace: the last NStgid and NSpid entries of its status (absent
// before Linux 4.1: godwit's then), read once. A call injected in tk
// that names it (rt_tgsigqueueinfo) resolves the ids there.
func (t *Tracer) ownIDs(tk *task) (tgid, tid int, err error) {
	if tk.own[0] != 0 {
		return tk.own[0], tk.own[1], nil
	}
	st, err := procfs.ReadStatus(tk.tid)
	if err != nil {
		return 0, 0, fmt.Errorf("ids of %d in its pid namespace: %w", tk.tid, err)
	}
	tk.own = [2]int{t.tgidOf(tk), tk.tid}
	if len(st.NStgid) > 0 && len(st.NSpid) > 0 {
		tk.own = [2]int{st.NStgid[len(st.NStgid)-1], st.NSpid[len(st.NSpid)-1]}
	}
	return tk.own[0], tk.own[1], nil
}

// DropStashed forgets the signals tracee tid dequeued while traced, which
// detach would send again, and returns them: for a task none of whose
// signals so far are its program's (a restore's task, prepared ahead,
// that others could signal by its PID).
func (t *Tracer) DropStashed(tid int) ([]unix.Signal, error) {
	var out []unix.Signal
	err := t.Do(func() error {
		tk, err := t.get(tid)
		if err != nil {
			return err
		}
		for _, s := range tk.stash {
			out = append(out, s.sig)
		}
		tk.stash = nil
		return nil
	})
	return out, err
}
