package dumper

import (
	"context"
	"os"
	"strconv"
	"strings"

	"godwit/internal/bpfiter"
	"godwit/internal/logging"
	"godwit/internal/procfs"
)

// The files driver checks each SO_REUSEPORT inet socket's group for a
// steering program with a BPF iterator (internal/bpfiter) whose load
// (BTF parse and verifier, 50-190 ms) would otherwise fall in the first
// check, inside the freeze. It is loaded before the freeze when the
// tree holds a socket that may be an inet one: one that is neither a
// unix nor a netlink socket of its task's network namespace (their
// /proc/PID/net lists name every such inode). Whether it is inet with
// SO_REUSEPORT on cannot be told without sock_diag per namespace or a
// copy of each of the running target's fds; a program holding a packet
// or other socket pays the load before the freeze, outside its downtime,
// and a socket opened between this look and the freeze has the load
// inside the freeze, still correct. The load is kept for the life of
// the process (a migration's final dump finds it done).

// prepareSteering is bpfiter.Prepare; tests wrap it to see when it runs.
var prepareSteering = bpfiter.Prepare

// atFreeze, when set (tests), runs as the freeze of the target begins.
var atFreeze func()

// maxSteerLook bounds the tasks the look before the freeze reads.
const maxSteerLook = 4096

// PrepareFreeze does, for the tree under pid, what a dump must do before
// it freezes that tree and may do earlier (a migration, before its
// rounds): it loads the reuseport steering check when the tree may hold
// an inet socket and it is not loaded yet. Its failure is only logged:
// the files driver meets it again and says what it means.
func PrepareFreeze(ctx context.Context, pid int) {
	if bpfiter.Prepared() || !treeMayHoldInet(pid) {
		return
	}
	if err := prepareSteering(); err != nil {
		logging.FromContext(ctx).Infof("dump %d: reuseport steering check: %v", pid, err)
	}
}

// treeMayHoldInet reports whether a task of the tree under pid (read
// while it runs) holds a socket that is neither unix nor netlink.
func treeMayHoldInet(pid int) bool {
	seen := map[int]bool{}
	todo := []int{pid}
	for len(todo) > 0 && len(seen) < maxSteerLook {
		p := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		if seen[p] {
			continue
		}
		seen[p] = true
		if mayHoldInet(p) {
			return true
		}
		kids, _ := Children(p) // a task gone meanwhile has none
		todo = append(todo, kids...)
	}
	return false
}

// mayHoldInet reports whether pid has a socket fd whose inode is neither
// in its namespace's unix nor netlink list.
func mayHoldInet(pid int) bool {
	dir := procfs.Path(pid, "fd")
	f, err := os.Open(dir)
	if err != nil {
		return false
	}
	names, _ := f.Readdirnames(-1)
	f.Close()
	var socks []string
	for _, n := range names {
		if l, err := os.Readlink(dir + "/" + n); err == nil && strings.HasPrefix(l, "socket:[") {
			socks = append(socks, strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]"))
		}
	}
	if len(socks) == 0 {
		return false
	}
	known := map[string]bool{}
	// Inode is the 7th column of net/unix and the last of net/netlink.
	inodes(procfs.Path(pid, "net/unix"), func(f []string) string { return col(f, 6) }, known)
	inodes(procfs.Path(pid, "net/netlink"), func(f []string) string { return col(f, len(f)-1) }, known)
	for _, s := range socks {
		if !known[s] {
			return true
		}
	}
	return false
}

func col(f []string, i int) string {
	if i < 0 || i >= len(f) {
		return ""
	}
	return f[i]
}

// inodes adds to known the inode pick finds in each line (after the
// header) of the /proc/PID/net list at path.
func inodes(path string, pick func([]string) string, known map[string]bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	lines := strings.Split(string(b), "\n")
	for _, l := range lines[1:] {
		if ino := pick(strings.Fields(l)); ino != "" {
			if _, err := strconv.ParseUint(ino, 10, 64); err == nil {
				known[ino] = true
			}
		}
	}
}
