// Package netlock is the network lock of a dump and its restore: while a
// tree is frozen, and until its connections are restored, the packets of
// those connections are dropped by firewall rules, so that a peer sees
// only delay (its retransmissions go unanswered) and never a reset from
// a socket that is gone or in repair mode.
//
// Two scopes, as CRIU has them:
//   - the tree shares godwit's network namespace: a rule for each TCP
//     connection of the tree, matched by its 4-tuple in both directions
//     (Lock, called by the socket drivers before a connection goes into
//     repair mode);
//   - the tree has a network namespace of its own: every packet of that
//     namespace is dropped (LockNetns), the network-lock and
//     network-unlock action scripts run around it.
//
// Rules are made in an nftables table of the lock's own (the default),
// over netfilter netlink (nfnl.go, nfrules.go: one batch per step, the
// connections' 4-tuples as set elements), or with iptables(8)/
// ip6tables(8) in a chain of its own; "skip" makes none. Either way the rules are always removed on failure: a guard
// process (see guard.go) removes them when godwit dies before it decided
// to keep them for a restore.
package netlock

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"

	"godwit/internal/netnsid"
)

// Method is how the lock is made (criu(8)'s --network-lock).
type Method string

// The --network-lock methods.
const (
	Nftables Method = "nftables"
	Iptables Method = "iptables"
	Skip     Method = "skip"
	// Default is godwit's default method (CRIU builds choose theirs;
	// nftables is the firewall of current distributions).
	Default = Nftables
)

// ParseMethod checks a --network-lock argument; "" is the default.
func ParseMethod(s string) (Method, error) {
	switch Method(s) {
	case "":
		return Default, nil
	case Nftables, Iptables, Skip:
		return Method(s), nil
	}
	return "", fmt.Errorf("bad --network-lock %q: want iptables, nftables or skip", s)
}

// Conn is one TCP connection of the tree, as the tree sees it.
type Conn struct {
	Local, Remote netip.AddrPort
}

func (c Conn) String() string { return c.Local.String() + "<->" + c.Remote.String() }

// v4 reports whether the connection is IPv4 on the wire (a v4-mapped v6
// address is: its packets carry IPv4 headers).
func (c Conn) v4() bool { return c.Local.Addr().Unmap().Is4() }

func (c Conn) unmap() Conn {
	return Conn{
		Local:  netip.AddrPortFrom(c.Local.Addr().Unmap(), c.Local.Port()),
		Remote: netip.AddrPortFrom(c.Remote.Addr().Unmap(), c.Remote.Port()),
	}
}

// Mark is the packet mark that passes the lock (SO_MARK on a socket
// godwit sends through while the lock is on: the restore's replayed FIN,
// or one godwit needs in a locked namespace).
const Mark = 0x60d317

// newName names a new lock of the tree rooted at pid (the nftables
// table or the iptables chains' prefix): "godwit-PID-TOKEN", TOKEN eight
// random hex digits. The dump records it for the restore (Record); the
// token keeps a record, crafted or stale, from naming the lock of another
// dump of the same PID. It fits iptables' chain names (28 bytes) with
// its "-out" suffix.
func newName(pid int) (string, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("network lock name: %w", err)
	}
	return fmt.Sprintf("godwit-%d-%s", pid, hex.EncodeToString(b[:])), nil
}

// Record says what lock a dump left in place for its restore; the dump
// writes it into the images (RecordFile) when it keeps the lock.
type Record struct {
	Method Method `json:"method"`
	Name   string `json:"name"`
	// Netns: the whole network namespace of the tree is locked (the
	// restore runs the network-unlock scripts).
	Netns bool `json:"netns,omitempty"`
	// Ns is the network namespace the rules are in (absent in the
	// records of older dumps: the restore's own). A restore in another
	// namespace (--join-ns) removes them there if it can reach it.
	Ns *netnsid.ID `json:"ns,omitempty"`
}

// RecordFile is the godwit image that holds a Record.
const RecordFile = "godwit-netlock.json"

// ParseRecord reads a RecordFile's contents.
func ParseRecord(b []byte) (Record, error) {
	var r Record
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return Record{}, fmt.Errorf("%s: %w", RecordFile, err)
	}
	if r.Method != Nftables && r.Method != Iptables && (r.Method != Skip || !r.Netns) {
		return Record{}, fmt.Errorf("%s: bad method %q", RecordFile, r.Method)
	}
	if !validName(r.Name) {
		return Record{}, fmt.Errorf("%s: bad lock name %q", RecordFile, r.Name)
	}
	return r, nil
}

