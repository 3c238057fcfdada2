package netlock

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// testNetns is a network namespace of the test's own, with lo up.
type testNetns struct{ f *os.File }

func newTestNetns(t *testing.T) *testNetns {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the network lock tests need root (network namespaces, firewall rules)")
	}
	ch := make(chan any)
	go func() {
		// The thread is never unlocked: the runtime discards it, and
		// its namespace lives on in the descriptor.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ch <- err
			return
		}
		f, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			ch <- err
			return
		}
		ch <- f
	}()
	var f *os.File
	switch v := (<-ch).(type) {
	case error:
		t.Fatal(v)
	case *os.File:
		f = v
	}
	t.Cleanup(func() { f.Close() })
	if out, err := commandIn(f, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	return &testNetns{f: f}
}

// path names the namespace for New.
func (n *testNetns) path() string { return "/proc/self/fd/" + strconv.Itoa(int(n.f.Fd())) }

// do runs fn on a thread inside the namespace (sockets made there belong
// to it).
func (n *testNetns) do(fn func() error) error {
	ch := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread is discarded
		if err := unix.Setns(int(n.f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- err
			return
		}
		ch <- fn()
	}()
	return <-ch
}

// pair makes a connected TCP pair on loopback in the namespace: server is
// the tree's end, client the peer's.
func (n *testNetns) pair(t *testing.T, addr string) (server, client *net.TCPConn) {
	t.Helper()
	err := n.do(func() error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		defer ln.Close()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			return err
		}
		s, err := ln.Accept()
		if err != nil {
			c.Close()
			return err
		}
		server, client = s.(*net.TCPConn), c.(*net.TCPConn)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

func connOf(c *net.TCPConn) Conn {
	return Conn{Local: c.LocalAddr().(*net.TCPAddr).AddrPort(), Remote: c.RemoteAddr().(*net.TCPAddr).AddrPort()}
}

// abort closes c with a reset (SO_LINGER 0), as a socket that vanishes.
func abort(t *testing.T, c *net.TCPConn) {
	t.Helper()
	if err := c.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func tcpInfo(t *testing.T, c *net.TCPConn) *unix.TCPInfo {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	var ierr error
	rc.Control(func(fd uintptr) { info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) })
	if ierr != nil {
		t.Fatal(ierr)
	}
	return info
}

var methods = []Method{Nftables, Iptables}

// TestLockHidesReset: the tree's socket vanishes (with a reset) while its
// connection is locked; the peer keeps sending and sees only
// retransmissions, no reset, until the lock goes, when the next
// retransmission meets the reset the lock held back.
func TestLockHidesReset(t *testing.T) {
	for _, m := range methods {
		for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
			t.Run(string(m)+"/"+addr, func(t *testing.T) {
				ns := newTestNetns(t)
				server, client := ns.pair(t, addr)
				l, err := New(m, 4242, ns.path())
				if err != nil {
					t.Fatal(err)
				}
				defer l.Unlock()
				if err := l.Lock([]Conn{connOf(server)}); err != nil {
					t.Fatal(err)
				}
				if !l.Active() || l.GuardPID() == 0 {
					t.Fatal("lock not active or no guard")
				}
				abort(t, server)
				if _, err := client.Write([]byte("during the lock")); err != nil {
					t.Fatal(err)
				}
				client.SetReadDeadline(time.Now().Add(1500 * time.Millisecond))
				var b [16]byte
				_, err = client.Read(b[:])
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("peer read under the lock: %v, want a timeout (no reset, no data)", err)
				}
				info := tcpInfo(t, client)
				if info.State != 1 || info.Total_retrans == 0 {
					t.Fatalf("peer: state %d, %d retransmissions; want established and retransmitting", info.State, info.Total_retrans)
				}
				if err := l.Unlock(); err != nil {
					t.Fatal(err)
				}
				if ok, err := l.exists(); err != nil || ok {
					t.Fatalf("lock still there after Unlock (%v)", err)
				}
				// Proves the lock was what held the reset back.
				client.SetReadDeadline(time.Now().Add(30 * time.Second))
				_, err = client.Read(b[:])
				if !errors.Is(err, syscall.ECONNRESET) {
					t.Fatalf("peer read after unlock: %v, want a reset", err)
				}
			})
		}
	}
}

