package criuimg

import (
	"encoding/binary"
	"fmt"
	"io"

	"golang.org/x/sys/unix"

	"godwit/internal/images"
	"godwit/internal/model"
	"godwit/internal/ptrace"
)

// RestartImg is godwit's side image of the threads frozen inside an
// interrupted syscall whose core images hold the registers as CRIU writes
// them (the restart applied, see gpregs): it keeps rax and rip as they
// were frozen, which godwit's restore uses to let the kernel restart the
// call exactly as it would have. CRIU's restore does not need it.
//
// Format: "GODWITR1", then per thread tid (u32), 4 zero bytes, rax and
// rip (u64), little-endian.
const RestartImg = "godwit-restart.img"

const (
	restartMagic = "GODWITR1"
	restartEntry = 24
	// maxRestartSize bounds the file: a thread of every possible pid.
	maxRestartSize = len(restartMagic) + restartEntry*maxPid
)

// frozenRegs is one thread's entry of RestartImg.
type frozenRegs struct {
	tid      uint32
	rax, rip uint64
}

func encodeRestart(es []frozenRegs) []byte {
	b := []byte(restartMagic)
	for _, e := range es {
		b = binary.LittleEndian.AppendUint32(b, e.tid)
		b = binary.LittleEndian.AppendUint32(b, 0)
		b = binary.LittleEndian.AppendUint64(b, e.rax)
		b = binary.LittleEndian.AppendUint64(b, e.rip)
	}
	return b
}

func writeRestart(d *images.Dir, es []frozenRegs) error {
	f, err := d.Create(RestartImg)
	if err != nil {
		return err
	}
	if _, err := f.Write(encodeRestart(es)); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", RestartImg, err)
	}
	return f.Close()
}

// readRestart puts the frozen rax and rip of RestartImg (if any) back into
// t's threads, after checking that each entry is what the core image's
// registers were made from.
func readRestart(d *images.Dir, t *model.Tree) error {
	if !d.Exists(RestartImg) {
		return nil
	}
	f, err := d.OpenRead(RestartImg)
	if err != nil {
		return err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, int64(maxRestartSize)+1))
	if err != nil {
		return fmt.Errorf("%s: %w", RestartImg, err)
	}
	if len(b) > maxRestartSize || len(b) < len(restartMagic) || string(b[:len(restartMagic)]) != restartMagic ||
		(len(b)-len(restartMagic))%restartEntry != 0 {
		return fmt.Errorf("%s: not a restart image of godwit", RestartImg)
	}
	threads := map[uint32]*model.Thread{}
	for _, k := range t.Tasks {
		for _, th := range k.Threads {
			threads[uint32(th.Tid)] = th
		}
	}
	// A pending signal, the thread's or its task's, decided how the
	// restart was written (see gpregs).
	signals := map[uint32]bool{}
	for _, k := range t.Tasks {
		for _, th := range k.Threads {
			signals[uint32(th.Tid)] = len(th.Pending) > 0 || len(k.SharedSignals) > 0
		}
	}
	seen := map[uint32]bool{}
	for p := b[len(restartMagic):]; len(p) > 0; p = p[restartEntry:] {
		e := frozenRegs{binary.LittleEndian.Uint32(p), binary.LittleEndian.Uint64(p[8:]), binary.LittleEndian.Uint64(p[16:])}
		th := threads[e.tid]
		if th == nil || seen[e.tid] || binary.LittleEndian.Uint32(p[4:]) != 0 {
			return fmt.Errorf("%s: entry for thread %d: unknown, repeated or malformed", RestartImg, e.tid)
		}
		seen[e.tid] = true
		frozen := th.Regs
		frozen.Rax, frozen.Rip = e.rax, e.rip
		// Inside restart_syscall the core's rax is the call restarted
		// (unless a signal made it -EINTR).
		sig := signals[e.tid]
		var nr uint64
		if frozen.Orig_rax == sysRestartSyscall && !sig {
			nr = th.Regs.Rax
		}
		applied, ok := applyRestart(&frozen, sig, nr)
		if !ok || applied != th.Regs {
			return fmt.Errorf("%s: thread %d: the registers of %s are not the restart of rax %#x at rip %#x",
				RestartImg, e.tid, images.CoreImg(int(e.tid)), e.rax, e.rip)
		}
		th.Regs, th.RestartNr = frozen, nr
	}
	return nil
}

// applyRestart returns r with an interrupted syscall's restart applied, as
// CRIU's dump writes registers, and whether it applied one (see gpregs);
// signals: a signal is pending; restartNr is the call restart_syscall
// restarts, 0 if unknown.
func applyRestart(r *ptrace.Regs, signals bool, restartNr uint64) (ptrace.Regs, bool) {
	c := *r
	switch ptrace.Restart(r) {
	case ptrace.RestartSame:
		c.Rax, c.Rip = c.Orig_rax, c.Rip-2
	case ptrace.RestartBlock:
		call := r.Orig_rax
		if call == sysRestartSyscall {
			call = restartNr
		}
		switch {
		case signals:
			// The handler about to run ends a call with a
			// restart block with EINTR (CRIU's dump always
			// writes that).
			c.Rax = negEINTR
		case call == 0 || call == sysRestartSyscall:
			return *r, false // unknown: CRIU's restore would return -ERESTART_RESTARTBLOCK
		default:
			c.Rax, c.Rip = call, c.Rip-2
		}
	default:
		return *r, false
	}
	return c, true
}

// negEINTR is -EINTR as a register value.
const negEINTR = ^uint64(unix.EINTR) + 1
