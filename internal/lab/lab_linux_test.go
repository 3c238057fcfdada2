package lab

import (
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

func newLab(t *testing.T, n int) *Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the lab needs root (namespaces, veth, bridge)")
	}
	l, err := New(Options{}, n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	})
	return l
}

func output(t *testing.T, h *Host, args ...string) string {
	t.Helper()
	out, err := h.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %v: %s", h.Name(), args, err, out)
	}
	return strings.TrimSpace(string(out))
}

func TestHostsHaveTheirOwnPIDsAndProc(t *testing.T) {
	l := newLab(t, 2)
	for _, h := range l.Hosts() {
		if got := output(t, h, "cat", "/proc/1/cmdline"); !strings.HasPrefix(got, "godwit-lab-init") {
			t.Errorf("%s: PID 1 is %q, want the lab init", h.Name(), got)
		}
		if got := output(t, h, "hostname"); got != h.Name() {
			t.Errorf("hostname on %s = %q", h.Name(), got)
		}
		// The same PID is free on both hosts and a program gets it on each.
		got := output(t, h, "sh", "-c", `echo 4999 >/proc/sys/kernel/ns_last_pid && sh -c 'echo $$'`)
		if got != "5000" {
			t.Errorf("%s: program after ns_last_pid 4999 has pid %s, want 5000", h.Name(), got)
		}
	}
	// PID finds the program on the host, RootPID maps it back.
	h := l.Host(1)
	cmd := h.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	hp, rp, err := h.PID(cmd)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	if hp == rp || hp < 2 {
		t.Errorf("host pid %d, root pid %d", hp, rp)
	}
	if got, err := h.RootPID(hp); err != nil || got != rp {
		t.Errorf("RootPID(%d) = %d, %v; want %d", hp, got, err, rp)
	}
	if _, err := l.Host(0).RootPID(hp); err == nil {
		t.Errorf("pid %d of %s found on %s", hp, h.Name(), l.Host(0).Name())
	}
}

func TestHostsReachEachOtherAndCutDrops(t *testing.T) {
	l := newLab(t, 2)
	a, b := l.Host(0), l.Host(1)
	var ln net.Listener
	if err := b.InNet(func() (err error) { ln, err = net.Listen("tcp", b.Addr()+":7000"); return }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.Copy(c, c)
			c.Close()
		}
	}()
	dial := func() (net.Conn, error) {
		var c net.Conn
		err := a.InNet(func() (err error) {
			c, err = net.DialTimeout("tcp", b.Addr()+":7000", 2*time.Second)
			return
		})
		return c, err
	}
	c, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo: %q %v", buf, err)
	}
	c.Close()
	// The lab adds no address to this machine's own namespace.
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, ad := range addrs {
		if strings.HasPrefix(ad.String(), b.Addr()+"/") || strings.HasPrefix(ad.String(), a.Addr()+"/") {
			t.Errorf("lab address %s in the root network namespace", ad)
		}
	}
	if err := b.Cut(); err != nil {
		t.Fatal(err)
	}
	if c, err := dial(); err == nil {
		c.Close()
		t.Fatal("dial through a cut link succeeded")
	}
	if err := b.Heal(); err != nil {
		t.Fatal(err)
	}
	c, err = dial()
	if err != nil {
		t.Fatalf("after heal: %v", err)
	}
	c.Close()
}

func TestCloseKillsEverything(t *testing.T) {
	l := newLab(t, 1)
	h := l.Host(0)
	cmd := h.Command("sh", "-c", "sleep 600 & sleep 600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	_, rp, err := h.PID(cmd)
	if err != nil {
		t.Fatal(err)
	}
	init := h.InitPID()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	for _, p := range []int{init, rp} {
		if _, err := os.Stat("/proc/" + itoa(p)); err == nil {
			if b, _ := os.ReadFile("/proc/" + itoa(p) + "/stat"); !strings.Contains(string(b), ") Z") {
				t.Errorf("process %d still alive after Close", p)
			}
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// The service-address script, run on host A as `migrate send` runs its
// action scripts, moves the address to B and back; a client on C reaches
// whichever host has it.
func TestMoveAddressScript(t *testing.T) {
	l := newLab(t, 3)
	a, b, c := l.Host(0), l.Host(1), l.Host(2)
	vip := netip.MustParseAddr("10.77.0.200")
	if err := a.AddAddress(vip); err != nil {
		t.Fatal(err)
	}
	// Each host answers on the service address with its own name.
	for _, h := range []*Host{a, b} {
		h := h
		var ln net.Listener
		if err := h.InNet(func() (err error) {
			ln, err = net.Listen("tcp", ":7000")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				io.WriteString(conn, h.Name())
				conn.Close()
			}
		}()
	}
	who := func() string {
		t.Helper()
		var got []byte
		if err := c.InNet(func() error {
			conn, err := net.DialTimeout("tcp", vip.String()+":7000", 5*time.Second)
			if err != nil {
				return err
			}
			defer conn.Close()
			got, err = io.ReadAll(conn)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return string(got)
	}
	has := func(h *Host) bool {
		t.Helper()
		ok, err := h.HasAddress(vip)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if got := who(); got != a.Name() {
		t.Fatalf("service address answered by %q, want %s", got, a.Name())
	}
	script := MoveAddressScript(vip, a, b, c)
	run := func(action string) {
		t.Helper()
		// -e, as the e2e tests run it: every step must succeed.
		cmd := a.Command("sh", "-e", "-c", script)
		cmd.Env = append(os.Environ(), "CRTOOLS_SCRIPT_ACTION="+action)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", action, err, out)
		}
	}
	run("post-dump")
	if has(a) || has(b) {
		t.Fatalf("after post-dump: on a %v, on b %v; want neither", has(a), has(b))
	}
	run("pre-restore")
	if has(a) || !has(b) {
		t.Fatalf("after pre-restore: on a %v, on b %v; want b only", has(a), has(b))
	}
	if got := who(); got != b.Name() {
		t.Fatalf("service address answered by %q, want %s", got, b.Name())
	}
	run("migrate-abort")
	if !has(a) || has(b) {
		t.Fatalf("after migrate-abort: on a %v, on b %v; want a only", has(a), has(b))
	}
	if got := who(); got != a.Name() {
		t.Fatalf("service address answered by %q, want %s", got, a.Name())
	}
	// A migration that fails between post-dump and pre-restore: the
	// address is on neither host, and migrate-abort puts it back on a.
	run("post-dump")
	run("migrate-abort")
	if !has(a) || has(b) {
		t.Fatalf("after migrate-abort before pre-restore: on a %v, on b %v; want a only", has(a), has(b))
	}
}
