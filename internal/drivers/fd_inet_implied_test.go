package drivers

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
	"godwit/internal/tcprepair"
)

// The implications refuseOpts leans on (impliedDefault) hold on the
// running kernel: after every sequence of three timestamp settings on a
// fresh socket, an implied option is 0 whenever its implier reads 0; and
// a socket with the implied option set is still refused.
func TestInetOptsImplied(t *testing.T) {
	sol := unix.SOL_SOCKET
	const rx = unix.SOF_TIMESTAMPING_RX_SOFTWARE | unix.SOF_TIMESTAMPING_SOFTWARE
	type op struct{ opt, v int }
	var ops []op
	for _, o := range []int{unix.SO_TIMESTAMP, unix.SO_TIMESTAMPNS, unix.SO_TIMESTAMP_NEW, unix.SO_TIMESTAMPNS_NEW} {
		ops = append(ops, op{o, 0}, op{o, 1})
	}
	for _, o := range []int{unix.SO_TIMESTAMPING, unix.SO_TIMESTAMPING_NEW} {
		ops = append(ops, op{o, 0}, op{o, rx})
	}
	kinds := []struct{ family, typ int }{{unix.AF_INET, unix.SOCK_STREAM}, {unix.AF_INET6, unix.SOCK_DGRAM}}
	checked, implied := 0, 0
	for _, k := range kinds {
		for _, a := range ops {
			for _, b := range ops {
				for _, c := range ops {
					s, err := unix.Socket(k.family, k.typ|unix.SOCK_CLOEXEC, 0)
					if err != nil {
						t.Fatal(err)
					}
					for _, o := range []op{a, b, c} {
						if err := unix.SetsockoptInt(s, sol, o.opt, o.v); err != nil {
							t.Fatalf("setsockopt %d %d: %v", o.opt, o.v, err)
						}
					}
					for key, by := range impliedDefault {
						kv, err1 := unix.GetsockoptInt(s, key[0], key[1])
						bv, err2 := unix.GetsockoptInt(s, by[0], by[1])
						if err1 != nil || err2 != nil {
							t.Fatalf("getsockopt: %v, %v", err1, err2)
						}
						checked++
						if bv == 0 && kv != 0 {
							t.Fatalf("after %v %v %v: option %d is %d while %d, which implies it, is 0", a, b, c, key[1], kv, by[1])
						}
						if kv != 0 {
							implied++
						}
					}
					unix.Close(s)
				}
			}
		}
	}
	if implied == 0 {
		t.Fatalf("no sequence of %d set an implied option: the test is broken", checked)
	}
	// Set, an implied option is refused (under its implier's name,
	// which getsockopt then answers as set too).
	id := newInetDump()
	for _, o := range []op{{unix.SO_TIMESTAMPNS_NEW, 1}, {unix.SO_TIMESTAMPING_NEW, rx}} {
		for _, k := range kinds {
			s, err := unix.Socket(k.family, k.typ|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := unix.SetsockoptInt(s, sol, o.opt, o.v); err != nil {
				t.Fatal(err)
			}
			proto := unix.IPPROTO_TCP
			if k.typ == unix.SOCK_DGRAM {
				proto = unix.IPPROTO_UDP
			}
			st := &model.InetSocketState{Family: uint32(k.family), Type: uint32(k.typ), Proto: uint32(proto), State: tcprepair.StateClose}
			if err := inetOpts(id, s, st); err == nil || !strings.Contains(err.Error(), "SO_TIMESTAMP") {
				t.Errorf("option %d set on %d/%d: dump says %v, want a refusal", o.opt, k.family, k.typ, err)
			}
			unix.Close(s)
		}
	}
}
