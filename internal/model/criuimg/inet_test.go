package criuimg

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"godwit/internal/images"
	"godwit/internal/model"
)

func inetTree(t testing.TB) *model.Tree {
	tr := sampleTree(t)
	ap := netip.MustParseAddrPort
	add := []*model.File{
		{ID: 40, Kind: model.InetSocket, Flags: unix.O_RDWR | unix.O_NONBLOCK, MntID: -1, Inet: &model.InetSocketState{
			Ino: 1000, Family: unix.AF_INET, Type: unix.SOCK_STREAM, Proto: unix.IPPROTO_MPTCP, State: 10,
			Src: ap("127.0.0.1:80"), Dst: ap("0.0.0.0:0"), Backlog: 7, BindDev: "lo",
			Opts: model.SocketOpts{SndBuf: 1000, RcvBuf: 2000, Priority: 3, Mark: 9},
			Inet: model.InetOpts{ReuseAddr: true, ReusePort: true, KeepAlive: true, LingerOn: true, Linger: 5, Freebind: true, Pktinfo: true, TOS: 16, TTL: 9,
				NoDelay: true, KeepIdle: 60, KeepIntvl: 10, KeepCnt: 5}}},
		{ID: 41, Kind: model.InetSocket, Flags: unix.O_RDWR, MntID: -1, Inet: &model.InetSocketState{
			Ino: 1001, Family: unix.AF_INET6, Type: unix.SOCK_STREAM, Proto: unix.IPPROTO_TCP, State: 8, Shutdown: 1,
			Src: ap("[::ffff:127.0.0.1]:80"), Dst: ap("[::ffff:127.0.0.1]:5000"), V6Only: false,
			Inet: model.InetOpts{Cork: true, KeepIdle: 7200, KeepIntvl: 75, KeepCnt: 9},
			Stream: &model.TCPStream{InSeq: 1 << 31, OutSeq: 77, InQ: []byte("to read"), OutQ: []byte("to send"), Unsent: 3,
				OptMask: 7, SndWscale: 7, RcvWscale: 9, MSSClamp: 65483, Timestamp: 12345,
				HasWindow: true, SndWl1: 1, SndWnd: 2, MaxWnd: 3, RcvWnd: 4, RcvWup: 5}}},
		{ID: 42, Kind: model.InetSocket, Flags: unix.O_RDWR, MntID: -1, Inet: &model.InetSocketState{
			Ino: 1002, Family: unix.AF_INET6, Type: unix.SOCK_DGRAM, Proto: unix.IPPROTO_UDP, State: 1, V6Only: true,
			Src: ap("[::1]:53"), Dst: ap("[::1]:5353"), Inet: model.InetOpts{Broadcast: true, OOBInline: true},
			// ldb [0]; jeq #'x', drop, keep; ret #0; ret #-1
			Opts: model.SocketOpts{Filter: []unix.SockFilter{{Code: 0x30}, {Code: 0x15, Jt: 0, Jf: 1, K: 'x'}, {Code: 0x6}, {Code: 0x6, K: 0xffffffff}}}}},
		{ID: 43, Kind: model.InetSocket, Flags: unix.O_RDWR, MntID: -1, Inet: &model.InetSocketState{
			Ino: 1003, Family: unix.AF_INET, Type: unix.SOCK_RAW, Proto: unix.IPPROTO_ICMP, State: 7,
			Src: ap("127.0.0.1:1"), Dst: ap("0.0.0.0:0"),
			Inet: model.InetOpts{TTL: 33, Raw: &model.RawOpts{HdrIncl: true, NoDefrag: true, Checksum: true, ICMPFilter: []uint32{0xfffffffe}}}}},
		{ID: 44, Kind: model.InetSocket, Flags: unix.O_RDWR, MntID: -1, Inet: &model.InetSocketState{
			Ino: 1004, Family: unix.AF_INET6, Type: unix.SOCK_RAW, Proto: unix.IPPROTO_ICMPV6, State: 1,
			Src: ap("[::1]:58"), Dst: ap("[::1]:0"),
			Inet: model.InetOpts{Raw: &model.RawOpts{ICMPFilter: []uint32{1, 2, 3, 4, 5, 6, 7, 8}}}}},
		{ID: 45, Kind: model.InetSocket, Flags: unix.O_RDWR, MntID: -1, Inet: &model.InetSocketState{
			Ino: 1005, Family: unix.AF_INET, Type: unix.SOCK_DGRAM, Proto: unix.IPPROTO_ICMP, State: 7,
			Src: ap("127.0.0.1:4242"), Dst: ap("0.0.0.0:0")}},
	}
	k := tr.Root()
	for i, f := range add {
		tr.Files[f.ID] = f
		k.FDs = append(k.FDs, model.FD{Num: 40 + i, File: f.ID})
	}
	return tr
}

