package drivers

import (
	"net/netip"
	"testing"
)

// The tables of /proc/net/raw and /proc/net/icmp6 as the kernel prints
// them (little-endian words).
func TestParseProcInet(t *testing.T) {
	raw := []byte(`  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  1: 0100007F:00FD 0200007F:0000 01 00000000:00000000 00:00000000 00000000     0        0 1234 2 0000000000000000 0
  1: 00000000:0001 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 99 2 0000000000000000 0
`)
	p, ok, err := parseProcInet(raw, 1234)
	if err != nil || !ok {
		t.Fatalf("parse: %v %v", ok, err)
	}
	if p.Local != netip.MustParseAddrPort("127.0.0.1:253") || p.Remote != netip.MustParseAddrPort("127.0.0.2:0") || p.State != 1 {
		t.Fatalf("got %+v", p)
	}
	if _, ok, err := parseProcInet(raw, 5); ok || err != nil {
		t.Fatalf("absent socket: %v %v", ok, err)
	}
	v6 := []byte(`  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
    3: 00000000000000000000000001000000:108B 00000000000000000000000001000000:0000 01 00000000:00000000 00:00000000 00000000     0        0 77 2 0000000000000000 0
`)
	p, ok, err = parseProcInet(v6, 77)
	if err != nil || !ok || p.Local != netip.MustParseAddrPort("[::1]:4235") || p.Remote != netip.MustParseAddrPort("[::1]:0") {
		t.Fatalf("v6: %+v %v %v", p, ok, err)
	}
	for _, bad := range []string{"", "x\n", "  sl  local_address\n 1: zz 00 01 0 0 0 0 0 7\n", "  sl  local_address\n 1: 0100007F:00FD 0200007F:0000 01 0 0 0 0 0 bad\n"} {
		if _, ok, err := parseProcInet([]byte(bad), 7); ok || (err == nil && bad != "") {
			t.Errorf("%q: %v %v", bad, ok, err)
		}
	}
}

func FuzzParseProcInet(f *testing.F) {
	f.Add([]byte("  sl  local_address rem_address   st\n  1: 0100007F:00FD 0200007F:0000 01 00000000:00000000 00:00000000 00000000 0 0 1234 2 0 0\n"), uint32(1234))
	f.Fuzz(func(t *testing.T, b []byte, ino uint32) {
		p, ok, err := parseProcInet(b, ino)
		if err != nil && ok {
			t.Fatalf("ok with error %v", err)
		}
		if ok && (!p.Local.IsValid() || !p.Remote.IsValid()) {
			t.Fatalf("invalid addresses %+v", p)
		}
	})
}
