// Package lab makes a small network of "hosts" on this machine for the
// migration tests and the demo. Each host is a network, PID, mount and UTS
// namespace of its own (so PIDs, /proc and addresses are per host, as on real
// machines), held by a tiny init that is the host's PID 1 and reaps its
// orphans. The hosts' veth pairs join a bridge that lives in a namespace of
// its own, so a lab adds nothing to this machine's network: closing it (or
// the test binary dying, through the inits' parent-death signal) kills the
// inits, and the kernel then removes every process, interface and route the
// lab had.
//
// The init is this same executable run again with an environment marker
// (the package's init function takes over before main or TestMain), so a
// binary that uses the lab needs no helper program.
package lab

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// initEnv marks the re-executed binary as a lab init; its value is the
// hostname to set ("" for the switch).
const initEnv = "GODWIT_LAB_INIT"

// Options shape a lab; the zero value is usable.
type Options struct {
	// Prefix is the first three octets of the hosts' /24 (default
	// "10.77.0"); host i gets Prefix.(i+1). Every lab lives in its own
	// namespaces, so labs running at once may use the same prefix.
	Prefix string
	// Names are the hosts' hostnames (default "host0", "host1", ...).
	Names []string
}

// Lab is a set of hosts on one bridge.
type Lab struct {
	hosts []*Host
	sw    *exec.Cmd // holds the bridge's network namespace
	// nsDir is where, inside every host, the hosts' network namespaces
	// are bound (Host.NetnsPath); an empty directory outside them.
	nsDir string

	mu     sync.Mutex
	closed bool
}

// Host is one namespace set with an address on the lab's bridge.
type Host struct {
	name  string
	addr  netip.Addr
	init  *exec.Cmd
	nsDir string
}

// New starts n hosts joined by a bridge. On error nothing is left behind.
func New(opts Options, n int) (*Lab, error) {
	if n < 1 || n > 250 {
		return nil, fmt.Errorf("lab: %d hosts: want 1 to 250", n)
	}
	prefix := opts.Prefix
	if prefix == "" {
		prefix = "10.77.0"
	}
	if _, err := netip.ParseAddr(prefix + ".1"); err != nil {
		return nil, fmt.Errorf("lab: prefix %q: %w", prefix, err)
	}
	l := &Lab{}
	ok := false
	defer func() {
		if !ok {
			l.Close()
		}
	}()
	sw, err := startInit("", syscall.CLONE_NEWNET)
	if err != nil {
		return nil, fmt.Errorf("lab: switch namespace: %w", err)
	}
	l.sw = sw
	if err := l.inSwitch("link add br0 type bridge", "link set br0 up"); err != nil {
		return nil, err
	}
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("host%d", i)
		if i < len(opts.Names) && opts.Names[i] != "" {
			name = opts.Names[i]
		}
		cmd, err := startInit(name, syscall.CLONE_NEWNET|syscall.CLONE_NEWPID|syscall.CLONE_NEWNS|syscall.CLONE_NEWUTS)
		if err != nil {
			return nil, fmt.Errorf("lab: host %s: %w", name, err)
		}
		h := &Host{name: name, init: cmd, addr: netip.MustParseAddr(fmt.Sprintf("%s.%d", prefix, i+1))}
		l.hosts = append(l.hosts, h)
		veth := fmt.Sprintf("v%d", i)
		if err := l.inSwitch(
			fmt.Sprintf("link add %s type veth peer name eth0 netns %d", veth, cmd.Process.Pid),
			fmt.Sprintf("link set %s master br0", veth),
			fmt.Sprintf("link set %s up", veth),
		); err != nil {
			return nil, err
		}
		if err := ipBatch(cmd.Process.Pid,
			"link set lo up",
			fmt.Sprintf("addr add %s/24 dev eth0", h.addr),
			"link set eth0 up",
		); err != nil {
			return nil, fmt.Errorf("lab: host %s: %w", name, err)
		}
	}
	if err := l.bindNetns(); err != nil {
		return nil, err
	}
	ok = true
	return l, nil
}

