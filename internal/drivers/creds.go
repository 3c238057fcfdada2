package drivers

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"godwit/internal/abi/linux"
	"godwit/internal/inject"
	"godwit/internal/model"
	"godwit/internal/procfs"
)

// credsDriver dumps and restores each thread's credentials and its
// parent-death signal (which a credential change clears).
type credsDriver struct{}

func (credsDriver) Name() string    { return "creds" }
func (credsDriver) After() []string { return []string{"rlimits", "seccomp"} }

// CollectThread reads ids and capabilities from /proc and capget.
func (credsDriver) CollectThread(d *Dump, ti *model.Thread) error {
	st, err := procfs.ReadTaskStatus(d.Pid, ti.Tid)
	if err != nil {
		return err
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3, Pid: int32(ti.Tid)}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget(%d): %w", ti.Tid, err)
	}
	join := func(lo, hi uint32) uint64 { return uint64(lo) | uint64(hi)<<32 }
	ti.Creds = model.Creds{
		UID: st.Uid[0], EUID: st.Uid[1], SUID: st.Uid[2], FSUID: st.Uid[3],
		GID: st.Gid[0], EGID: st.Gid[1], SGID: st.Gid[2], FSGID: st.Gid[3],
		CapInh: join(data[0].Inheritable, data[1].Inheritable),
		CapPrm: join(data[0].Permitted, data[1].Permitted),
		CapEff: join(data[0].Effective, data[1].Effective),
		CapBnd: st.CapBnd,
		CapAmb: st.CapAmb,
		Groups: st.Groups,
	}
	return nil
}

// CollectThreadInjected reads the securebits, no_new_privs and the
// parent-death signal, which only the thread can tell.
func (credsDriver) CollectThreadInjected(d *Dump, s *inject.Session, ti *model.Thread) error {
	sb, err := s.Call("prctl(PR_GET_SECUREBITS)", unix.SYS_PRCTL, unix.PR_GET_SECUREBITS)
	if err != nil {
		return err
	}
	nnp, err := s.Call("prctl(PR_GET_NO_NEW_PRIVS)", unix.SYS_PRCTL, unix.PR_GET_NO_NEW_PRIVS)
	if err != nil {
		return err
	}
	if _, err := s.Call("prctl(PR_GET_PDEATHSIG)", unix.SYS_PRCTL, unix.PR_GET_PDEATHSIG, s.Scratch()+scratchPdeath); err != nil {
		return err
	}
	var b [4]byte
	if err := s.Read(scratchPdeath, b[:]); err != nil {
		return err
	}
	ti.Creds.Secbits = uint32(sb)
	ti.Creds.NoNewPrivs = nnp != 0
	ti.PdeathSig = le.Uint32(b[:])
	return nil
}

// capLastCapProbe bounds cap_last_cap: capset's two 32-bit data words
// hold capabilities 0..63.
const capLastCapProbe = 63

func capLastCap() int {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 40
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 0 || n > capLastCapProbe {
		return 40
	}
	return n
}

// RestoreThread gives one thread its credentials (they are per thread; the
// raw syscalls change only the calling thread), then its parent-death
// signal, which a credential change clears. Order: bounding set (needs
// CAP_SETPCAP), groups and gids, securebits with KEEP_CAPS so that the uid
// change keeps the permitted set, uids, then (with the effective set
// raised to what is permitted) the final securebits, the capability sets,
// ambient capabilities and no_new_privs.
func (credsDriver) RestoreThread(r *Restore, s *inject.Session, t *model.Thread) error {
	c := &t.Creds
	cur, err := procfs.ReadStatus(t.Tid)
	if err != nil {
		return err
	}
	if err := setCreds(s, c, cur); err != nil {
		return err
	}
	if sig := t.PdeathSig; sig != 0 {
		if r.Detach {
			// The restored task's parent is godwit, which exits right
			// after a detached restore: the signal would fire at once and
			// (usually SIGKILL) end the program godwit just restored.
			r.Log.Warnf("restore %d: thread %d: parent-death signal %d not restored: with -d the parent is godwit, which exits", r.Task.Pid, t.Tid, sig)
			return nil
		}
		if _, err := s.Call("prctl(PR_SET_PDEATHSIG)", unix.SYS_PRCTL, unix.PR_SET_PDEATHSIG, uint64(sig)); err != nil {
			return err
		}
	}
	return nil
}

