package service

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Policy says who may use the service. The rule, checked on the
// credentials the kernel recorded at connect (SO_PEERCRED, SO_PEERGROUPS):
//
//   - uid 0, or the uid the service runs as: admitted in full. Such a
//     client could run godwit itself with the same rights; it may name
//     images directories by path.
//   - a member of Group (its primary or a supplementary group), when Group
//     is set (`--service-group`): admitted with limits. It must pass its
//     images directory as a descriptor (images_dir_fd), and that directory
//     must be its own (owned by its uid), so that the service writes
//     nowhere the client could not. Requests that act on a process (dump,
//     restore; not served yet) must then also check that the client may
//     ptrace it: same real, effective and saved uid as the client, and
//     dumpable.
//   - anyone else is refused.
type Policy struct {
	Group int // gid admitted with limits; -1 for none
}

// peer is what the kernel told about a client.
type peer struct {
	cred      unix.Ucred
	groups    []uint32 // supplementary groups (SO_PEERGROUPS)
	delegated bool     // admitted through Policy.Group only
}

func peerOf(fd int) (peer, error) {
	cred, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return peer{}, fmt.Errorf("peer credentials: %w", err)
	}
	p := peer{cred: *cred}
	groups, err := peerGroups(fd)
	if err != nil {
		return peer{}, err
	}
	p.groups = groups
	return p, nil
}

// peerGroups reads SO_PEERGROUPS, growing the buffer as the kernel asks
// (ERANGE reports the size needed).
func peerGroups(fd int) ([]uint32, error) {
	buf := make([]byte, 64*4)
	for {
		n, err := getsockoptBytes(fd, unix.SOL_SOCKET, unix.SO_PEERGROUPS, buf)
		if err == unix.ERANGE && n > len(buf) && n <= 65536*4 {
			buf = make([]byte, n)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("peer groups: %w", err)
		}
		g := make([]uint32, n/4)
		for i := range g {
			g[i] = binary.NativeEndian.Uint32(buf[4*i:])
		}
		return g, nil
	}
}

// admit applies the policy to p, marking it delegated when it is admitted
// through the group only.
func (pol Policy) admit(p *peer) error {
	uid := p.cred.Uid
	if uid == 0 || int(uid) == os.Geteuid() {
		return nil
	}
	if pol.Group >= 0 && (p.cred.Gid == uint32(pol.Group) || slices.Contains(p.groups, uint32(pol.Group))) {
		p.delegated = true
		return nil
	}
	return fmt.Errorf("uid %d (pid %d) may not use this service: it admits root and uid %d%s", uid, p.cred.Pid, os.Geteuid(), groupText(pol.Group))
}

func groupText(g int) string {
	if g < 0 {
		return ""
	}
	return fmt.Sprintf(" and members of group %d", g)
}

// mayUseDir checks an images directory a delegated client passed: it must
// own it.
func (p *peer) mayUseDir(fd int) error {
	if !p.delegated {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("images directory: %w", err)
	}
	if st.Uid != p.cred.Uid {
		return errors.New("images directory: not owned by the client's uid")
	}
	return nil
}

// mayDump checks that a client admitted by the group may dump the tree of
// pid: every task of it, and every thread of each (ptrace seizes each
// thread, and threads may hold credentials of their own), by the kernel's
// ptrace rule for a caller without capabilities: the thread's real,
// effective and saved uids and gids are the client's, it holds no
// capabilities, and its task is dumpable (its /proc/PID is then owned by
// its uid, else by root). The root is held by a pidfd while its status is
// read, and the pidfd is checked after, so the answer is about that
// process. This check runs before the dump touches anything; the tree can
// still change until it is frozen, so the dump checks it again then
// (mayDumpFrozen).
func (p *peer) mayDump(pid int) error {
	if !p.delegated {
		return nil
	}
	if pid <= 0 {
		return fmt.Errorf("dump: bad pid %d", pid)
	}
	pfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return fmt.Errorf("dump %d: %w", pid, err)
	}
	defer unix.Close(pfd)
	if err := p.mayDumpTask(pid, pid); err != nil {
		return err
	}
	if err := unix.PidfdSendSignal(pfd, 0, nil, 0); err != nil {
		return fmt.Errorf("dump %d: %w", pid, err)
	}
	// The descendants, as the dump's freeze walks them.
	seen := map[int]bool{pid: true}
	for todo := []int{pid}; len(todo) > 0; {
		t := todo[0]
		todo = todo[1:]
		kids, err := children(t)
		if err != nil {
			if t == pid {
				return fmt.Errorf("dump %d: %w", pid, err)
			}
			continue // exited meanwhile
		}
		for _, k := range kids {
			if seen[k] {
				continue
			}
			seen[k] = true
			if err := p.mayDumpTask(pid, k); err != nil {
				if errors.Is(err, os.ErrNotExist) {
					continue // exited meanwhile
				}
				return err
			}
			todo = append(todo, k)
		}
	}
	return nil
}

