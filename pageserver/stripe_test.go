package pageserver

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"godwit/pageserver/internal/wire"
)

// stripedRanges is a task large enough that its pages spread over every
// connection (many stripeChunk chunks), with entries without data between.
var stripedRanges = []pageRange{
	{vaddr: 0x400000, nr: 3, flags: FlagPresent},
	{vaddr: 0x403000, nr: 2, flags: FlagPresent},
	{vaddr: 0x500000, nr: 4, flags: FlagPresent | FlagLazy},
	{vaddr: 0x600000, nr: 1, flags: FlagLazy},
	{vaddr: 0x700000, nr: 7*stripeChunk + 13, flags: FlagPresent},
	{vaddr: 0x7f0000000000, nr: 3 * stripeChunk, flags: FlagPresent | FlagLazy},
}

// stripedRoundTrip sends tasks over a client striped over 3 connections:
// the images must be byte for byte those of a local dump (and so of one
// connection), every page counted once.
func stripedRoundTrip(t *testing.T, o TransportOptions) {
	ts := startServer(t, Config{}, o)
	co := clientOf(o)
	co.Streams = 3
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Dial(ctx, ts.addr, co)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.sp.subs) != 3 {
		t.Fatalf("%d connections", len(c.sp.subs))
	}
	jobs := []struct {
		dst  uint64
		name string
		rs   []pageRange
		salt uint64
	}{
		{TaskDst(100), "pagemap-100.img", stripedRanges, 1},
		{TaskDst(101), "pagemap-101.img", taskRanges, 2},
		{ShmemDst(7), "pagemap-shmem-7.img", shmemRanges, 3},
	}
	for _, j := range jobs {
		s, err := c.OpenTask(ctx, j.dst, true)
		if err != nil {
			t.Fatal(err)
		}
		if s.HasParent() {
			t.Fatal("has_parent without parent images")
		}
		sendTask(t, s, j.rs, j.salt)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	var want int64
	for _, j := range jobs {
		checkSame(t, ts.dir, j.name, j.rs, j.salt)
		want += rangesBytes(j.rs)
	}
	if got := metricValue(t, ts.m.bytes.WithLabelValues("in")); got != float64(want) {
		t.Errorf("bytes_total{in} = %v, want %d", got, want)
	}
	if got := metricValue(t, ts.m.conns.WithLabelValues(string(o.Transport))); o.Transport != "" && got != 3 {
		t.Errorf("%v connections, want 3", got)
	}
}

func TestStripedTCP(t *testing.T) { stripedRoundTrip(t, TransportOptions{}) }

func TestStripedTLS(t *testing.T) {
	o := tlsFiles(t, t.TempDir())
	o.TLS = true
	stripedRoundTrip(t, o)
}

func TestStripedQUIC(t *testing.T) {
	o := tlsFiles(t, t.TempDir())
	o.Transport = TransportQUIC
	stripedRoundTrip(t, o)
}