// bindNetns binds every host's network namespace into a tmpfs over nsDir
// in each host's own mounts, so that a program on one host (an action
// script) can enter another's network with nsenter --net=PATH, as it
// would reach another machine with ssh. The tmpfs goes with the host.
func (l *Lab) bindNetns() error {
	dir, err := os.MkdirTemp("", "godwit-lab-")
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	l.nsDir = dir
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	script := "mount -t tmpfs -o mode=0700 godwit-lab " + dir
	for i, h := range l.hosts {
		h.nsDir = dir
		f, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", h.InitPID()))
		if err != nil {
			return fmt.Errorf("lab: host %s: %w", h.name, err)
		}
		files = append(files, f)
		p := h.NetnsPath()
		script += fmt.Sprintf(" && touch %s && mount --bind /proc/self/fd/%d %s", p, 3+i, p)
	}
	for _, h := range l.hosts {
		cmd := exec.Command("nsenter", "-t", strconv.Itoa(h.InitPID()), "-m", "-p", "--", "sh", "-c", script)
		cmd.ExtraFiles = files
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("lab: host %s: bind network namespaces: %v: %s", h.name, err, bytes.TrimSpace(out))
		}
	}
	return nil
}

// NetnsPath is where, on every lab host (not on this machine), the
// host's network namespace is bound: nsenter --net=PATH enters it.
func (h *Host) NetnsPath() string { return filepath.Join(h.nsDir, h.name+".net") }

// Hosts returns the lab's hosts in order.
func (l *Lab) Hosts() []*Host { return l.hosts }

// Host returns host i.
func (l *Lab) Host(i int) *Host { return l.hosts[i] }

// Close kills every host's init (and with it every process in the host's
// PID namespace) and the switch's; the kernel then frees the namespaces,
// interfaces and bridge. It waits for the inits to be reaped.
func (l *Lab) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	var errs []error
	for _, h := range l.hosts {
		errs = append(errs, stopInit(h.init))
	}
	if l.sw != nil {
		errs = append(errs, stopInit(l.sw))
	}
	if l.nsDir != "" {
		// Its mounts were the hosts' own: gone with them.
		if err := os.Remove(l.nsDir); err != nil {
			errs = append(errs, fmt.Errorf("lab: %w", err))
		}
	}
	return errors.Join(errs...)
}

func (l *Lab) inSwitch(cmds ...string) error {
	if err := ipBatch(l.sw.Process.Pid, cmds...); err != nil {
		return fmt.Errorf("lab: switch: %w", err)
	}
	return nil
}

// Name is the host's hostname.
func (h *Host) Name() string { return h.name }

// Addr is the host's address on the lab bridge.
func (h *Host) Addr() string { return h.addr.String() }

// InitPID is the PID, in this machine's namespace, of the host's PID 1.
func (h *Host) InitPID() int { return h.init.Process.Pid }

// Command returns a command that runs inside the host's namespaces (its
// network, PIDs, mounts and hostname). The process the caller starts is
// nsenter, which forks the program into the host's PID namespace and waits
// for it; PID finds the program's PID on the host.
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	a := []string{"-t", strconv.Itoa(h.init.Process.Pid), "-n", "-p", "-m", "-u", "--", name}
	cmd := exec.Command("nsenter", append(a, args...)...)
	// No parent-death signal here: it would fire when the (pooled) thread
	// that started the command exits. The program lives in the host's PID
	// namespace and dies with the host's init.
	return cmd
}

// PID returns the PID on the host of the program a started Command runs,
// and its PID in this machine's namespace.
func (h *Host) PID(cmd *exec.Cmd) (hostPID, rootPID int, err error) {
	if cmd.Process == nil {
		return 0, 0, errors.New("lab: command not started")
	}
	np := cmd.Process.Pid
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", np, np))
		if err != nil {
			return 0, 0, fmt.Errorf("lab: children of nsenter %d: %w", np, err)
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			rootPID, _ = strconv.Atoi(f[0])
			break
		}
		if time.Now().After(deadline) {
			return 0, 0, fmt.Errorf("lab: nsenter %d started no program", np)
		}
		time.Sleep(2 * time.Millisecond)
	}
	hostPID, err = NSPid(rootPID)
	return hostPID, rootPID, err
}

// NSPid returns the PID that process rootPID (a PID in this machine's
// namespace) has in its own, innermost PID namespace.
func NSPid(rootPID int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", rootPID))
	if err != nil {
		return 0, fmt.Errorf("lab: status of %d: %w", rootPID, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f, ok := strings.CutPrefix(line, "NSpid:"); ok {
			ids := strings.Fields(f)
			if len(ids) == 0 {
				break
			}
			return strconv.Atoi(ids[len(ids)-1])
		}
	}
	return 0, fmt.Errorf("lab: no NSpid for %d", rootPID)
}

// RootPID returns the PID in this machine's namespace of the process with
// PID hostPID on the host, or an error when there is none.
func (h *Host) RootPID(hostPID int) (int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", h.init.Process.Pid))
	if err != nil {
		return 0, fmt.Errorf("lab: host %s: %w", h.name, err)
	}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", p)); err != nil || l != ns {
			continue
		}
		if q, err := NSPid(p); err == nil && q == hostPID {
			return p, nil
		}
	}
	return 0, fmt.Errorf("lab: host %s has no pid %d", h.name, hostPID)
}