// mayDumpFrozen checks the tasks of root's tree once the dump froze them:
// no task can be made, exec or change its credentials any more, so this
// answer holds for what the dump reads.
func (p *peer) mayDumpFrozen(root int, pids []int) error {
	if !p.delegated {
		return nil
	}
	for _, pid := range pids {
		if err := p.mayDumpTask(root, pid); err != nil {
			return err
		}
	}
	return nil
}

// mayLockNetns checks, for a client admitted by the group, the network
// namespace of the frozen tree's root: one other than godwit's is locked
// whole by the dump (and stays locked after a dump that kills the tree,
// until a restore, which the client may not do), so the client must be
// able to administer it itself: its user namespace is owned by the
// client's uid.
func (p *peer) mayLockNetns(root int) error {
	if !p.delegated {
		return nil
	}
	ns := "/proc/" + strconv.Itoa(root) + "/ns/net"
	var self, task unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &self); err != nil {
		return fmt.Errorf("network namespace of %d: %w", root, err)
	}
	fd, err := unix.Open(ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("network namespace of %d: %w", root, err)
	}
	defer unix.Close(fd)
	if err := unix.Fstat(fd, &task); err != nil {
		return fmt.Errorf("network namespace of %d: %w", root, err)
	}
	if task.Dev == self.Dev && task.Ino == self.Ino {
		return nil // only the tree's own connections are locked
	}
	u, err := unix.IoctlRetInt(fd, unix.NS_GET_USERNS)
	if err != nil {
		return fmt.Errorf("network namespace of %d: NS_GET_USERNS: %w", root, err)
	}
	defer unix.Close(u)
	owner, err := unix.IoctlGetUint32(u, unix.NS_GET_OWNER_UID)
	if err != nil {
		return fmt.Errorf("network namespace of %d: NS_GET_OWNER_UID: %w", root, err)
	}
	if owner != p.cred.Uid {
		return fmt.Errorf("network namespace of %d is not the client's (its user namespace belongs to uid %d) and the network lock would lock it whole: set network_lock SKIP", root, owner)
	}
	return nil
}

// children lists the children of every thread of pid.
func children(pid int) ([]int, error) {
	tids, err := threads(pid)
	if err != nil {
		return nil, err
	}
	var out []int
	for _, tid := range tids {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + strconv.Itoa(tid) + "/children")
		if errors.Is(err, os.ErrNotExist) {
			continue // the thread exited
		}
		if err != nil {
			return nil, err
		}
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				out = append(out, c)
			}
		}
	}
	return out, nil
}

// threads lists the thread ids of pid.
func threads(pid int) ([]int, error) {
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil {
		return nil, err
	}
	var tids []int
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}

// mayDumpTask checks task pid of root's tree and each of its threads (see
// mayDump). An error wrapping os.ErrNotExist means the task is gone.
func (p *peer) mayDumpTask(root, pid int) error {
	proc := "/proc/" + strconv.Itoa(pid)
	what := "dump " + strconv.Itoa(root)
	if pid != root {
		what += ": task " + strconv.Itoa(pid)
	}
	deny := func(why string) error {
		return fmt.Errorf("%s: uid %d may not dump it: %s", what, p.cred.Uid, why)
	}
	var st unix.Stat_t
	if err := unix.Stat(proc, &st); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if st.Uid != p.cred.Uid {
		return deny("not dumpable by it")
	}
	tids, err := threads(pid)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	for _, tid := range tids {
		status, err := os.ReadFile(proc + "/task/" + strconv.Itoa(tid) + "/status")
		if errors.Is(err, os.ErrNotExist) {
			continue // the thread exited
		}
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if err := p.checkStatus(string(status)); err != nil {
			if tid != pid {
				return deny(fmt.Sprintf("thread %d: %v", tid, err))
			}
			return deny(err.Error())
		}
	}
	return nil
}

// checkStatus checks one thread's /proc status text against the client.
func (p *peer) checkStatus(status string) error {
	fields := map[string]string{}
	for _, ln := range strings.Split(status, "\n") {
		if k, v, ok := strings.Cut(ln, ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	for _, c := range []struct {
		key  string
		want uint32
	}{{"Uid", p.cred.Uid}, {"Gid", p.cred.Gid}} {
		ids := strings.Fields(fields[c.key])
		if len(ids) != 4 {
			return fmt.Errorf("bad %s line in status", c.key)
		}
		for _, id := range ids[:3] { // real, effective, saved
			if id != strconv.FormatUint(uint64(c.want), 10) {
				return errors.New(c.key + "s " + fields[c.key] + " are not all its own")
			}
		}
	}
	for _, k := range []string{"CapPrm", "CapEff", "CapAmb"} {
		v, err := strconv.ParseUint(fields[k], 16, 64)
		if err != nil {
			return fmt.Errorf("bad %s line in status", k)
		}
		if v != 0 {
			return errors.New("it holds capabilities (" + k + " " + fields[k] + ")")
		}
	}
	return nil
}