// TestStripedParent: holes are checked against the parent on whichever
// connection they travel, and OPEN_STRIPE reports the parent.
func TestStripedParent(t *testing.T) {
	root := t.TempDir()
	writeLocal(t, filepath.Join(root, "pre1"), "pagemap-100.img", 1, []pageRange{
		{vaddr: 0x400000, nr: 8, flags: FlagPresent},
		{vaddr: 0x500000, nr: 600, flags: FlagPresent},
	}, 5)
	ts := startServer(t, Config{ImagesDir: filepath.Join(root, "dump"), PrevImagesDir: "../pre1", Once: true, Sessions: 2}, TransportOptions{})
	o := ts.opts
	o.Streams = 2
	c, err := Dial(context.Background(), ts.addr, o)
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.OpenTask(context.Background(), TaskDst(100), true)
	if err != nil {
		t.Fatal(err)
	}
	if !s.HasParent() {
		t.Fatal("OPEN_STRIPE: no parent reported")
	}
	rs := []pageRange{
		{vaddr: 0x400000, nr: 3, hole: true},
		{vaddr: 0x403000, nr: 2, flags: FlagPresent},
		{vaddr: 0x405000, nr: 3, hole: true},
		{vaddr: 0x500000, nr: 300, flags: FlagPresent},
		{vaddr: 0x500000 + 300*PageSize, nr: 300, hole: true},
	}
	sendTask(t, s, rs, 6)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	checkSame(t, ts.dir, "pagemap-100.img", rs, 6)

	// A hole the parent does not cover fails the whole pagemap.
	ts = startServer(t, Config{ImagesDir: filepath.Join(root, "dump2"), PrevImagesDir: "../pre1"}, TransportOptions{})
	c, err = Dial(context.Background(), ts.addr, TransportOptions{Streams: 2})
	if err != nil {
		t.Fatal(err)
	}
	s, _ = c.OpenTask(context.Background(), TaskDst(100), true)
	sendTask(t, s, rs[:2], 6)
	s.Hole(0x508000+600*PageSize, 1)
	if err := c.Close(); err == nil {
		t.Fatal("uncovered hole accepted")
	}
	ts.log.waitLog(t, "missing in the parent pagemap")
	ts.log.waitLog(t, "dropped striped pagemap-100.img")
	if exists(ts.dir, "pagemap-100.img") {
		t.Error("failed striped pagemap left pagemap-100.img")
	}
}

// stripePeer speaks the striped commands by hand.
type stripePeer struct{ *rawPeer }

func (p stripePeer) addAt(flags uint16, nr, vaddr, seq, off uint64, data []byte) {
	var ext [wire.StripeExtSize]byte
	binary.NativeEndian.PutUint64(ext[0:], seq)
	binary.NativeEndian.PutUint64(ext[8:], off)
	p.send(wire.MakeCmd(wire.CmdAddAt, flags), nr, vaddr, TaskDst(5), append(ext[:], data...))
}

func (p stripePeer) reply(n int) []byte {
	b := make([]byte, n)
	p.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadFull(p.c, b); err != nil {
		p.t.Fatal(err)
	}
	return b
}

// closeStatus is CLOSE's answer; -2 when the server hung up instead.
func (p stripePeer) closeStatus() int32 {
	p.send(wire.CmdClose, 0, 0, 0, nil)
	var b [4]byte
	p.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadFull(p.c, b[:]); err != nil {
		return -2
	}
	return int32(binary.NativeEndian.Uint32(b[:]))
}