// validName admits only the names newName makes: they reach nft and
// iptables command lines, and a restore deletes what its record names.
func validName(s string) bool {
	rest, ok := strings.CutPrefix(s, "godwit-")
	if !ok {
		return false
	}
	pid, token, ok := strings.Cut(rest, "-")
	if !ok || pid == "" || len(pid) > 7 || len(token) != 8 || pid[0] == '0' {
		return false
	}
	for _, c := range pid {
		if c < '0' || c > '9' {
			return false
		}
	}
	for _, c := range token {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Lock is the network lock of one tree. Its methods are safe for
// concurrent use (drivers may lock connections as they find them).
type Lock struct {
	mu     sync.Mutex
	method Method
	name   string
	netns  *os.File // the namespace the rules live in; nil: godwit's
	whole  bool     // the whole namespace is locked
	made   bool     // the table / chains exist
	v6     bool     // iptables: the ip6tables chain exists
	conns  map[Conn]bool
	lists  map[netip.AddrPort]bool // listeners locked
	guard  *guard
	done   bool // unlocked or kept: nothing more to do

	nsID   netnsid.ID // the rules' namespace, for the Record
	nsPath string     // a path to it for RemoveCommand ("": godwit's)
	// unreached: the rules were made in a namespace the restore cannot
	// reach (Unreached).
	unreached string
}

// New prepares the lock of the tree rooted at pid, in the network
// namespace at netnsPath ("" for godwit's own). Nothing is installed
// until Lock or LockNetns.
func New(method Method, pid int, netnsPath string) (*Lock, error) {
	if method == "" {
		method = Default
	}
	if _, err := ParseMethod(string(method)); err != nil {
		return nil, err
	}
	name, err := newName(pid)
	if err != nil {
		return nil, err
	}
	l := &Lock{method: method, name: name, conns: map[Conn]bool{}, lists: map[netip.AddrPort]bool{}}
	if netnsPath == "" {
		if l.nsID, err = netnsid.Self(); err != nil {
			return nil, fmt.Errorf("network lock: %w", err)
		}
		return l, nil
	}
	if l.nsID, err = netnsid.Of(netnsPath); err != nil {
		return nil, fmt.Errorf("network lock: %w", err)
	}
	if method != Skip {
		f, err := os.Open(netnsPath)
		if err != nil {
			return nil, fmt.Errorf("network lock: %w", err)
		}
		l.netns = f
	}
	return l, nil
}

// Method is the lock's method.
func (l *Lock) Method() Method { return l.method }

// Name is the lock's table or chain name.
func (l *Lock) Name() string { return l.name }

// Active reports whether rules are installed and owned by this Lock.
func (l *Lock) Active() bool {
	if l == nil {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.made && !l.done
}

// Conns lists the locked connections, sorted.
func (l *Lock) Conns() []Conn {
	l.mu.Lock()
	defer l.mu.Unlock()
	var cs []Conn
	for c := range l.conns {
		cs = append(cs, c)
	}
	slices.SortFunc(cs, func(a, b Conn) int {
		if c := a.Local.Compare(b.Local); c != 0 {
			return c
		}
		return a.Remote.Compare(b.Remote)
	})
	return cs
}

// Count is the number of locked connections.
func (l *Lock) Count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// Lock drops every packet of conns from now on, in both directions, until
// Unlock (or, after Keep, until the restore unlocks). It may be called
// again with more connections. A nil Lock and method skip lock nothing.
func (l *Lock) Lock(conns []Conn) error {
	if l == nil || l.method == Skip || len(conns) == 0 {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return errors.New("network lock: already released")
	}
	var fresh []Conn
	for _, c := range conns {
		if !c.Local.IsValid() || !c.Remote.IsValid() {
			return fmt.Errorf("network lock: connection %v: incomplete address", c)
		}
		c = c.unmap()
		if c.Local.Addr().Is4() != c.Remote.Addr().Is4() {
			return fmt.Errorf("network lock: connection %v mixes IPv4 and IPv6", c)
		}
		if !l.conns[c] {
			fresh = append(fresh, c)
		}
	}
	if len(fresh) == 0 {
		return nil
	}
	if err := l.install(false, fresh); err != nil {
		return fmt.Errorf("network lock %s: %w", l.name, err)
	}
	for _, c := range fresh {
		l.conns[c] = true
	}
	return nil
}

// LockListeners drops the connection requests (SYN) to the TCP listeners
// at addrs (an unspecified address: every local one), so that a client
// connecting while the tree is gone retries (its SYN is retransmitted)
// instead of being refused. It may be called again with more.
func (l *Lock) LockListeners(addrs []netip.AddrPort) error {
	if l == nil || l.method == Skip || len(addrs) == 0 {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return errors.New("network lock: already released")
	}
	var fresh []netip.AddrPort
	for _, a := range addrs {
		if !a.IsValid() || a.Port() == 0 {
			return fmt.Errorf("network lock: listener %v: incomplete address", a)
		}
		a = netip.AddrPortFrom(a.Addr().Unmap().WithZone(""), a.Port())
		if !l.lists[a] {
			fresh = append(fresh, a)
		}
	}
	if len(fresh) == 0 {
		return nil
	}
	if err := l.installListeners(fresh); err != nil {
		return fmt.Errorf("network lock %s: %w", l.name, err)
	}
	for _, a := range fresh {
		l.lists[a] = true
	}
	return nil
}

// LockNetns drops every packet of the lock's network namespace but those
// marked with Mark, until Unlock. With method skip it only records that
// the lock is the namespace's (its action scripts are the lock then).
func (l *Lock) LockNetns() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return errors.New("network lock: already released")
	}
	if l.whole {
		return nil
	}
	if l.method == Skip {
		l.whole = true
		return nil
	}
	if err := l.install(true, nil); err != nil {
		return fmt.Errorf("network lock %s (whole namespace): %w", l.name, err)
	}
	l.whole = true
	return nil
}

// installListeners makes the table or chains if need be and adds the
// listeners' rules.
func (l *Lock) installListeners(addrs []netip.AddrPort) error {
	if err := l.ensure(); err != nil {
		return err
	}
	return l.addListeners(addrs)
}

// ensure makes the table or chains, the first time with the guard.
func (l *Lock) ensure() error {
	if !l.made {
		// The guard first: were godwit killed between the two,
		// the rules must not outlive it.
		g, err := l.startGuard(l.netns)
		if err != nil {
			return err
		}
		l.guard = g
		if err := l.create(); err != nil {
			l.guard.release(false)
			l.guard = nil
			return err
		}
		l.made = true
	}
	return nil
}

// install makes the table or chains if need be and adds rules for conns
// or for the whole namespace.
func (l *Lock) install(whole bool, conns []Conn) error {
	if err := l.ensure(); err != nil {
		return err
	}
	if whole {
		return l.addWhole()
	}
	return l.addConns(conns)
}

// Unlock removes the rules; the connections' packets flow again. It is
// idempotent, and a no-op on a nil Lock.
func (l *Lock) Unlock() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return nil
	}
	l.done = true
	defer l.closeNetns()
	if !l.made {
		return nil
	}
	err := l.remove()
	// After a failed removal the guard tries again as it exits.
	l.guard.release(err == nil)
	l.guard = nil
	if err != nil {
		return fmt.Errorf("network unlock %s: %w", l.name, err)
	}
	return nil
}