// Inet sockets and TCP streams survive Write then Read; CRIU's crit
// decodes the entries and the stream with its queues.
func TestInetRoundTrip(t *testing.T) {
	tr := inetTree(t)
	dir, names := writeTree(t, tr)
	if !strings.Contains(strings.Join(names, " "), TCPStreamImg(1001)) {
		t.Fatalf("no %s among %v", TCPStreamImg(1001), names)
	}
	got := readTree(t, dir)
	for _, id := range []model.ID{40, 41, 42, 43, 44, 45} {
		if w, g := tr.Files[id], got.Files[id]; !reflect.DeepEqual(w, g) {
			t.Errorf("file %d: read %+v\n%+v, wrote %+v\n%+v", id, g, g.Inet, w, w.Inet)
		}
	}
	out, err := exec.Command(critPath(t), "show", filepath.Join(dir, images.FilesImg)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"INETSK"`) || !strings.Contains(string(out), "127.0.0.1") {
		t.Errorf("crit show files.img: %v\n%.2000s", err, out)
	}
	out, err = exec.Command("crit", "show", filepath.Join(dir, TCPStreamImg(1001))).CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"inq_len": 7`) || !strings.Contains(string(out), `"unsq_len": 3`) {
		t.Errorf("crit show %s: %v\n%s", TCPStreamImg(1001), err, out)
	}
}

// A stream whose queues do not match its entry, and an inet socket of an
// unknown family, are refused.
func TestInetRefused(t *testing.T) {
	dir, _ := writeTree(t, inetTree(t))
	p := filepath.Join(dir, TCPStreamImg(1001))
	b, _ := os.ReadFile(p)
	if err := os.WriteFile(p, b[:len(b)-2], 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := images.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := Read(d); err == nil || !strings.Contains(err.Error(), TCPStreamImg(1001)) {
		t.Fatalf("Read of a truncated stream: %v", err)
	}
	tr := inetTree(t)
	tr.Files[42].Inet.Family = unix.AF_PACKET
	dir, _ = writeTree(t, tr)
	d2, err := images.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if _, err := Read(d2); err == nil || !strings.Contains(err.Error(), "family 17") {
		t.Fatalf("Read of an AF_PACKET inet entry: %v", err)
	}
	tr = inetTree(t)
	tr.Files[42].Inet.Opts.Filter = make([]unix.SockFilter, bpfMaxInsns+1)
	dir, _ = writeTree(t, tr)
	d3, err := images.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d3.Close()
	if _, err := Read(d3); err == nil || !strings.Contains(err.Error(), "socket filter of 4097 instructions") {
		t.Fatalf("Read of a socket filter longer than the kernel takes: %v", err)
	}
}

// A socket filter's words are each instruction's bytes in memory order,
// as CRIU keeps them.
func TestSoFilterWords(t *testing.T) {
	f := []unix.SockFilter{{Code: 0x15, Jt: 2, Jf: 3, K: 0x11223344}}
	w := soFilterWords(f)
	if len(w) != 1 || w[0] != 0x11223344_03_02_0015 {
		t.Fatalf("words %#x", w)
	}
	back, err := sockFilterOfWords(w)
	if err != nil || !reflect.DeepEqual(back, f) {
		t.Fatalf("read back %+v, %v", back, err)
	}
}

// FuzzReadInet replaces one image of a dump with inet sockets and a TCP
// stream with arbitrary bytes: Read returns a tree or an error, never
// panics, and an inet file carries its state.
func FuzzReadInet(f *testing.F) {
	src := f.TempDir()
	d, err := images.Open(src, true)
	if err != nil {
		f.Fatal(err)
	}
	if err := Write(d, inetTree(f), nil); err != nil {
		f.Fatal(err)
	}
	d.Close()
	ents, _ := os.ReadDir(src)
	var names []string
	for i, e := range ents {
		names = append(names, e.Name())
		b, _ := os.ReadFile(filepath.Join(src, e.Name()))
		f.Add(uint8(i), b)
	}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		dir := t.TempDir()
		for i, n := range names {
			b, _ := os.ReadFile(filepath.Join(src, n))
			if i == int(which)%len(names) {
				b = data
			}
			if err := os.WriteFile(filepath.Join(dir, n), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		d, err := images.Open(dir, false)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		tr, err := Read(d)
		if err != nil {
			return
		}
		for id, fl := range tr.Files {
			if fl.Kind == model.InetSocket && fl.Inet == nil {
				t.Fatalf("file %d: inet socket without its state", id)
			}
		}
	})
}