// TestStripedRefused: a striped pagemap whose entries do not add up to
// what a single stream would write is refused and removed: an entry
// missing, one sent twice, data at the wrong place, one connection lost.
func TestStripedRefused(t *testing.T) {
	page := make([]byte, PageSize)
	cases := map[string]func(a, b stripePeer){
		"missing entry": func(a, b stripePeer) {
			a.addAt(wire.FlagPresent, 1, 0x1000, 0, 0, page)
			a.send(wire.CmdEndStripe, 2, 2, TaskDst(5), nil)
			b.send(wire.CmdEndStripe, 2, 2, TaskDst(5), nil)
		},
		"entry twice": func(a, b stripePeer) {
			a.addAt(wire.FlagPresent, 1, 0x1000, 0, 0, page)
			b.addAt(wire.FlagPresent, 1, 0x2000, 0, 1, page)
		},
		"wrong offset": func(a, b stripePeer) {
			a.addAt(wire.FlagPresent, 1, 0x1000, 0, 1, page)
			b.addAt(wire.FlagPresent, 1, 0x2000, 1, 1, page)
			a.send(wire.CmdEndStripe, 2, 2, TaskDst(5), nil)
			b.send(wire.CmdEndStripe, 2, 2, TaskDst(5), nil)
		},
		"counts disagree": func(a, b stripePeer) {
			a.addAt(wire.FlagPresent, 1, 0x1000, 0, 0, page)
			a.send(wire.CmdEndStripe, 1, 1, TaskDst(5), nil)
			b.send(wire.CmdEndStripe, 2, 1, TaskDst(5), nil)
		},
		"copy from after itself": func(a, b stripePeer) {
			a.addAt(wire.FlagPresent, 1, 0x1000, 0, 0, page)
			var ext [wire.StripeExtSize + wire.CopyExtSize]byte
			binary.NativeEndian.PutUint64(ext[0:], 1)
			binary.NativeEndian.PutUint64(ext[8:], 1)
			binary.NativeEndian.PutUint64(ext[16:], 1)
			b.send(wire.MakeCmd(wire.CmdCopyAt, wire.FlagPresent), 1, 0x2000, TaskDst(5), ext[:])
		},
		"zero not present": func(a, b stripePeer) {
			var ext [wire.StripeExtSize]byte
			a.send(wire.MakeCmd(wire.CmdZeroAt, wire.FlagLazy), 1, 0x2000, TaskDst(5), ext[:])
		},
		"connection lost": func(a, b stripePeer) {
			a.addAt(wire.FlagPresent, 1, 0x1000, 0, 0, page)
			a.send(wire.CmdEndStripe, 1, 1, TaskDst(5), nil)
			b.c.Close()
		},
	}
	for name, f := range cases {
		t.Run(name, func(t *testing.T) {
			ts := startServer(t, Config{}, TransportOptions{})
			a, b := stripePeer{dialRaw(t, ts.addr)}, stripePeer{dialRaw(t, ts.addr)}
			for _, p := range []stripePeer{a, b} {
				p.send(wire.CmdOpenStripe, 2, 0, TaskDst(5), nil)
				if r := p.reply(1); r[0] != 0 {
					t.Fatalf("has_parent %d", r[0])
				}
			}
			f(a, b)
			if st := a.closeStatus(); st == 0 {
				t.Fatal("CLOSE status 0")
			}
			ts.log.waitLog(t, "dropped striped pagemap-5.img")
			if exists(ts.dir, "pagemap-5.img") {
				t.Error("pagemap-5.img left")
			}
			ts.srvOpen(t)
		})
	}
}

// srvOpen checks that no pagemap is still claimed.
func (ts *testServer) srvOpen(t *testing.T) {
	t.Helper()
	// A new connection may write the pagemap again: nothing holds it.
	p := stripePeer{dialRaw(t, ts.addr)}
	p.send(wire.CmdOpen2, 0, 0, TaskDst(5), nil)
	p.reply(1)
	if st := p.closeStatus(); st != 0 {
		t.Fatalf("pagemap-5.img still held: status %d", st)
	}
}

// TestStripedTooMany: more connections than a peer may hold, or a
// mismatch, is refused at OPEN_STRIPE.
func TestStripedTooMany(t *testing.T) {
	if _, err := Dial(context.Background(), "127.0.0.1:1", TransportOptions{Streams: MaxStreams + 1}); err == nil {
		t.Fatal("too many streams accepted")
	}
	ts := startServer(t, Config{}, TransportOptions{})
	a, b := stripePeer{dialRaw(t, ts.addr)}, stripePeer{dialRaw(t, ts.addr)}
	a.send(wire.CmdOpenStripe, 2, 0, TaskDst(5), nil)
	a.reply(1)
	b.send(wire.CmdOpenStripe, 3, 0, TaskDst(5), nil)
	b.closedByServer()
	ts.log.waitLog(t, "striped over 2 connections, not 3")
}

// sendHoles sends n ADD_AT holes (no data) from seq on, in one write.
func (p stripePeer) sendHoles(seq, n uint64) {
	var b bytes.Buffer
	var h [wire.HeaderSize]byte
	var ext [wire.StripeExtSize]byte
	for i := seq; i < seq+n; i++ {
		wire.Header{Cmd: wire.MakeCmd(wire.CmdAddAt, wire.FlagLazy), NrPages: 1, Vaddr: (i + 1) * PageSize, DstID: TaskDst(5)}.Marshal(h[:])
		binary.NativeEndian.PutUint64(ext[0:], i)
		b.Write(h[:])
		b.Write(ext[:])
	}
	p.c.Write(b.Bytes())
}

