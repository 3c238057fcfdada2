package netlock

import (
	"errors"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestReadOrders(t *testing.T) {
	in := "local 10.0.0.1\nconn 10.0.0.1:80 10.0.0.2:4000\nconn [::1]:80 [::1]:5\nconn bad 1.2.3.4:5\nlocal nonsense\ndest 30000\nwhatever\n"
	o := readOrders(strings.NewReader(in))
	if o.keep || !o.dest || o.linger != 30*time.Second || len(o.locals) != 1 || len(o.conns) != 2 {
		t.Errorf("orders %+v", o)
	}
	if o := readOrders(strings.NewReader(in + "keep\nremove\n")); !o.keep {
		t.Errorf("keep not seen: %+v", o)
	}
	if o := readOrders(strings.NewReader(in + "remove\n")); o.keep || o.dest {
		t.Errorf("remove: %+v, want an immediate removal", o)
	}
	if o := readOrders(strings.NewReader(in + "live\n")); o.keep || o.dest || len(o.conns) != 0 || len(o.locals) != 0 {
		t.Errorf("live: %+v, want orders cleared", o)
	}
	if o := readOrders(strings.NewReader("dest -5\ndest x\n")); o.dest {
		t.Errorf("bad dest accepted: %+v", o)
	}
}

func TestAddrsIn(t *testing.T) {
	out := `1: lo    inet 127.0.0.1/8 scope host lo\       valid_lft forever preferred_lft forever
2: eth0    inet 10.77.0.100/32 scope global eth0\       valid_lft forever preferred_lft forever
2: eth0    inet6 fe80::1/64 scope link \       valid_lft forever preferred_lft forever
`
	for _, c := range []struct {
		a    string
		want bool
	}{{"10.77.0.100", true}, {"::ffff:10.77.0.100", true}, {"fe80::1", true}, {"10.77.0.1", false}, {"127.0.0.2", false}} {
		if got := addrsIn(out, []netip.Addr{netip.MustParseAddr(c.a)}); got != c.want {
			t.Errorf("%s local: %v, want %v", c.a, got, c.want)
		}
	}
}

// TestGuardDestination: a destination's lock whose godwit died keeps its
// rules while the connections' address is on the host, then destroys
// their sockets under the lock and removes the rules once it left; a
// living godwit's "remove" removes them at once and destroys nothing.
func TestGuardDestination(t *testing.T) {
	for _, m := range methods {
		t.Run(string(m), func(t *testing.T) {
			ns := newTestNetns(t)
			const vip = "10.99.0.1"
			if out, err := commandIn(ns.f, "ip", "addr", "add", vip+"/32", "dev", "lo").CombinedOutput(); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			server, client := ns.pair(t, vip+":0")
			l, err := New(m, 4244, ns.path())
			if err != nil {
				t.Fatal(err)
			}
			if err := l.Lock([]Conn{connOf(server)}); err != nil {
				t.Fatal(err)
			}
			if err := l.GuardDestination(time.Minute); err != nil {
				t.Fatal(err)
			}
			g := l.guard
			g.w.Close() // as godwit's death would
			time.Sleep(5 * guardPoll)
			if ok, err := l.exists(); !ok || err != nil {
				t.Fatalf("lock gone (%v) while its address is still here", err)
			}
			if out, err := commandIn(ns.f, "ip", "addr", "del", vip+"/32", "dev", "lo").CombinedOutput(); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			waited := make(chan struct{})
			go func() { g.cmd.Wait(); close(waited) }()
			select {
			case <-waited:
			case <-time.After(30 * time.Second):
				t.Fatal("guard did not end once the address left")
			}
			if ok, err := l.exists(); ok || err != nil {
				t.Fatalf("lock still there after the guard ran (%v)", err)
			}
			// The tree's end was destroyed; the peer's reset came under
			// the lock (dropped), so the peer is still connected.
			_ = server.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := server.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNABORTED) {
				t.Errorf("the locked connection's socket: read %v, want it destroyed (ECONNABORTED)", err)
			}
			if info := tcpInfo(t, client); info.State != 1 { // TCP_ESTABLISHED
				t.Errorf("peer in TCP state %d, want established (no reset seen)", info.State)
			}
			l.guard = nil
			l.done = true
			l.closeNetns()
		})
	}
}