// TestGuardRemovesLock: when godwit dies holding the lock (its end of the
// guard's pipe closes without "keep"), the guard removes the rules.
func TestGuardRemovesLock(t *testing.T) {
	for _, m := range methods {
		t.Run(string(m), func(t *testing.T) {
			ns := newTestNetns(t)
			server, _ := ns.pair(t, "127.0.0.1:0")
			l, err := New(m, 4243, ns.path())
			if err != nil {
				t.Fatal(err)
			}
			if err := l.Lock([]Conn{connOf(server)}); err != nil {
				t.Fatal(err)
			}
			if err := l.LockNetns(); err != nil {
				t.Fatal(err)
			}
			if ok, err := l.exists(); !ok || err != nil {
				t.Fatalf("lock not there (%v)", err)
			}
			g := l.guard
			g.w.Close() // as godwit's death would
			g.cmd.Wait()
			if ok, err := l.exists(); ok || err != nil {
				t.Fatalf("lock still there after the guard ran (%v)", err)
			}
			l.guard = nil
			l.done = true
			l.closeNetns()
		})
	}
}

// TestKeepAdopt: a dump keeps the lock (godwit exits, the rules stay);
// the restore adopts it and unlocks, or fails and its guard removes it.
func TestKeepAdopt(t *testing.T) {
	for _, m := range methods {
		t.Run(string(m), func(t *testing.T) {
			ns := newTestNetns(t)
			server, _ := ns.pair(t, "127.0.0.1:0")
			l, err := New(m, 4244, ns.path())
			if err != nil {
				t.Fatal(err)
			}
			if err := l.Lock([]Conn{connOf(server)}); err != nil {
				t.Fatal(err)
			}
			rec, ok := l.Keep()
			if !ok || rec.Method != m || !strings.HasPrefix(rec.Name, "godwit-4244-") || !validName(rec.Name) || rec.Netns {
				t.Fatalf("Keep: %+v %v", rec, ok)
			}
			probe := &Lock{method: m, name: rec.Name, netns: ns.f}
			if ok, err := probe.exists(); !ok || err != nil {
				t.Fatalf("kept lock not there (%v)", err)
			}
			dup := func() *os.File {
				f, err := os.Open(ns.path())
				if err != nil {
					t.Fatal(err)
				}
				return f
			}
			// A restore that adopts and unlocks.
			a, err := adopt(rec, dup())
			if err != nil {
				t.Fatal(err)
			}
			if !a.Active() {
				t.Fatal("adopted lock not active")
			}
			if err := a.Unlock(); err != nil {
				t.Fatal(err)
			}
			if ok, err := probe.exists(); ok || err != nil {
				t.Fatalf("lock there after the restore's unlock (%v)", err)
			}
			// Adopting a lock that is gone is not an error.
			a, err = adopt(rec, dup())
			if err != nil || a.Active() {
				t.Fatalf("adopt of a missing lock: %v, active %v", err, a.Active())
			}
			a.Unlock()
		})
	}
}