// waitStripeEnts waits until the server holds n striped entries.
func (ts *testServer) waitStripeEnts(t *testing.T, n int64) {
	t.Helper()
	for end := time.Now().Add(20 * time.Second); ts.srv.stripeEnts.Load() != n; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("server holds %d striped entries, want %d", ts.srv.stripeEnts.Load(), n)
		}
	}
}

// TestStripedEntriesBounded: holes cost a peer no data, but each is held
// in memory until END_STRIPE: without --max-bytes they are refused past
// MaxStripeEntries, the heap they take stays within stripeEntRAM each,
// and dropping the stripe returns them.
func TestStripedEntriesBounded(t *testing.T) {
	const limit = 50000
	ts := startServer(t, Config{MaxStripeEntries: limit}, TransportOptions{})
	a, b := stripePeer{dialRaw(t, ts.addr)}, stripePeer{dialRaw(t, ts.addr)}
	for _, p := range []stripePeer{a, b} {
		p.send(wire.CmdOpenStripe, 2, 0, TaskDst(5), nil)
		p.reply(1)
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	a.sendHoles(0, limit)
	ts.waitStripeEnts(t, limit)
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > limit*stripeEntRAM+4<<20 {
		t.Errorf("%d held entries grew the heap by %d bytes, more than %d each", limit, grew, stripeEntRAM)
	}
	b.sendHoles(limit, 1000)
	ts.log.waitLog(t, "limit of 50000 striped pagemap entries held until END_STRIPE is reached")
	b.closedByServer()
	ts.log.waitLog(t, "dropped striped pagemap-5.img")
	ts.waitStripeEnts(t, 0)
	if exists(ts.dir, "pagemap-5.img") {
		t.Error("pagemap-5.img left")
	}
}

// TestStripedEntriesCharged: with --max-bytes, a held entry is charged
// the memory it takes, not only its bytes in the pagemap.
func TestStripedEntriesCharged(t *testing.T) {
	const n = 1000
	ts := startServer(t, Config{MaxBytes: n * stripeEntRAM}, TransportOptions{})
	a, b := stripePeer{dialRaw(t, ts.addr)}, stripePeer{dialRaw(t, ts.addr)}
	for _, p := range []stripePeer{a, b} {
		p.send(wire.CmdOpenStripe, 2, 0, TaskDst(5), nil)
		p.reply(1)
	}
	a.sendHoles(0, n)
	ts.waitStripeEnts(t, n)
	a.sendHoles(n, 1)
	ts.log.waitLog(t, fmt.Sprintf("limit of %d bytes of images is reached (--max-bytes)", n*stripeEntRAM))
	a.closedByServer()
	ts.waitStripeEnts(t, 0)
}

// TestStripedOtherPeer: only the peer that created a striped pagemap may
// join it; another address, or another certificate from the same
// address, is refused.
func TestStripedOtherPeer(t *testing.T) {
	ts := startServer(t, Config{}, TransportOptions{})
	a := stripePeer{dialRaw(t, ts.addr)}
	a.send(wire.CmdOpenStripe, 2, 0, TaskDst(5), nil)
	a.reply(1)
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	c, err := d.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	b := stripePeer{&rawPeer{t, c}}
	b.send(wire.CmdOpenStripe, 2, 0, TaskDst(5), nil)
	b.closedByServer()
	ts.log.waitLog(t, "is striped by another peer")
	// The creator's own second connection still joins.
	a2 := stripePeer{dialRaw(t, ts.addr)}
	a2.send(wire.CmdOpenStripe, 2, 0, TaskDst(5), nil)
	a2.reply(1)

	ip := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
	port := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2}
	c1, c2 := &x509.Certificate{Raw: []byte{1}}, &x509.Certificate{Raw: []byte{2}}
	if stripeOwner(ip, []*x509.Certificate{c1}) == stripeOwner(ip, []*x509.Certificate{c2}) {
		t.Error("two certificates from one address are one stripe owner")
	}
	if stripeOwner(ip, []*x509.Certificate{c1}) != stripeOwner(port, []*x509.Certificate{c1}) {
		t.Error("one client's connections from two ports are two stripe owners")
	}
}
