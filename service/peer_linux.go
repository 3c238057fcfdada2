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

// mayDump checks that a client admitted by the group may dump pid, by the
// kernel's ptrace rule for a caller without capabilities: the target's
// real, effective and saved uids and gids are the client's, it holds no
// capabilities, and it is dumpable (its /proc/PID is then owned by its
// uid, else by root). The target is held by a pidfd while its status is
// read, and the pidfd is checked after, so the answer is about that
// process. (The dumper opens its own pidfd by pid just after: a pid reused
// in between, microseconds, would need the target to exit and its pid to
// come round again.)
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
	proc := "/proc/" + strconv.Itoa(pid)
	status, err := os.ReadFile(proc + "/status")
	if err != nil {
		return fmt.Errorf("dump %d: %w", pid, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(proc, &st); err != nil {
		return fmt.Errorf("dump %d: %w", pid, err)
	}
	if err := unix.PidfdSendSignal(pfd, 0, nil, 0); err != nil {
		return fmt.Errorf("dump %d: %w", pid, err)
	}
	deny := func(why string) error {
		return fmt.Errorf("dump %d: uid %d may not dump it: %s", pid, p.cred.Uid, why)
	}
	if st.Uid != p.cred.Uid {
		return deny("not dumpable by it")
	}
	fields := map[string]string{}
	for _, ln := range strings.Split(string(status), "\n") {
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
			return fmt.Errorf("dump %d: bad %s line in status", pid, c.key)
		}
		for _, id := range ids[:3] { // real, effective, saved
			if id != strconv.FormatUint(uint64(c.want), 10) {
				return deny(c.key + "s " + fields[c.key] + " are not all its own")
			}
		}
	}
	for _, k := range []string{"CapPrm", "CapEff", "CapAmb"} {
		v, err := strconv.ParseUint(fields[k], 16, 64)
		if err != nil {
			return fmt.Errorf("dump %d: bad %s line in status", pid, k)
		}
		if v != 0 {
			return deny("it holds capabilities (" + k + " " + fields[k] + ")")
		}
	}
	return nil
}