func TestLockRefusesBadInput(t *testing.T) {
	l, err := New(Nftables, 1, "")
	if err != nil {
		t.Fatal(err)
	}
	bad := []Conn{
		{Local: netip.MustParseAddrPort("127.0.0.1:1")},
		{Local: netip.MustParseAddrPort("127.0.0.1:1"), Remote: netip.MustParseAddrPort("[::1]:2")},
	}
	for _, c := range bad {
		if err := l.Lock([]Conn{c}); err == nil {
			t.Errorf("Lock(%v) accepted", c)
		}
	}
	if l.Active() {
		t.Error("a refused Lock left rules")
	}
	if _, err := New("ipchains", 1, ""); err == nil {
		t.Error("New accepted a bad method")
	}
	var none *Lock
	if err := none.Lock([]Conn{bad[1]}); err != nil || none.Unlock() != nil || none.Active() {
		t.Error("a nil Lock must do nothing")
	}
	s, err := New(Skip, 1, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Lock([]Conn{{Local: netip.MustParseAddrPort("127.0.0.1:1"), Remote: netip.MustParseAddrPort("127.0.0.1:2")}}); err != nil || s.Active() {
		t.Errorf("skip: %v, active %v", err, s.Active())
	}
	if _, ok := s.Keep(); ok {
		t.Error("skip kept a lock")
	}
}

func TestParse(t *testing.T) {
	for in, want := range map[string]Method{"": Nftables, "nftables": Nftables, "iptables": Iptables, "skip": Skip} {
		if m, err := ParseMethod(in); err != nil || m != want {
			t.Errorf("ParseMethod(%q) = %q, %v", in, m, err)
		}
	}
	if _, err := ParseMethod("nft"); err == nil {
		t.Error("ParseMethod accepted nft")
	}
	good := `{"method":"nftables","name":"godwit-12-0a1b2c3d"}`
	if r, err := ParseRecord([]byte(good)); err != nil || r.Name != "godwit-12-0a1b2c3d" {
		t.Errorf("ParseRecord(%s) = %+v, %v", good, r, err)
	}
	// Only names a lock gets: a record cannot name another dump's old
	// (token-less) lock, nor anything else.
	for _, bad := range []string{``, `{}`, `{"method":"skip","name":"godwit-1-0a1b2c3d"}`, `{"method":"nftables","name":"x; rm -rf /"}`,
		`{"method":"iptables","name":"godwit-"}`, `{"method":"nftables","name":"godwit-1-0a1b2c3d","extra":1}`,
		`{"method":"nftables","name":"godwit-12"}`, `{"method":"nftables","name":"godwit-12-0A1B2C3D"}`,
		`{"method":"nftables","name":"godwit-12-0a1b2c3"}`, `{"method":"nftables","name":"godwit-012-0a1b2c3d"}`,
		`{"method":"nftables","name":"godwit-12345678-0a1b2c3d"}`, `{"method":"nftables","name":"godwit--0a1b2c3d"}`} {
		if _, err := ParseRecord([]byte(bad)); err == nil {
			t.Errorf("ParseRecord(%s) accepted", bad)
		}
	}
	for range 100 {
		n, err := newName(4194304)
		if err != nil || !validName(n) || len(n+"-out") > 28 {
			t.Fatalf("newName: %q %v", n, err)
		}
	}
}

func FuzzParseRecord(f *testing.F) {
	f.Add([]byte(`{"method":"nftables","name":"godwit-12-0a1b2c3d","netns":true}`))
	f.Add([]byte(`{"method":"iptables","name":"godwit-1-ffffffff"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRecord(b)
		if err != nil {
			return
		}
		if !validName(r.Name) || (r.Method != Nftables && r.Method != Iptables) {
			t.Fatalf("accepted %+v", r)
		}
	})
}

// TestLockListeners: a client connecting to a locked listener that is
// gone waits (its SYN is dropped) instead of being refused; once the lock
// goes it is refused, which shows the lock was what held it.
func TestLockListeners(t *testing.T) {
	for _, m := range methods {
		for _, c := range []struct{ listen, dial string }{
			{"127.0.0.1:0", "127.0.0.1"}, {"[::1]:0", "::1"}, {"0.0.0.0:0", "127.0.0.1"}, {"[::]:0", "127.0.0.1"}, {"[::]:0", "::1"},
		} {
			t.Run(string(m)+"/"+c.listen+"/"+c.dial, func(t *testing.T) {
				ns := newTestNetns(t)
				var addr netip.AddrPort
				if err := ns.do(func() error {
					ln, err := net.Listen("tcp", c.listen)
					if err != nil {
						return err
					}
					addr = ln.Addr().(*net.TCPAddr).AddrPort()
					return ln.Close()
				}); err != nil {
					t.Fatal(err)
				}
				l, err := New(m, 4245, ns.path())
				if err != nil {
					t.Fatal(err)
				}
				defer l.Unlock()
				if err := l.LockListeners([]netip.AddrPort{addr}); err != nil {
					t.Fatal(err)
				}
				target := net.JoinHostPort(c.dial, strconv.Itoa(int(addr.Port())))
				err = ns.do(func() error {
					_, err := net.DialTimeout("tcp", target, 1500*time.Millisecond)
					return err
				})
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					t.Fatalf("dial %s under the lock: %v, want a timeout (no refusal)", target, err)
				}
				if err := l.Unlock(); err != nil {
					t.Fatal(err)
				}
				err = ns.do(func() error {
					_, err := net.DialTimeout("tcp", target, 5*time.Second)
					return err
				})
				if !errors.Is(err, syscall.ECONNREFUSED) {
					t.Fatalf("dial %s after unlock: %v, want a refusal", target, err)
				}
			})
		}
	}
}

// TestMarkPasses: packets marked Mark (the FIN a restore replays) pass a
// locked connection; the others of the same connection do not.
func TestMarkPasses(t *testing.T) {
	for _, m := range methods {
		t.Run(string(m), func(t *testing.T) {
			ns := newTestNetns(t)
			server, client := ns.pair(t, "127.0.0.1:0")
			l, err := New(m, 4246, ns.path())
			if err != nil {
				t.Fatal(err)
			}
			defer l.Unlock()
			if err := l.Lock([]Conn{connOf(server)}); err != nil {
				t.Fatal(err)
			}
			send := func(mark int, what string) error {
				rc, err := client.SyscallConn()
				if err != nil {
					t.Fatal(err)
				}
				rc.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mark) })
				if err != nil {
					t.Fatal(err)
				}
				if _, err := client.Write([]byte(what)); err != nil {
					t.Fatal(err)
				}
				server.SetReadDeadline(time.Now().Add(time.Second))
				b := make([]byte, 16)
				n, err := server.Read(b)
				if err == nil && string(b[:n]) != what {
					t.Fatalf("read %q, want %q", b[:n], what)
				}
				return err
			}
			if err := send(Mark, "marked"); err != nil {
				t.Fatalf("a marked segment did not pass the lock: %v", err)
			}
			if err := send(0, "plain"); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("an unmarked segment: %v, want it held", err)
			}
		})
	}
}

// TestManyConns: 12,000 connections of each family, more than one
// netlink message and one batch hold, all land in the sets with the
// layout nft reads back (addr . port . addr . port).
func TestManyConns(t *testing.T) {
	ns := newTestNetns(t)
	l, err := New(Nftables, 4243, ns.path())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()
	const n = 12000
	var conns []Conn
	for i := range n {
		conns = append(conns,
			Conn{netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), uint16(1000+i)), netip.MustParseAddrPort("10.9.8.7:443")},
			Conn{netip.AddrPortFrom(netip.MustParseAddr("fd00::1"), uint16(1000+i)), netip.AddrPortFrom(netip.AddrFrom16([16]byte{0xfd, 15: byte(i), 14: byte(i >> 8)}), 8443)})
	}
	t0 := time.Now()
	if err := l.Lock(conns); err != nil {
		t.Fatal(err)
	}
	took := time.Since(t0)
	// For scale, in the same run: nft(8) loading the same elements into
	// a table of the same sets (what the lock did before netlink).
	var b strings.Builder
	b.WriteString("table inet ref {\n\tset conn4 { type ipv4_addr . inet_service . ipv4_addr . inet_service; }\n\tset conn6 { type ipv6_addr . inet_service . ipv6_addr . inet_service; }\n}\n")
	for _, set := range []string{"conn4", "conn6"} {
		var es []string
		for _, c := range conns {
			if c.v4() == (set == "conn4") {
				es = append(es, fmt.Sprintf("%s . %d . %s . %d", c.Local.Addr(), c.Local.Port(), c.Remote.Addr(), c.Remote.Port()))
			}
		}
		fmt.Fprintf(&b, "add element inet ref %s { %s }\n", set, strings.Join(es, ", "))
	}
	cmd := commandIn(ns.f, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(b.String())
	t1 := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v: %s", err, out)
	}
	t.Logf("%d connections locked over netlink (table, guard, elements) in %v; nft -f loads the same elements in %v", len(conns), took, time.Since(t1))
	for _, c := range []struct{ set, want string }{
		{"conn4", "10.1.46.223 . 12999 . 10.9.8.7 . 443"},
		{"conn6", "fd00::1 . 12999 . fd00::2edf . 8443"},
	} {
		out, err := commandIn(ns.f, "nft", "list", "set", "inet", l.Name(), c.set).CombinedOutput()
		if err != nil {
			t.Fatalf("nft list set %s: %v: %s", c.set, err, out)
		}
		_, elems, _ := strings.Cut(string(out), "elements =") // past the type line
		if got := strings.Count(elems, " . ") / 3; got != n {
			t.Errorf("set %s: %d elements, want %d", c.set, got, n)
		}
		if !strings.Contains(string(out), c.want) {
			t.Errorf("set %s: no element %q", c.set, c.want)
		}
	}
	// The rules made over netlink read back as the rules of rules.go.
	out, err := commandIn(ns.f, "nft", "-s", "list", "table", "inet", l.Name()).CombinedOutput()
	if err != nil {
		t.Fatalf("nft list table: %v: %s", err, out)
	}
	for _, want := range []string{
		"chain input {\n\t\ttype filter hook input priority raw; policy accept;\n\t\tmeta mark 0x0060d317 accept\n" +
			"\t\tip daddr . tcp dport . ip saddr . tcp sport @conn4 drop\n\t\tip6 daddr . tcp dport . ip6 saddr . tcp sport @conn6 drop\n" +
			"\t\ttcp flags syn / syn,ack ip daddr . tcp dport @listen4 drop\n\t\ttcp flags syn / syn,ack ip6 daddr . tcp dport @listen6 drop\n" +
			"\t\ttcp flags syn / syn,ack meta nfproto ipv4 tcp dport @listenany4 drop\n\t\ttcp flags syn / syn,ack meta nfproto ipv6 tcp dport @listenany6 drop\n\t}",
		"chain output {\n\t\ttype filter hook output priority raw; policy accept;\n\t\tmeta mark 0x0060d317 accept\n" +
			"\t\tip saddr . tcp sport . ip daddr . tcp dport @conn4 drop\n\t\tip6 saddr . tcp sport . ip6 daddr . tcp dport @conn6 drop\n\t}",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("nft list table: no\n%s\nin\n%s", want, out)
		}
	}
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
	if ok, err := l.exists(); err != nil || ok {
		t.Fatalf("lock still there after Unlock (%v)", err)
	}
}

// TestGuardWithoutNft: the nftables lock is made over netlink, so its
// guard must remove it without nft(8) too.
func TestGuardWithoutNft(t *testing.T) {
	dir := t.TempDir()
	// nsenter and ip only: the test's namespace needs them, the lock not.
	for _, tool := range []string{"nsenter", "ip"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(p, filepath.Join(dir, tool)); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir)
	if _, err := exec.LookPath("nft"); err == nil {
		t.Fatal("nft still on PATH")
	}
	ns := newTestNetns(t)
	server, _ := ns.pair(t, "127.0.0.1:0")
	l, err := New(Nftables, 4251, ns.path())
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Lock([]Conn{connOf(server)}); err != nil {
		t.Fatalf("lock without nft: %v", err)
	}
	if ok, err := l.exists(); !ok || err != nil {
		t.Fatalf("lock not there (%v)", err)
	}
	g := l.guard
	g.w.Close() // as godwit's death would
	g.cmd.Wait()
	l.guard = nil
	ok, err := l.exists()
	if ok || err != nil {
		nftDeleteTable(l.netns, l.name)
		t.Errorf("lock %s still there after the guard ran (%v)", l.Name(), err)
	}
	l.done = true
	l.closeNetns()
}
