package pageserver

import (
	"bytes"
	"errors"
	"io"
	"net"
	"path/filepath"
	"testing"

	"godwit/pageserver/internal/wire"
)

// TestGetPipelined sends several GETs ahead of their replies and reads
// the replies in order, over plain TCP (data by sendfile), TLS and QUIC.
func TestGetPipelined(t *testing.T) {
	dump := filepath.Join(t.TempDir(), "dump")
	writeLocal(t, dump, "pagemap-42.img", 1, []pageRange{
		{vaddr: 0x400000, nr: 2, hole: true},
		{vaddr: 0x600000, nr: 300, flags: FlagPresent | FlagLazy},
		{vaddr: 0x800000, nr: 3, flags: FlagPresent | FlagLazy},
	}, 5)
	type q struct {
		vaddr, nr, want uint64
	}
	qs := []q{
		{0x600000, 256, 256},
		{0x700000, 64, 44}, // cut at the entry's end (0x72c000)
		{0x400000, 1, 0},   // a hole: no pages
		{0x801000, 2, 2},
		{0x600000, 1, 1},
	}
	for _, tc := range []struct {
		name string
		tr   Transport
		tls  bool
	}{{"tcp", TransportTCP, false}, {"tls", TransportTCP, true}, {"quic", TransportQUIC, false}} {
		t.Run(tc.name, func(t *testing.T) {
			var o TransportOptions
			if tc.tls || tc.tr == TransportQUIC {
				o = tlsFiles(t, t.TempDir())
			}
			o.Transport, o.TLS = tc.tr, tc.tls
			ts := startServer(t, Config{ImagesDir: dump, Lazy: true}, o)
			c := ts.dial(t)
			for _, r := range qs {
				if err := c.SendGet(42, r.vaddr, r.nr); err != nil {
					t.Fatal(err)
				}
			}
			buf := make([]byte, 256*PageSize)
			for _, r := range qs {
				pid, vaddr, got, err := c.RecvGet(buf)
				if r.want == 0 {
					if !errors.Is(err, ErrNoPages) {
						t.Fatalf("GET %#x: %v, want ErrNoPages", r.vaddr, err)
					}
					continue
				}
				if err != nil || pid != 42 || vaddr != r.vaddr || got != r.want {
					t.Fatalf("GET %#x+%d = pid %d %#x %d pages, %v; want %d", r.vaddr, r.nr, pid, vaddr, got, err, r.want)
				}
				want := make([]byte, got*PageSize)
				fillPages(want, r.vaddr, 5)
				if !bytes.Equal(buf[:got*PageSize], want) {
					t.Fatalf("GET %#x: wrong data", r.vaddr)
				}
			}
			if _, _, _, err := c.RecvGet(buf); err == nil {
				t.Fatal("RecvGet with no GET sent succeeded")
			}
			// Get waits for no reply that is not its own.
			if err := c.SendGet(42, 0x600000, 8); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Get(42, 0x600000, 1, buf); err == nil {
				t.Fatal("Get while a pipelined reply is due succeeded")
			}
			// Close reads the replies still due, then ends cleanly.
			if err := c.SendGet(42, 0x800000, 3); err != nil {
				t.Fatal(err)
			}
			if err := c.Close(); err != nil {
				t.Fatalf("Close with replies due: %v", err)
			}
		})
	}
}

// FuzzClientRecvGet feeds arbitrary replies to a pipelined GET: the client
// must fail cleanly, never read past its buffer, never panic.
func FuzzClientRecvGet(f *testing.F) {
	ok := hdr(wire.MakeCmd(wire.CmdAddF, wire.FlagPresent), 2, 0x400000, 42)
	f.Add(append(ok, make([]byte, 2*PageSize)...))
	f.Add(hdr(wire.MakeCmd(wire.CmdAddF, wire.FlagPresent), 0, 0x400000, 42))
	f.Add(hdr(wire.CmdAdd, 1<<40, 0x400000, 42))
	f.Add(hdr(wire.MakeCmd(wire.CmdAddF, wire.FlagPresent), 1, 0x401000, 42))
	f.Add([]byte{7})
	f.Fuzz(func(t *testing.T, reply []byte) {
		cl, sv := net.Pipe()
		go func() {
			var req [wire.HeaderSize]byte
			io.ReadFull(sv, req[:])
			sv.Write(reply)
			sv.Close()
		}()
		c := &Client{transport: TransportTCP, conn: cl, sinks: map[*TaskSink]struct{}{}}
		buf := make([]byte, 4*PageSize)
		if err := c.SendGet(42, 0x400000, 4); err != nil {
			t.Fatal(err)
		}
		_, _, n, err := c.RecvGet(buf)
		if err == nil && (n == 0 || n > 4) {
			t.Fatalf("RecvGet = %d pages without error", n)
		}
		cl.Close()
	})
}
