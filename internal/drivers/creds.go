package drivers

import (
	"errors"
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
func (k credsDriver) CollectThreadInjected(d *Dump, s *inject.Session, ti *model.Thread) error {
	p, _ := k.PlanThreadInjected(d, s, ti)
	return runPlanned(s, p)
}

// PlanThreadInjected reads the securebits, no_new_privs and the
// parent-death signal.
func (credsDriver) PlanThreadInjected(d *Dump, s *inject.Session, ti *model.Thread) (Planned, bool) {
	return Planned{Calls: []inject.Call{
		inject.C("prctl(PR_GET_SECUREBITS)", unix.SYS_PRCTL, unix.PR_GET_SECUREBITS),
		inject.C("prctl(PR_GET_NO_NEW_PRIVS)", unix.SYS_PRCTL, unix.PR_GET_NO_NEW_PRIVS),
		inject.C("prctl(PR_GET_PDEATHSIG)", unix.SYS_PRCTL, unix.PR_GET_PDEATHSIG, s.Scratch()+scratchPdeath),
	}, Done: func(out []uint64, scratch []byte) error {
		ti.Creds.Secbits = uint32(out[0])
		ti.Creds.NoNewPrivs = out[1] != 0
		ti.PdeathSig = le.Uint32(scratch[scratchPdeath:])
		return nil
	}}, true
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
// ambient capabilities and no_new_privs. One batch, then calls queued
// (inject.Session.Later) for the session's next stop: they depend on the
// securebits the batch reads.
func (credsDriver) RestoreThread(r *Restore, s *inject.Session, t *model.Thread) error {
	c := &t.Creds
	cur, err := procfs.ReadStatus(t.Tid)
	if err != nil {
		return err
	}
	calls, err := setCreds(s, c, cur)
	if err != nil {
		return err
	}
	if sig := t.PdeathSig; sig != 0 {
		if r.Detach {
			// The restored task's parent is godwit, which exits right
			// after a detached restore: the signal would fire at once and
			// (usually SIGKILL) end the program godwit just restored.
			r.Log.Warnf("restore %d: thread %d: parent-death signal %d not restored: with -d the parent is godwit, which exits", r.Task.Pid, t.Tid, sig)
		} else {
			calls = append(calls, inject.C("prctl(PR_SET_PDEATHSIG)", unix.SYS_PRCTL, unix.PR_SET_PDEATHSIG, uint64(sig)))
		}
	}
	for _, c := range calls {
		s.Later(c.What, c.Nr, c.Args[:]...)
	}
	return nil
}

// capNames names the capabilities (include/uapi/linux/capability.h) in
// errors.
var capNames = map[int]string{
	unix.CAP_CHOWN: "CAP_CHOWN", unix.CAP_DAC_OVERRIDE: "CAP_DAC_OVERRIDE", unix.CAP_DAC_READ_SEARCH: "CAP_DAC_READ_SEARCH",
	unix.CAP_FOWNER: "CAP_FOWNER", unix.CAP_FSETID: "CAP_FSETID", unix.CAP_KILL: "CAP_KILL", unix.CAP_SETGID: "CAP_SETGID",
	unix.CAP_SETUID: "CAP_SETUID", unix.CAP_SETPCAP: "CAP_SETPCAP", unix.CAP_LINUX_IMMUTABLE: "CAP_LINUX_IMMUTABLE",
	unix.CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE", unix.CAP_NET_BROADCAST: "CAP_NET_BROADCAST", unix.CAP_NET_ADMIN: "CAP_NET_ADMIN",
	unix.CAP_NET_RAW: "CAP_NET_RAW", unix.CAP_IPC_LOCK: "CAP_IPC_LOCK", unix.CAP_IPC_OWNER: "CAP_IPC_OWNER",
	unix.CAP_SYS_MODULE: "CAP_SYS_MODULE", unix.CAP_SYS_RAWIO: "CAP_SYS_RAWIO", unix.CAP_SYS_CHROOT: "CAP_SYS_CHROOT",
	unix.CAP_SYS_PTRACE: "CAP_SYS_PTRACE", unix.CAP_SYS_PACCT: "CAP_SYS_PACCT", unix.CAP_SYS_ADMIN: "CAP_SYS_ADMIN",
	unix.CAP_SYS_BOOT: "CAP_SYS_BOOT", unix.CAP_SYS_NICE: "CAP_SYS_NICE", unix.CAP_SYS_RESOURCE: "CAP_SYS_RESOURCE",
	unix.CAP_SYS_TIME: "CAP_SYS_TIME", unix.CAP_SYS_TTY_CONFIG: "CAP_SYS_TTY_CONFIG", unix.CAP_MKNOD: "CAP_MKNOD",
	unix.CAP_LEASE: "CAP_LEASE", unix.CAP_AUDIT_WRITE: "CAP_AUDIT_WRITE", unix.CAP_AUDIT_CONTROL: "CAP_AUDIT_CONTROL",
	unix.CAP_SETFCAP: "CAP_SETFCAP", unix.CAP_MAC_OVERRIDE: "CAP_MAC_OVERRIDE", unix.CAP_MAC_ADMIN: "CAP_MAC_ADMIN",
	unix.CAP_SYSLOG: "CAP_SYSLOG", unix.CAP_WAKE_ALARM: "CAP_WAKE_ALARM", unix.CAP_BLOCK_SUSPEND: "CAP_BLOCK_SUSPEND",
	unix.CAP_AUDIT_READ: "CAP_AUDIT_READ", unix.CAP_PERFMON: "CAP_PERFMON", unix.CAP_BPF: "CAP_BPF",
	unix.CAP_CHECKPOINT_RESTORE: "CAP_CHECKPOINT_RESTORE",
}

// capList names the capabilities in set.
func capList(set uint64) string {
	var names []string
	for cp := 0; cp < 64; cp++ {
		if set&(1<<cp) == 0 {
			continue
		}
		if n, ok := capNames[cp]; ok {
			names = append(names, n)
		} else {
			names = append(names, "capability "+strconv.Itoa(cp))
		}
	}
	return strings.Join(names, ", ")
}

// setCreds runs the calls up to the securebits read and returns the
// rest, to run in one batch with whatever the caller adds.
func setCreds(s *inject.Session, c *model.Creds, cur *procfs.Status) ([]inject.Call, error) {
	bnd := c.CapBnd
	prm, eff, inh, amb := c.CapPrm, c.CapEff, c.CapInh, c.CapAmb
	if missing := prm &^ cur.CapPrm; missing != 0 {
		return nil, fmt.Errorf("creds: the images' permitted capabilities %#x include %s, which godwit does not hold", prm, capList(missing))
	}
	if cur.NoNewPrivs && !c.NoNewPrivs {
		// Inherited from godwit, and it cannot be unset.
		return nil, fmt.Errorf("creds: godwit runs with no_new_privs, which the images' task did not have and which cannot be cleared")
	}
	last := capLastCap()
	known := uint64(1)<<(last+1) - 1
	if missing := bnd & known &^ cur.CapBnd; missing != 0 {
		// A bounding set only shrinks: the task would run with a
		// smaller one than it had.
		return nil, fmt.Errorf("creds: the images' capability bounding set %#x includes %s, which is not in godwit's bounding set", bnd, capList(missing))
	}
	var calls []inject.Call
	for cp := 0; cp <= last; cp++ {
		if bnd&(1<<cp) == 0 && cur.CapBnd&(1<<cp) != 0 {
			calls = append(calls, inject.C(fmt.Sprintf("drop capability %d from the bounding set", cp), unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, uint64(cp)))
		}
	}
	// Buffers: the groups, then the two capsets' (8-byte aligned).
	groups := c.Groups
	gb := make([]byte, 0, 4*len(groups))
	for _, g := range groups {
		gb = le.AppendUint32(gb, g)
	}
	ga, free := uint64(0), func() error { return nil }
	if len(gb) > 0 {
		// Up to NGROUPS_MAX (65536) gids, 256 KiB: more than the
		// scratch holds below the batch tables, then in a mapping of
		// its own.
		var err error
		if ga, free, err = s.PutLarge(fmt.Sprintf("setgroups (%d groups)", len(groups)), 0, gb); err != nil {
			return nil, err
		}
	}
	calls = append(calls,
		inject.C("setgroups", unix.SYS_SETGROUPS, uint64(len(groups)), ga),
		inject.C(fmt.Sprintf("setresgid %d %d %d", c.GID, c.EGID, c.SGID), unix.SYS_SETRESGID, uint64(c.GID), uint64(c.EGID), uint64(c.SGID)),
		inject.C("setfsgid", unix.SYS_SETFSGID, uint64(c.FSGID)),
		inject.C("prctl(PR_GET_SECUREBITS)", unix.SYS_PRCTL, unix.PR_GET_SECUREBITS))
	out, err := s.Batch(calls)
	if err = errors.Join(err, free()); err != nil {
		return nil, err
	}
	curSec := out[len(out)-1]
	calls = nil
	uids := [4]uint32{c.UID, c.EUID, c.SUID, c.FSUID}
	sec := uint64(c.Secbits)
	if uids != cur.Uid {
		calls = append(calls,
			inject.C("prctl(PR_SET_SECUREBITS) keep caps", unix.SYS_PRCTL, unix.PR_SET_SECUREBITS, curSec|linux.SecbitKeepCaps),
			inject.C(fmt.Sprintf("setresuid %d %d %d", uids[0], uids[1], uids[2]), unix.SYS_SETRESUID, uint64(uids[0]), uint64(uids[1]), uint64(uids[2])),
			inject.C("setfsuid", unix.SYS_SETFSUID, uint64(uids[3])))
		curSec |= linux.SecbitKeepCaps
	}
	// Raise the effective set to the permitted one for the calls below
	// that need CAP_SETPCAP (a uid change may have cleared it).
	raise, err := capsetCall(s, cur.CapPrm, cur.CapPrm, cur.CapInh)
	if err != nil {
		return nil, err
	}
	raise.What += " (raising the effective set)"
	calls = append(calls, raise)
	if sec != curSec {
		calls = append(calls, inject.C(fmt.Sprintf("prctl(PR_SET_SECUREBITS, %#x)", sec), unix.SYS_PRCTL, unix.PR_SET_SECUREBITS, sec))
	}
	final, err := capsetCall(s, eff, prm, inh)
	if err != nil {
		return nil, err
	}
	// Clear the ambient set first: a cap godwit had there and the
	// images' permitted and inheritable sets keep would stay ambient.
	calls = append(calls, final, inject.C("prctl(PR_CAP_AMBIENT_CLEAR_ALL)", unix.SYS_PRCTL, unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0))
	for cp := 0; cp <= last; cp++ {
		if amb&(1<<cp) != 0 {
			calls = append(calls, inject.C(fmt.Sprintf("raise ambient capability %d", cp), unix.SYS_PRCTL,
				unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_RAISE, uint64(cp), 0, 0))
		}
	}
	if c.NoNewPrivs {
		calls = append(calls, inject.C("prctl(PR_SET_NO_NEW_PRIVS)", unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
	}
	return calls, nil
}

// capsetCall stashes a capset's arguments (inject.Session.Stash) and
// returns the call that sets the calling thread's capability sets.
func capsetCall(s *inject.Session, eff, prm, inh uint64) (inject.Call, error) {
	b := le.AppendUint32(nil, unix.LINUX_CAPABILITY_VERSION_3)
	b = le.AppendUint32(b, 0) // pid 0: the caller
	for w := 0; w < 2; w++ {
		b = le.AppendUint32(b, uint32(eff>>(32*w)))
		b = le.AppendUint32(b, uint32(prm>>(32*w)))
		b = le.AppendUint32(b, uint32(inh>>(32*w)))
	}
	a, err := s.Stash(b)
	if err != nil {
		return inject.Call{}, err
	}
	return inject.C(fmt.Sprintf("capset eff %#x prm %#x inh %#x", eff, prm, inh), unix.SYS_CAPSET, a, a+8), nil
}
