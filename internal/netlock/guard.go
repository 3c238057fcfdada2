package netlock

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The guard removes the lock when godwit dies holding it (SIGKILL, a
// crash): a process in a session of its own, started before the first
// rule, that reads lines from a pipe whose only writer is godwit.
// godwit writes "keep" when the rules are its business again (removed,
// or kept for the restore), "remove" when it leaves their removal to
// the guard; any other end of the pipe (EOF: godwit is gone, by
// whatever death) makes the guard remove the rules. A pipe's
// EOF, unlike PR_SET_PDEATHSIG, does not fire when the Go thread that
// started the guard exits, and cannot be missed if godwit dies before
// the guard ran. The guard removes twice, a second apart: a firewall
// command godwit had running when it died may still land its rules
// after the first.
//
// The guard is godwit itself re-executed (see init): the nftables lock
// is deleted over netlink (no nft(8) needed), the iptables lock with
// the iptables commands it was made with.
//
// A migration's destination (GuardDestination) tells the guard more
// before any death: the locked connections and their local addresses.
// Should godwit die then, the guard keeps the rules while one of those
// addresses is on this host (the source's scripts moved the service
// address here and will move it back: until then the peers' packets
// reach this host, which has no socket for them and would answer with
// resets), at most a bound; it then destroys under the lock whatever
// sockets of those connections a restore left here (their FIN or reset
// would reach the peers once the rules go), and removes the rules.
type guard struct {
	cmd *exec.Cmd
	w   *os.File
}

const (
	guardEnv       = "GODWIT_NETLOCK_GUARD"        // the lock's name
	guardMethodEnv = "GODWIT_NETLOCK_GUARD_METHOD" // its Method
	guardNetnsEnv  = "GODWIT_NETLOCK_GUARD_NETNS"  // "1": the rules' namespace is fd 3
	guardComm      = "godwit-netlock-guard"
)

func init() {
	name, ok := os.LookupEnv(guardEnv)
	if !ok {
		return
	}
	os.Exit(guardMain(Method(os.Getenv(guardMethodEnv)), name, os.Getenv(guardNetnsEnv) == "1", os.Stdin))
}

// guardOrders is what godwit told the guard before it died.
type guardOrders struct {
	keep bool
	// dest: a destination's lock (GuardDestination): linger while one
	// of locals is on this host, at most linger, then destroy conns.
	dest   bool
	linger time.Duration
	locals []netip.Addr
	conns  []Conn
}

// readOrders reads the guard's pipe until EOF or "keep"; lines it does
// not know are ignored (the pipe is godwit's own).
func readOrders(r io.Reader) guardOrders {
	var o guardOrders
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 1 && f[0] == "keep":
			o.keep = true
			return o
		case len(f) == 1 && f[0] == "remove":
			// godwit, alive, leaves the removal to the guard (its
			// own failed): at once, whatever it told before.
			o.dest = false
			return o
		case len(f) == 1 && f[0] == "live":
			// The migrated program runs (or is about to) on these
			// sockets: a later death of godwit removes the rules at
			// once and destroys nothing.
			o.dest, o.linger, o.locals, o.conns = false, 0, nil, nil
		case len(f) == 2 && f[0] == "dest":
			if ms, err := strconv.ParseInt(f[1], 10, 64); err == nil && ms > 0 {
				o.dest, o.linger = true, time.Duration(ms)*time.Millisecond
			}
		case len(f) == 2 && f[0] == "local":
			if a, err := netip.ParseAddr(f[1]); err == nil {
				o.locals = append(o.locals, a)
			}
		case len(f) == 3 && f[0] == "conn":
			l, err1 := netip.ParseAddrPort(f[1])
			r, err2 := netip.ParseAddrPort(f[2])
			if err1 == nil && err2 == nil {
				o.conns = append(o.conns, Conn{Local: l, Remote: r})
			}
		}
	}
	return o
}

// guardMain is the guard process: in is the pipe.
func guardMain(method Method, name string, inNetns bool, in io.Reader) int {
	// Its own session already; a signal sent to godwit's old group or
	// a hangup must not stop it before it removed the rules.
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGPIPE)
	if !validName(name) || (method != Nftables && method != Iptables) {
		return 2
	}
	var netns *os.File
	if inNetns {
		netns = os.NewFile(3, "netns")
	}
	o := readOrders(in)
	if o.keep {
		return 0
	}
	if o.dest {
		lingerWhileLocal(netns, o.locals, o.linger, true)
		destroyConns(netns, o.conns)
	}
	l := &Lock{method: method, name: name, netns: netns}
	remove := func() {
		if method == Nftables {
			nftDeleteTable(netns, name)
			return
		}
		_ = commandIn(netns, "/bin/sh", "-c", l.cleanupScript()).Run()
	}
	remove()
	time.Sleep(time.Second)
	remove()
	return 0
}

// guardPoll is how often a destination's guard looks for its addresses.
const guardPoll = 100 * time.Millisecond

// lingerWhileLocal waits while one of addrs is an address of this host
// (the namespace netns), at most max; with none here from the start, it
// waits for one to come as long if arrival (the source may be moving it
// here), else returns at once.
func lingerWhileLocal(netns *os.File, addrs []netip.Addr, max time.Duration, arrival bool) {
	if len(addrs) == 0 {
		return // no address to come or go (wildcard listeners only)
	}
	deadline := time.Now().Add(max)
	seen := !arrival
	for time.Now().Before(deadline) {
		here, err := anyLocal(netns, addrs)
		if err != nil {
			return // cannot tell: no longer than the guard always did
		}
		if here {
			seen = true
		} else if seen {
			return // moved back to the source: nothing reaches us now
		}
		time.Sleep(guardPoll)
	}
}