// TestGuardDestinationRemove: Unlock's failure path hands the removal to
// the guard ("remove"): at once, no linger, no socket destroyed.
func TestGuardDestinationRemove(t *testing.T) {
	ns := newTestNetns(t)
	server, client := ns.pair(t, "127.0.0.1:0")
	l, err := New(Nftables, 4245, ns.path())
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Lock([]Conn{connOf(server)}); err != nil {
		t.Fatal(err)
	}
	if err := l.GuardDestination(time.Minute); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	l.guard.release(false)
	if d := time.Since(t0); d > 20*time.Second {
		t.Errorf("guard took %v: it lingered", d)
	}
	if ok, err := l.exists(); ok || err != nil {
		t.Fatalf("lock still there (%v)", err)
	}
	if _, err := client.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	_ = server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := server.Read(make([]byte, 1)); err != nil {
		t.Errorf("connection broken after a plain removal: %v", err)
	}
	l.guard = nil
	l.done = true
	l.closeNetns()
}

// TestGuardDestinationResuming: once the agent said the program resumes
// (Resuming), its death (pipe EOF) removes the rules at once and leaves
// the live connection alone, even with its address still here.
func TestGuardDestinationResuming(t *testing.T) {
	ns := newTestNetns(t)
	const vip = "10.99.0.1"
	if out, err := commandIn(ns.f, "ip", "addr", "add", vip+"/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	server, client := ns.pair(t, vip+":0")
	l, err := New(Nftables, 4246, ns.path())
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Lock([]Conn{connOf(server)}); err != nil {
		t.Fatal(err)
	}
	if err := l.GuardDestination(time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := l.Resuming(); err != nil {
		t.Fatal(err)
	}
	// Unlock interrupted by the agent's death between removal and release.
	if err := l.remove(); err != nil {
		t.Fatal(err)
	}
	g := l.guard
	g.w.Close()
	waited := make(chan struct{})
	go func() { g.cmd.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(20 * time.Second):
		t.Fatal("guard lingered after Resuming")
	}
	if ok, err := l.exists(); ok || err != nil {
		t.Fatalf("lock still there after the guard ran (%v)", err)
	}
	if _, err := client.Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	_ = server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := server.Read(make([]byte, 1)); err != nil {
		t.Errorf("live connection destroyed by the guard: %v", err)
	}
	if info := tcpInfo(t, client); info.State != 1 { // TCP_ESTABLISHED
		t.Errorf("peer in TCP state %d, want established", info.State)
	}
	l.guard = nil
	l.done = true
	l.closeNetns()
}

// TestLingerNoAddress: a destination's guard with no address to watch
// (wildcard listeners only) does not wait for one.
func TestLingerNoAddress(t *testing.T) {
	done := make(chan struct{})
	go func() { lingerWhileLocal(nil, nil, time.Minute, true); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("lingered with no address to watch")
	}
}

// TestLingerWhileLocalListener: a living agent's linger watches the
// locked listeners' addresses too, as its guard's: it lasts while the
// listener's address is here and ends once it left.
func TestLingerWhileLocalListener(t *testing.T) {
	ns := newTestNetns(t)
	const vip = "10.99.0.2"
	if out, err := commandIn(ns.f, "ip", "addr", "add", vip+"/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	l, err := New(Nftables, 4247, ns.path())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()
	if err := l.LockListeners([]netip.AddrPort{netip.MustParseAddrPort(vip + ":80"), netip.MustParseAddrPort("0.0.0.0:81")}); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { l.LingerWhileLocal(time.Now().Add(time.Minute)); close(done) }()
	select {
	case <-done:
		t.Fatal("linger ended with the listener's address still here")
	case <-time.After(10 * guardPoll):
	}
	if out, err := commandIn(ns.f, "ip", "addr", "del", vip+"/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("linger did not end once the address left")
	}
}
