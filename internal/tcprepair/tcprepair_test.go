package tcprepair

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/netlock"
)

// pair connects two TCP sockets on the loopback of family: a (accepted)
// and b (connecting). b's receive buffer is small so that a's writes
// stay in a's send queue once it is full.
func pair(t *testing.T, family int) (a, b int) {
	t.Helper()
	var any, lo unix.Sockaddr = &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}, nil
	if family == unix.AF_INET6 {
		any = &unix.SockaddrInet6{Addr: [16]byte{15: 1}}
	}
	l, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(l)
	if err := unix.Bind(l, any); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(l, 1); err != nil {
		t.Fatal(err)
	}
	if lo, err = unix.Getsockname(l); err != nil {
		t.Fatal(err)
	}
	if b, err = unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(b) })
	if err := unix.SetsockoptInt(b, unix.SOL_SOCKET, unix.SO_RCVBUF, 4096); err != nil {
		t.Fatal(err)
	}
	if err := unix.Connect(b, lo); err != nil {
		t.Fatal(err)
	}
	if a, _, err = unix.Accept4(l, unix.SOCK_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	return a, b
}

func pattern(tag string, n int) []byte {
	var buf bytes.Buffer
	for i := 0; buf.Len() < n; i++ {
		fmt.Fprintf(&buf, "%s %d;", tag, i)
	}
	return buf.Bytes()[:n]
}

// fillPeer writes from a until the peer's window and a's buffer are full
// (a nonblocking write would block): those bytes sit in a's send queue.
func fillPeer(t *testing.T, a int, data []byte) int {
	t.Helper()
	if err := unix.SetNonblock(a, true); err != nil {
		t.Fatal(err)
	}
	defer unix.SetNonblock(a, false)
	sent := 0
	for sent < len(data) {
		n, err := unix.Write(a, data[sent:min(len(data), sent+1024)])
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		sent += n
	}
	return sent
}

func state(t *testing.T, s int) uint8 {
	t.Helper()
	in, err := GetInfo(s)
	if err != nil {
		t.Fatal(err)
	}
	return in.State
}

// waitState waits until s is in want (loopback ACKs travel at once, but
// in softirq).
func waitState(t *testing.T, s int, want uint8) {
	t.Helper()
	for i := 0; state(t, s) != want; i++ {
		if i > 2000 {
			t.Fatalf("socket in %s, want %s", StateName(state(t, s)), StateName(want))
		}
		time.Sleep(time.Millisecond)
	}
}

// waitHeld waits until all that a sent is acknowledged and the rest is
// held back by the peer's closed window (nothing in flight): the state a
// dump must see for the restored connection to go on at once. Data in
// flight at the dump, which the peer then drops (its buffer full),
// would be retransmitted by the restored socket only on its timer, at
// backed-off intervals of seconds: a read that waits for it is a race.
func waitHeld(t *testing.T, a int) {
	t.Helper()
	for i := 0; ; i++ {
		in, err := unix.GetsockoptTCPInfo(a, unix.SOL_TCP, unix.TCP_INFO)
		if err != nil {
			t.Fatal(err)
		}
		if in.Unacked == 0 && in.Snd_wnd == 0 && in.Notsent_bytes > 0 {
			return
		}
		if i > 10000 {
			t.Fatalf("window not closed with nothing in flight: %d segments unacknowledged, window %d, %d bytes not sent", in.Unacked, in.Snd_wnd, in.Notsent_bytes)
		}
		time.Sleep(time.Millisecond)
	}
}

// readAll reads s until EOF or until n bytes, with a deadline.
func readN(t *testing.T, s int, n int) []byte {
	t.Helper()
	tv := unix.Timeval{Sec: 10}
	if err := unix.SetsockoptTimeval(s, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	var out []byte
	buf := make([]byte, 64<<10)
	for len(out) < n {
		r, err := unix.Read(s, buf[:min(len(buf), n-len(out))])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			t.Fatalf("read after %d of %d bytes: %v", len(out), n, err)
		}
		if r == 0 {
			break
		}
		out = append(out, buf[:r]...)
	}
	return out
}