// InNet runs fn on an OS thread that has joined the host's network
// namespace, so sockets fn creates belong to the host (they stay there
// after fn returns). The thread returns to its own namespace afterwards.
// Only fn's own goroutine is in the host: work fn hands to other goroutines
// (an http.Client dials from one) runs in this machine's namespace.
func (h *Host) InNet(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Unlocked only once the thread is back in its own namespace; if
		// that fails the goroutine ends locked and Go discards the thread.
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer self.Close()
		f, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", h.init.Process.Pid))
		if err != nil {
			errc <- fmt.Errorf("lab: host %s: %w", h.name, err)
			runtime.UnlockOSThread()
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("lab: host %s: setns: %w", h.name, err)
			runtime.UnlockOSThread()
			return
		}
		err = fn()
		if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// AddAddress puts a service address (a /32 or /128: addr alone) on the
// host's lab interface, beside its own.
func (h *Host) AddAddress(addr netip.Addr) error {
	return h.ip("addr add " + hostPrefix(addr) + " dev eth0")
}

// DelAddress takes a service address off the host.
func (h *Host) DelAddress(addr netip.Addr) error {
	return h.ip("addr del " + hostPrefix(addr) + " dev eth0")
}

// HasAddress reports whether addr is on the host's lab interface.
func (h *Host) HasAddress(addr netip.Addr) (bool, error) {
	cmd := exec.Command("nsenter", "-t", strconv.Itoa(h.init.Process.Pid), "-n", "--", "ip", "-o", "addr", "show", "dev", "eth0")
	out, err := cmd.Output()
	if err != nil {
		return false, fmt.Errorf("lab: host %s: ip addr: %w", h.name, err)
	}
	return bytes.Contains(out, []byte(" "+hostPrefix(addr)+" ")), nil
}

func (h *Host) ip(c string) error {
	if err := ipBatch(h.init.Process.Pid, c); err != nil {
		return fmt.Errorf("lab: host %s: %w", h.name, err)
	}
	return nil
}

func hostPrefix(addr netip.Addr) string {
	return netip.PrefixFrom(addr, addr.BitLen()).String()
}

// MoveAddressScript is an --action-script for `migrate send` (run on the
// source host) that moves the service address addr from host from to host
// to with the migration, as a user's own script would with ssh: post-dump
// (the tree frozen, its connections locked here) takes it off from;
// pre-restore (the destination holds the connections' lock) puts it on
// to and has each of clients forget the old neighbour entry, as a
// gratuitous ARP or an unsolicited neighbour advertisement would;
// migrate-abort (the migration failed, the source runs on) moves it back,
// from wherever it is by then (the failure may come before pre-restore).
// The lab reaches every host through nsenter and Host.NetnsPath.
func MoveAddressScript(addr netip.Addr, from, to *Host, clients ...*Host) string {
	in := func(h *Host, c string) string {
		return fmt.Sprintf("nsenter --net=%s -- ip %s", h.NetnsPath(), c)
	}
	flush := "true"
	for _, c := range clients {
		flush += " && " + in(c, "neigh flush to "+addr.String())
	}
	p := hostPrefix(addr)
	return fmt.Sprintf(`case "$CRTOOLS_SCRIPT_ACTION" in
post-dump) %s ;;
pre-restore) %s && %s ;;
migrate-abort) { %s || true; } && %s && %s ;;
esac`, in(from, "addr del "+p+" dev eth0"), in(to, "addr add "+p+" dev eth0"), flush,
		in(to, "addr del "+p+" dev eth0 2>/dev/null"), in(from, "addr replace "+p+" dev eth0"), flush)
}

// cutTable is the nftables table Cut adds in the host's network namespace.
const cutTable = "godwit_lab_cut"

// Cut drops every packet in and out of the host's lab interface, as a
// pulled cable would: peers see silence, not resets. Heal undoes it.
func (h *Host) Cut() error {
	rules := fmt.Sprintf(`table inet %[1]s {
	chain in { type filter hook prerouting priority -400; iifname "eth0" drop; }
	chain out { type filter hook output priority -400; oifname "eth0" drop; }
}
`, cutTable)
	return h.nft(rules, "-f", "-")
}

// Heal removes what Cut added.
func (h *Host) Heal() error { return h.nft("", "delete", "table", "inet", cutTable) }

func (h *Host) nft(stdin string, args ...string) error {
	a := append([]string{"-t", strconv.Itoa(h.init.Process.Pid), "-n", "--", "nft"}, args...)
	cmd := exec.Command("nsenter", a...)
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("lab: host %s: nft %s: %v: %s", h.name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func ipBatch(pid int, cmds ...string) error {
	cmd := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-n", "--", "ip", "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip %q: %v: %s", cmds, err, bytes.TrimSpace(out))
	}
	return nil
}

// startInit runs this executable again as a lab init in new namespaces and
// waits until it has set them up.
func startInit(hostname string, flags uintptr) (*exec.Cmd, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{"godwit-lab-init"}
	cmd.Env = []string{initEnv + "=" + hostname, "GOMAXPROCS=1", "PATH=" + os.Getenv("PATH")}
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: flags, Pdeathsig: syscall.SIGKILL, Setsid: true}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = spawn(cmd)
	w.Close()
	if err != nil {
		return nil, err
	}
	buf := make([]byte, 1)
	if n, _ := r.Read(buf); n != 1 {
		_ = stopInit(cmd)
		return nil, fmt.Errorf("init did not start: %s", bytes.TrimSpace(stderr.Bytes()))
	}
	return cmd, nil
}

// The parent-death signal of an init fires when the thread that forked it
// exits, and Go ends a thread whenever a goroutine that locked it returns
// (ptrace and setns code does that). So inits are forked from one thread
// that stays locked, and alive, for the life of the process.
var (
	spawnOnce sync.Once
	spawnReq  chan spawnCall
)

type spawnCall struct {
	cmd *exec.Cmd
	err chan error
}

func spawn(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnReq = make(chan spawnCall)
		go func() {
			runtime.LockOSThread()
			for c := range spawnReq {
				c.err <- c.cmd.Start()
			}
		}()
	})
	c := spawnCall{cmd: cmd, err: make(chan error, 1)}
	spawnReq <- c
	return <-c.err
}