// Keep leaves the rules in place when godwit exits (a dump whose tree is
// gone: the restore unlocks) and returns what the restore needs to find
// them; ok is false when no rules were made.
func (l *Lock) Keep() (r Record, ok bool) {
	if l == nil {
		return Record{}, false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok = l.record()
	l.done = true
	l.guard.release(true)
	l.guard = nil
	l.closeNetns()
	return r, ok
}

// RemoveCommand is the shell command that removes the lock's rules by
// hand ("true" for a skip lock: godwit made none).
// For a lock in another namespace than godwit's it enters that one.
func (l *Lock) RemoveCommand() string {
	if l.nsPath == "" {
		return l.cleanupScript()
	}
	return "nsenter --net=" + l.nsPath + " -- sh -c '" + l.cleanupScript() + "'"
}

// Record is what Keep would return now.
func (l *Lock) Record() (Record, bool) {
	if l == nil {
		return Record{}, false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.record()
}

func (l *Lock) record() (Record, bool) {
	if l.done || !(l.made || l.whole) {
		return Record{}, false
	}
	r := Record{Method: l.method, Name: l.name, Netns: l.whole}
	if l.nsID.Ino != 0 {
		id := l.nsID
		r.Ns = &id
	}
	return r, true
}

// Adopt takes over the lock a dump kept, in the network namespace the
// record names (godwit's own when it names none): from now on it is
// removed by Unlock, or by the guard if godwit dies first. A restore in
// another namespace than the locked one (--join-ns) finds that namespace
// by a /run/netns entry or a task in it; when none is left the lock is
// not adopted and Unreached says how to remove it by hand. A lock that
// is not there (removed by hand, gone with its namespace, or a dump with
// skip) is not an error: Unlock then does nothing.
func Adopt(r Record) (*Lock, error) {
	if r.Ns == nil || r.Method == Skip {
		// Skip: the scripts' lock, nothing of godwit's to remove.
		return adopt(r, nil)
	}
	self, err := netnsid.Self()
	if err != nil {
		return nil, fmt.Errorf("network lock %s: %w", r.Name, err)
	}
	if *r.Ns == self {
		return adopt(r, nil)
	}
	f, path, err := netnsid.Find(*r.Ns)
	if err != nil {
		return nil, fmt.Errorf("network lock %s: %w", r.Name, err)
	}
	if f == nil {
		l, err := record2lock(r)
		if err != nil {
			return nil, err
		}
		l.done = true
		l.unreached = fmt.Sprintf("network lock %s was made in network namespace %s, which is not reachable from here (no /run/netns entry, no task in it): if that namespace still exists, remove the lock in it: nsenter --net=NSFILE -- sh -c '%s'", r.Name, r.Ns, l.cleanupScript())
		return l, nil
	}
	l, err := adopt(r, f)
	if err != nil {
		f.Close()
		return nil, err
	}
	l.nsPath = path
	return l, nil
}

// Unreached is, for a lock Adopt could not reach, the message that says
// how to remove it by hand; "" otherwise.
func (l *Lock) Unreached() string {
	if l == nil {
		return ""
	}
	return l.unreached
}

// record2lock is the Lock a record names, not yet looked for.
func record2lock(r Record) (*Lock, error) {
	if _, err := ParseMethod(string(r.Method)); err != nil || (r.Method == Skip && !r.Netns) || !validName(r.Name) {
		return nil, fmt.Errorf("network lock: bad record %+v", r)
	}
	l := &Lock{method: r.Method, name: r.Name, conns: map[Conn]bool{}, lists: map[netip.AddrPort]bool{}, whole: r.Netns}
	if r.Ns != nil {
		l.nsID = *r.Ns
	}
	return l, nil
}

// adopt is Adopt in the network namespace netns (nil: ours).
func adopt(r Record, netns *os.File) (*Lock, error) {
	l, err := record2lock(r)
	if err != nil {
		return nil, err
	}
	l.netns = netns
	if r.Method == Skip {
		return l, nil // the scripts' lock: nothing of godwit's to remove
	}
	exists, err := l.exists()
	if err != nil {
		return nil, fmt.Errorf("network lock %s: %w", l.name, err)
	}
	if !exists {
		l.done = true
		l.closeNetns()
		return l, nil
	}
	g, err := l.startGuard(netns)
	if err != nil {
		return nil, err
	}
	l.guard = g
	l.made = true
	return l, nil
}

// Netns reports whether the lock covers a whole network namespace.
func (l *Lock) Netns() bool {
	if l == nil {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.whole
}

// GuardPID is the guard process's PID (0: none), for tests.
func (l *Lock) GuardPID() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.guard == nil {
		return 0
	}
	return l.guard.cmd.Process.Pid
}

func (l *Lock) closeNetns() {
	if l.netns != nil {
		l.netns.Close()
		l.netns = nil
	}
}

// run runs a firewall command in the lock's namespace, with stdin.
func (l *Lock) run(stdin string, argv ...string) error {
	cmd := commandIn(l.netns, argv...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(argv, " "), err, firstLine(out))
	}
	return nil
}

// commandIn is argv run in the network namespace netns (nil: ours):
// through nsenter(1), which enters it from the descriptor it inherits.
func commandIn(netns *os.File, argv ...string) *exec.Cmd {
	if netns == nil {
		return exec.Command(argv[0], argv[1:]...)
	}
	cmd := exec.Command("nsenter", append([]string{"--net=/proc/self/fd/3", "--"}, argv...)...)
	cmd.ExtraFiles = []*os.File{netns}
	return cmd
}

func firstLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}