func expectEOF(t *testing.T, s int) {
	t.Helper()
	if b := readN(t, s, 1); len(b) != 0 {
		t.Fatalf("read %q, want end of stream", b)
	}
}

// dumpRestore dumps a in repair mode, closes it (silently: its peer
// must see nothing) and restores it, under a network lock as godwit's
// dump and restore are: without one, whatever the peer sends while no
// socket holds the connection (an ACK, a window update) draws a reset
// from the host, and the restored connection is reset by its peer —
// the more often the longer the gap (docs/network-lock.md).
func dumpRestore(t *testing.T, family, a int) (int, *Stream) {
	t.Helper()
	local, err := unix.Getsockname(a)
	if err != nil {
		t.Fatal(err)
	}
	remote, err := unix.Getpeername(a)
	if err != nil {
		t.Fatal(err)
	}
	lock, err := netlock.New(netlock.Nftables, unix.Getpid(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Unlock()
	if err := lock.Lock([]netlock.Conn{{Local: addrPort(local), Remote: addrPort(remote)}}); err != nil {
		t.Fatal(err)
	}
	if err := On(a); err != nil {
		t.Fatal(err)
	}
	st, err := Dump(a)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Close(a); err != nil {
		t.Fatal(err)
	}
	a2, err := Restore(family, unix.IPPROTO_TCP, local, remote, st, nil)
	if err != nil {
		t.Fatalf("restore %s: %v", StateName(st.State), err)
	}
	t.Cleanup(func() { unix.Close(a2) })
	if err := lock.Unlock(); err != nil {
		t.Fatal(err)
	}
	return a2, st
}

func addrPort(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port))
	}
	return netip.AddrPort{}
}

// A connection rebuilt from its dump carries both byte streams on
// intact: what was queued to be read, what was written and not yet
// taken by the peer (its window full), and what both write after.
func TestEstablished(t *testing.T) {
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		t.Run(fmt.Sprint(fam), func(t *testing.T) {
			a, b := pair(t, fam)
			toA := pattern("to-a", 3000)
			if _, err := unix.Write(b, toA); err != nil {
				t.Fatal(err)
			}
			toB := pattern("to-b", 4<<20)
			sent := fillPeer(t, a, toB)
			waitHeld(t, a)
			a2, st := dumpRestore(t, fam, a)
			if len(st.InQ) != len(toA) || len(st.OutQ) == 0 {
				t.Fatalf("dumped %d bytes to read (want %d), %d to send", len(st.InQ), len(toA), len(st.OutQ))
			}
			if st.Options&OptTimestamps == 0 || st.Options&OptSACK == 0 || st.Options&OptWscale == 0 || st.MSSClamp == 0 {
				t.Errorf("options of a loopback connection: %+v", st)
			}
			if s := state(t, a2); s != StateEstablished {
				t.Fatalf("restored in %s", StateName(s))
			}
			if got := readN(t, a2, len(toA)); !bytes.Equal(got, toA) {
				t.Fatalf("a read %d bytes, not what b wrote", len(got))
			}
			done := make(chan []byte)
			go func() { done <- readNQuiet(b, sent+5) }()
			if _, err := unix.Write(a2, []byte("after")); err != nil {
				t.Fatal(err)
			}
			got := <-done
			if want := append(toB[:sent:sent], "after"...); !bytes.Equal(got, want) {
				t.Fatalf("b read %d bytes, want %d (first difference at %d)", len(got), len(want), diffAt(got, want))
			}
			if _, err := unix.Write(b, []byte("back")); err != nil {
				t.Fatal(err)
			}
			if got := readN(t, a2, 4); string(got) != "back" {
				t.Fatalf("a read %q", got)
			}
		})
	}
}