func stopInit(cmd *exec.Cmd) error {
	if cmd == nil || cmd.Process == nil {
		return nil
	}
	// The host's programs whose nsenter is gone were adopted by the reaper
	// of nsenter's namespace, not the host's: by this process when it is
	// PID 1 itself (a test run in its own PID namespace, as in CI). The
	// kernel ends the host's namespace only once every task in it is reaped,
	// so those are reaped here.
	members := nsMembers(cmd.Process.Pid)
	// SIGKILL to a PID namespace's init kills every process in it.
	if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("lab: kill init %d: %w", cmd.Process.Pid, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case <-done:
			return nil
		case <-deadline:
			return fmt.Errorf("lab: init %d did not exit", cmd.Process.Pid)
		case <-time.After(20 * time.Millisecond):
		}
		for _, p := range members {
			if parentOf(p) == os.Getpid() {
				var ws unix.WaitStatus
				_, _ = unix.Wait4(p, &ws, unix.WNOHANG, nil)
			}
		}
	}
}

// nsMembers lists the processes (root PIDs) in init's PID namespace.
func nsMembers(init int) []int {
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", init))
	if err != nil {
		return nil
	}
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil || p == init {
			continue
		}
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", p)); err == nil && l == ns {
			out = append(out, p)
		}
	}
	return out
}

// parentOf returns the parent PID of p, or 0.
func parentOf(p int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0
	}
	pp, _ := strconv.Atoi(f[1])
	return pp
}

func init() {
	hostname, ok := os.LookupEnv(initEnv)
	if !ok {
		return
	}
	err := initMain(hostname)
	fmt.Fprintln(os.Stderr, "godwit-lab-init:", err)
	os.Exit(1)
}

// initMain is the host's PID 1: it gives the host its own /proc and /sys,
// reports ready on fd 3, then reaps orphans until it is killed; it returns
// only on a setup error.
func initMain(hostname string) error {
	if os.Getpid() == 1 {
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			return fmt.Errorf("make mounts private: %w", err)
		}
		if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("mount /proc: %w", err)
		}
		// /sys shows the host's own network interfaces.
		if err := unix.Mount("sysfs", "/sys", "sysfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("mount /sys: %w", err)
		}
		if err := unix.Sethostname([]byte(hostname)); err != nil {
			return fmt.Errorf("sethostname: %w", err)
		}
	}
	ready := os.NewFile(3, "ready")
	if _, err := ready.Write([]byte{1}); err != nil {
		return err
	}
	ready.Close()
	for {
		var ws unix.WaitStatus
		if _, err := unix.Wait4(-1, &ws, 0, nil); err == unix.ECHILD {
			time.Sleep(50 * time.Millisecond)
		}
	}
}