func setCreds(s *inject.Session, c *model.Creds, cur *procfs.Status) error {
	bnd := c.CapBnd
	prm, eff, inh, amb := c.CapPrm, c.CapEff, c.CapInh, c.CapAmb
	if missing := prm &^ cur.CapPrm; missing != 0 {
		return fmt.Errorf("creds: the images' permitted capabilities %#x include %#x, which godwit does not hold (e.g. CAP_SYS_RESOURCE)", prm, missing)
	}
	last := capLastCap()
	for cp := 0; cp <= last; cp++ {
		if bnd&(1<<cp) == 0 && cur.CapBnd&(1<<cp) != 0 {
			if _, err := s.Call(fmt.Sprintf("drop capability %d from the bounding set", cp), unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, uint64(cp)); err != nil {
				return err
			}
		}
	}
	groups := c.Groups
	gb := make([]byte, 0, 4*len(groups))
	for _, g := range groups {
		gb = le.AppendUint32(gb, g)
	}
	ga := uint64(0)
	if len(gb) > 0 {
		var err error
		if ga, err = s.Put(0, gb); err != nil {
			return err
		}
	}
	if _, err := s.Call("setgroups", unix.SYS_SETGROUPS, uint64(len(groups)), ga); err != nil {
		return err
	}
	if _, err := s.Call(fmt.Sprintf("setresgid %d %d %d", c.GID, c.EGID, c.SGID), unix.SYS_SETRESGID,
		uint64(c.GID), uint64(c.EGID), uint64(c.SGID)); err != nil {
		return err
	}
	if _, err := s.Call("setfsgid", unix.SYS_SETFSGID, uint64(c.FSGID)); err != nil {
		return err
	}
	uids := [4]uint32{c.UID, c.EUID, c.SUID, c.FSUID}
	curSec := uint64(0)
	if v, err := s.Call("prctl(PR_GET_SECUREBITS)", unix.SYS_PRCTL, unix.PR_GET_SECUREBITS); err == nil {
		curSec = v
	} else {
		return err
	}
	sec := uint64(c.Secbits)
	if uids != cur.Uid {
		if _, err := s.Call("prctl(PR_SET_SECUREBITS) keep caps", unix.SYS_PRCTL, unix.PR_SET_SECUREBITS, curSec|linux.SecbitKeepCaps); err != nil {
			return err
		}
		if _, err := s.Call(fmt.Sprintf("setresuid %d %d %d", uids[0], uids[1], uids[2]), unix.SYS_SETRESUID,
			uint64(uids[0]), uint64(uids[1]), uint64(uids[2])); err != nil {
			return err
		}
		if _, err := s.Call("setfsuid", unix.SYS_SETFSUID, uint64(uids[3])); err != nil {
			return err
		}
		curSec |= linux.SecbitKeepCaps
	}
	// Raise the effective set to the permitted one for the calls below
	// that need CAP_SETPCAP (a uid change may have cleared it).
	if err := capset(s, cur.CapPrm, cur.CapPrm, cur.CapInh); err != nil {
		return fmt.Errorf("%w (raising the effective set)", err)
	}
	if sec != curSec {
		if _, err := s.Call(fmt.Sprintf("prctl(PR_SET_SECUREBITS, %#x)", sec), unix.SYS_PRCTL, unix.PR_SET_SECUREBITS, sec); err != nil {
			return err
		}
	}
	if err := capset(s, eff, prm, inh); err != nil {
		return err
	}
	for cp := 0; cp <= last; cp++ {
		if amb&(1<<cp) != 0 {
			if _, err := s.Call(fmt.Sprintf("raise ambient capability %d", cp), unix.SYS_PRCTL,
				unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_RAISE, uint64(cp), 0, 0); err != nil {
				return err
			}
		}
	}
	if c.NoNewPrivs {
		if _, err := s.Call("prctl(PR_SET_NO_NEW_PRIVS)", unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return err
		}
	}
	return nil
}

// capset sets the calling thread's capability sets (version 3: two
// 32-bit words each).
func capset(s *inject.Session, eff, prm, inh uint64) error {
	b := le.AppendUint32(nil, unix.LINUX_CAPABILITY_VERSION_3)
	b = le.AppendUint32(b, 0) // pid 0: the caller
	for w := 0; w < 2; w++ {
		b = le.AppendUint32(b, uint32(eff>>(32*w)))
		b = le.AppendUint32(b, uint32(prm>>(32*w)))
		b = le.AppendUint32(b, uint32(inh>>(32*w)))
	}
	a, err := s.Put(0, b)
	if err != nil {
		return err
	}
	_, err = s.Call(fmt.Sprintf("capset eff %#x prm %#x inh %#x", eff, prm, inh), unix.SYS_CAPSET, a, a+8)
	return err
}