func readNQuiet(s, n int) []byte {
	var out []byte
	buf := make([]byte, 64<<10)
	tv := unix.Timeval{Sec: 10}
	unix.SetsockoptTimeval(s, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	for len(out) < n {
		r, err := unix.Read(s, buf[:min(len(buf), n-len(out))])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || r == 0 {
			break
		}
		out = append(out, buf[:r]...)
	}
	return out
}

func diffAt(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// Each closing state comes back as it was, its queue intact, and the
// connection ends as it would have.
func TestClosingStates(t *testing.T) {
	const fam = unix.AF_INET
	t.Run("CLOSE_WAIT", func(t *testing.T) {
		a, b := pair(t, fam)
		if _, err := unix.Write(b, []byte("last words")); err != nil {
			t.Fatal(err)
		}
		if err := unix.Shutdown(b, unix.SHUT_WR); err != nil {
			t.Fatal(err)
		}
		waitState(t, a, StateCloseWait)
		a2, _ := dumpRestore(t, fam, a)
		if s := state(t, a2); s != StateCloseWait {
			t.Fatalf("restored in %s", StateName(s))
		}
		if got := readN(t, a2, 100); string(got) != "last words" {
			t.Fatalf("read %q", got)
		}
		expectEOF(t, a2)
		if _, err := unix.Write(a2, []byte("reply")); err != nil {
			t.Fatal(err)
		}
		if err := unix.Shutdown(a2, unix.SHUT_WR); err != nil {
			t.Fatal(err)
		}
		if got := readN(t, b, 100); string(got) != "reply" {
			t.Fatalf("b read %q", got)
		}
		expectEOF(t, b)
	})
	t.Run("FIN_WAIT2", func(t *testing.T) {
		a, b := pair(t, fam)
		if _, err := unix.Write(b, []byte("unread")); err != nil {
			t.Fatal(err)
		}
		if err := unix.Shutdown(a, unix.SHUT_WR); err != nil {
			t.Fatal(err)
		}
		waitState(t, a, StateFinWait2)
		a2, _ := dumpRestore(t, fam, a)
		waitState(t, a2, StateFinWait2)
		expectEOF(t, b)
		if _, err := unix.Write(b, []byte(" more")); err != nil {
			t.Fatal(err)
		}
		if got := readN(t, a2, 11); string(got) != "unread more" {
			t.Fatalf("read %q", got)
		}
		unix.Shutdown(b, unix.SHUT_WR)
		expectEOF(t, a2)
	})
	t.Run("FIN_WAIT1", func(t *testing.T) {
		// Data the peer's full window holds back, then our FIN behind
		// it: not acknowledged at the dump.
		a, b := pair(t, fam)
		data := pattern("fw1", 1<<20)
		sent := fillPeer(t, a, data)
		if err := unix.Shutdown(a, unix.SHUT_WR); err != nil {
			t.Fatal(err)
		}
		waitHeld(t, a)
		if s := state(t, a); s != StateFinWait1 {
			t.Fatalf("not in FIN_WAIT1 but %s", StateName(s))
		}
		a2, _ := dumpRestore(t, fam, a)
		if s := state(t, a2); s != StateFinWait1 {
			t.Fatalf("restored in %s", StateName(s))
		}
		if got := readN(t, b, len(data)+1); !bytes.Equal(got, data[:sent]) {
			t.Fatalf("b read %d bytes, want %d", len(got), sent)
		}
		expectEOF(t, b)
		waitState(t, a2, StateFinWait2)
	})
	t.Run("LAST_ACK", func(t *testing.T) {
		a, b := pair(t, fam)
		if err := unix.Shutdown(b, unix.SHUT_WR); err != nil {
			t.Fatal(err)
		}
		waitState(t, a, StateCloseWait)
		data := pattern("la", 1<<20)
		sent := fillPeer(t, a, data)
		if err := unix.Shutdown(a, unix.SHUT_WR); err != nil {
			t.Fatal(err)
		}
		waitHeld(t, a)
		if s := state(t, a); s != StateLastAck {
			t.Fatalf("not in LAST_ACK but %s", StateName(s))
		}
		a2, _ := dumpRestore(t, fam, a)
		if s := state(t, a2); s != StateLastAck {
			t.Fatalf("restored in %s", StateName(s))
		}
		expectEOF(t, a2)
		if got := readN(t, b, len(data)+1); !bytes.Equal(got, data[:sent]) {
			t.Fatalf("b read %d bytes, want %d", len(got), sent)
		}
		expectEOF(t, b)
		waitState(t, a2, StateClose)
	})
}

// Urgent data cannot be put back by TCP_REPAIR: a connection holding
// it unread is refused, and the refusal leaves the stream (urgent byte
// and mark included) as it was.
func TestUrgentRefused(t *testing.T) {
	cases := []struct {
		name   string
		inline bool
		pre    int // bytes read before the dump: 3 puts the read at the mark
	}{
		{"before the mark", false, 0},
		{"at the mark", false, 3},
		{"inline at the mark", true, 3},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, b := pair(t, unix.AF_INET)
			defer unix.Close(a)
			if c.inline {
				if err := unix.SetsockoptInt(a, unix.SOL_SOCKET, unix.SO_OOBINLINE, 1); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := unix.Write(b, []byte("abc")); err != nil {
				t.Fatal(err)
			}
			if err := unix.Sendto(b, []byte("X"), unix.MSG_OOB, nil); err != nil {
				t.Fatal(err)
			}
			if _, err := unix.Write(b, []byte("def")); err != nil {
				t.Fatal(err)
			}
			waitInq(t, a, c.inline)
			if c.pre > 0 {
				if got := readN(t, a, c.pre); string(got) != "abc" {
					t.Fatalf("read %q before the dump", got)
				}
			}
			if err := On(a); err != nil {
				t.Fatal(err)
			}
			_, err := Dump(a)
			if offErr := Off(a); offErr != nil {
				t.Fatal(offErr)
			}
			if !errors.Is(err, ErrUrgent) {
				t.Fatalf("dump with urgent data unread: %v, want %v", err, ErrUrgent)
			}
			rest := "abc"[c.pre:]
			if rest != "" {
				if got := readN(t, a, len(rest)); string(got) != rest {
					t.Fatalf("read %q after the refusal, want %q", got, rest)
				}
			}
			if mark, err := unix.IoctlGetInt(a, unix.SIOCATMARK); err != nil || mark != 1 {
				t.Fatalf("after the refusal: SIOCATMARK %d, %v; want at the mark", mark, err)
			}
			want := "Xdef"
			if !c.inline {
				var x [1]byte
				if n, _, err := unix.Recvfrom(a, x[:], unix.MSG_OOB); err != nil || n != 1 || x[0] != 'X' {
					t.Fatalf("urgent byte after the refusal: %d %q %v", n, x[:n], err)
				}
				want = "def"
			}
			if got := readN(t, a, len(want)); string(got) != want {
				t.Fatalf("read %q after the mark, want %q", got, want)
			}
		})
	}
}

// waitInq waits until all 7 bytes of the urgent test stream arrived:
// the urgent byte is readable (or, inline, counted).
func waitInq(t *testing.T, a int, inline bool) {
	t.Helper()
	for range 500 {
		if inline {
			if n, err := unix.IoctlGetInt(a, unix.SIOCINQ); err == nil && n >= 3 {
				var buf [8]byte
				if m, _, err := unix.Recvfrom(a, buf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT); err == nil && m >= 3 {
					return
				}
			}
		} else {
			var x [1]byte
			if _, _, err := unix.Recvfrom(a, x[:], unix.MSG_OOB|unix.MSG_PEEK|unix.MSG_DONTWAIT); err == nil {
				return
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatal("the urgent stream did not arrive")
}