// anyLocal reports whether one of addrs is an address of the namespace
// netns (ip(8): the guard may be outside it).
func anyLocal(netns *os.File, addrs []netip.Addr) (bool, error) {
	if len(addrs) == 0 {
		return false, nil
	}
	out, err := commandIn(netns, "ip", "-o", "addr", "show").Output()
	if err != nil {
		return false, err
	}
	return addrsIn(string(out), addrs), nil
}

// addrsIn reports whether `ip -o addr show` output lists one of addrs.
func addrsIn(ipOut string, addrs []netip.Addr) bool {
	for _, ln := range strings.Split(ipOut, "\n") {
		f := strings.Fields(ln)
		for i := 0; i+1 < len(f); i++ {
			if f[i] != "inet" && f[i] != "inet6" {
				continue
			}
			p, err := netip.ParsePrefix(f[i+1])
			if err != nil {
				continue
			}
			for _, a := range addrs {
				if p.Addr() == a.Unmap().WithZone("") {
					return true
				}
			}
		}
	}
	return false
}

// destroyConns destroys the sockets of conns in the namespace netns
// (ss -K: sock_diag SOCK_DESTROY), under the lock: the reset a destroyed
// connection sends is dropped, and none of them sends anything after.
func destroyConns(netns *os.File, conns []Conn) {
	for _, c := range conns {
		_ = commandIn(netns, "ss", "-K", "-tn", "src", c.Local.String(), "dst", c.Remote.String()).Run()
	}
}

// GuardDestination tells the guard that this lock is a migration
// destination's (see guard): should godwit die holding it, the rules
// stay while a local address of the locked connections is on this host,
// at most max, then the connections' sockets here are destroyed under
// the lock and the rules removed. Call it after Lock (the connections it
// names are those locked by then). A lock without rules has no guard:
// nothing to do.
func (l *Lock) GuardDestination(max time.Duration) error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.guard == nil || l.done {
		return nil
	}
	var b strings.Builder
	seen := map[netip.Addr]bool{}
	for c := range l.conns {
		a := c.Local.Addr()
		if !seen[a] {
			seen[a] = true
			fmt.Fprintf(&b, "local %s\n", a)
		}
		fmt.Fprintf(&b, "conn %s %s\n", c.Local, c.Remote)
	}
	for a := range l.lists {
		if !a.Addr().IsUnspecified() && !seen[a.Addr()] {
			seen[a.Addr()] = true
			fmt.Fprintf(&b, "local %s\n", a.Addr())
		}
	}
	fmt.Fprintf(&b, "dest %d\n", max.Milliseconds())
	if _, err := l.guard.w.Write([]byte(b.String())); err != nil {
		return fmt.Errorf("network lock %s: guard: %w", l.name, err)
	}
	return nil
}

// Resuming tells the guard of a destination's lock that the migrated
// program is about to run on the locked connections' sockets (the source
// has committed): should godwit die from now on, the guard removes the
// rules at once and destroys no socket (GuardDestination's orders are
// void; they would reset the live program's peers). Call it before any
// restored task runs.
func (l *Lock) Resuming() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.guard == nil || l.done {
		return nil
	}
	if _, err := l.guard.w.Write([]byte("live\n")); err != nil {
		return fmt.Errorf("network lock %s: guard: %w", l.name, err)
	}
	return nil
}

// LingerWhileLocal is the guard's wait of GuardDestination, for a living
// godwit whose source went silent: it returns once none of the
// connections' or listeners' addresses (as GuardDestination's) is on this
// host (at once if none is), or at deadline.
func (l *Lock) LingerWhileLocal(deadline time.Time) {
	if l == nil {
		return
	}
	l.mu.Lock()
	netns := l.netns
	var addrs []netip.Addr
	for c := range l.conns {
		addrs = append(addrs, c.Local.Addr())
	}
	for a := range l.lists {
		if !a.Addr().IsUnspecified() {
			addrs = append(addrs, a.Addr())
		}
	}
	l.mu.Unlock()
	if len(addrs) > 0 {
		lingerWhileLocal(netns, addrs, time.Until(deadline), false)
	}
}

// startGuard starts the guard of l's rules in the network namespace
// netns (nil: ours).
func (l *Lock) startGuard(netns *os.File) (*guard, error) {
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{guardComm}
	cmd.Env = []string{guardEnv + "=" + l.name, guardMethodEnv + "=" + string(l.method),
		// ip(8), ss(8), iptables(8) and nsenter(1) are looked up here.
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	if netns != nil {
		cmd.Env = append(cmd.Env, guardNetnsEnv+"=1")
		cmd.ExtraFiles = []*os.File{netns}
	}
	r, w, err := os.Pipe() // close-on-exec: no other child holds the writer
	if err != nil {
		return nil, fmt.Errorf("network lock guard: %w", err)
	}
	cmd.Stdin = r
	// Its own session: a ^C or a kill of godwit's group must not stop
	// it before it removed the rules.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	r.Close()
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("network lock guard: %w", err)
	}
	return &guard{cmd: cmd, w: w}, nil
}

// release ends the guard: with keep, it leaves the rules as they are;
// without, it removes them. It waits for the guard to exit.
func (g *guard) release(keep bool) {
	if g == nil {
		return
	}
	if keep {
		g.w.Write([]byte("keep\n")) // a dead guard removes nothing either way
	} else {
		g.w.Write([]byte("remove\n"))
	}
	g.w.Close()
	g.cmd.Wait()
}
