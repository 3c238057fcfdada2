package pageserver

import (
	"bytes"
	"io"
	"net"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"godwit/internal/logging"
	"godwit/pageserver/internal/wire"
)

func hdr(cmd uint32, nr, vaddr, dst uint64) []byte {
	var b [wire.HeaderSize]byte
	wire.Header{Cmd: cmd, NrPages: nr, Vaddr: vaddr, DstID: dst}.Marshal(b[:])
	return b[:]
}

// FuzzServerConn feeds arbitrary bytes to a server session over a
// net.Pipe: it must never panic, never hang once the peer is gone, and
// allocate a bounded amount whatever the headers announce. The first byte
// picks a dump server (even) or a lazy one (odd).
func FuzzServerConn(f *testing.F) {
	var seed bytes.Buffer
	seed.WriteByte(0)
	seed.Write(hdr(wire.CmdOpen2, 0, 0, TaskDst(10)))
	seed.Write(hdr(wire.MakeCmd(wire.CmdAddF, wire.FlagPresent), 1, 0x1000, TaskDst(10)))
	seed.Write(make([]byte, PageSize))
	seed.Write(hdr(wire.CmdHole, 2, 0x2000, TaskDst(10)))
	seed.Write(hdr(wire.CmdParent, 0, 0, TaskDst(10)))
	seed.Write(hdr(wire.CmdClose, 0, 0, 0))
	f.Add(seed.Bytes())
	f.Add(append([]byte{1}, hdr(wire.CmdGet, 4, 0x400000, 42)...))
	f.Add(append([]byte{0}, hdr(wire.CmdAdd, 1<<50, 0, TaskDst(3))...))
	f.Add([]byte{0, 1, 2, 3})
	// A striped pagemap, whose other connection never comes.
	var st bytes.Buffer
	st.WriteByte(0)
	st.Write(hdr(wire.CmdOpenStripe, 2, 0, TaskDst(11)))
	st.Write(hdr(wire.MakeCmd(wire.CmdAddAt, wire.FlagPresent), 1, 0x1000, TaskDst(11)))
	st.Write(make([]byte, wire.StripeExtSize+PageSize))
	st.Write(hdr(wire.MakeCmd(wire.CmdAddAt, wire.FlagParent), 1, 0x3000, TaskDst(11)))
	st.Write(make([]byte, wire.StripeExtSize))
	st.Write(hdr(wire.MakeCmd(wire.CmdZeroAt, wire.FlagPresent), 2, 0x5000, TaskDst(11)))
	st.Write([]byte{2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0})
	st.Write(hdr(wire.MakeCmd(wire.CmdCopyAt, wire.FlagPresent), 1, 0x8000, TaskDst(11)))
	st.Write([]byte{3, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	st.Write(hdr(wire.CmdEndStripe, 2, 1, TaskDst(11)))
	st.Write(hdr(wire.CmdClose, 0, 0, 0))
	f.Add(st.Bytes())
	// Zero and copied pages, and a copy of pages not written yet.
	var dd bytes.Buffer
	dd.WriteByte(0)
	dd.Write(hdr(wire.CmdOpen2, 0, 0, TaskDst(12)))
	dd.Write(hdr(wire.MakeCmd(wire.CmdAddF, wire.FlagPresent), 1, 0x1000, TaskDst(12)))
	dd.Write(bytes.Repeat([]byte{5}, PageSize))
	dd.Write(hdr(wire.MakeCmd(wire.CmdZero, wire.FlagPresent), 3, 0x2000, TaskDst(12)))
	dd.Write(hdr(wire.MakeCmd(wire.CmdCopy, wire.FlagPresent), 2, 0x5000, TaskDst(12)))
	dd.Write([]byte{1, 0, 0, 0, 0, 0, 0, 0})
	dd.Write(hdr(wire.MakeCmd(wire.CmdCopy, wire.FlagPresent), 8, 0x9000, TaskDst(12)))
	dd.Write([]byte{4, 0, 0, 0, 0, 0, 0, 0})
	dd.Write(hdr(wire.CmdClose, 0, 0, 0))
	f.Add(dd.Bytes())
	old := stripeWait
	stripeWait = time.Second
	f.Cleanup(func() { stripeWait = old })

	dir := f.TempDir()
	logs := logging.New(io.Discard, 0)
	dump, err := NewServer(Config{ImagesDir: filepath.Join(dir, "dump"), Log: logs})
	if err != nil {
		f.Fatal(err)
	}
	writeLocal(f, filepath.Join(dir, "lazy"), "pagemap-42.img", 1,
		[]pageRange{{vaddr: 0x400000, nr: 8, flags: FlagPresent | FlagLazy}}, 1)
	lazy, err := NewServer(Config{ImagesDir: filepath.Join(dir, "lazy"), Lazy: true, Log: logs})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { dump.Close(); lazy.Close() })

	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		s := dump
		if in[0]&1 != 0 {
			s = lazy
		}
		cl, sv := net.Pipe()
		done := make(chan struct{})
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		go func() {
			defer close(done)
			ss := s.newSession("fuzz", sv, sv, nil)
			err := ss.run()
			s.finish(ss, err)
			sv.Close()
		}()
		go io.Copy(io.Discard, cl) // replies
		cl.Write(in[1:])
		cl.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("session did not end after the peer left")
		}
		runtime.ReadMemStats(&after)
		// Buffers: 16 KiB header reader, 256 KiB copy buffer, 64 KiB
		// pagemap writer, parent pagemap of a tiny image.
		if d := after.TotalAlloc - before.TotalAlloc; d > 4<<20 {
			t.Fatalf("session allocated %d bytes", d)
		}
		s.mu.Lock()
		n := len(s.open)
		s.mu.Unlock()
		if n != 0 {
			t.Fatalf("%d pagemaps still claimed after the session", n)
		}
	})
}

// FuzzClientGet feeds arbitrary replies to Client.Get: the client must
// fail cleanly, never read past its buffer, never panic.
func FuzzClientGet(f *testing.F) {
	ok := hdr(wire.MakeCmd(wire.CmdAddF, wire.FlagPresent), 2, 0x400000, 42)
	f.Add(append(ok, make([]byte, 2*PageSize)...))
	f.Add(hdr(wire.MakeCmd(wire.CmdAddF, wire.FlagPresent), 0, 0x400000, 42))
	f.Add(hdr(wire.CmdAdd, 1<<40, 0x400000, 42))
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
		n, err := c.Get(42, 0x400000, 4, buf)
		if err == nil && (n == 0 || n > 4) {
			t.Fatalf("Get = %d pages without error", n)
		}
		cl.Close()
	})
}

// FuzzServerConnZstd feeds arbitrary bytes to a session of a compressing
// server (TransportOptions.Compress): whatever the frames announce, the
// session must end without a panic or a hang and allocate a bounded
// amount (the decoder's window and memory are bounded).
func FuzzServerConnZstd(f *testing.F) {
	var plain bytes.Buffer
	plain.Write(hdr(wire.CmdOpen2, 0, 0, TaskDst(10)))
	plain.Write(hdr(wire.MakeCmd(wire.CmdAddF, wire.FlagPresent), 1, 0x1000, TaskDst(10)))
	plain.Write(make([]byte, PageSize))
	plain.Write(hdr(wire.CmdClose, 0, 0, 0))
	var z bytes.Buffer
	zw, err := newZstdStream(struct {
		io.Reader
		io.Writer
	}{bytes.NewReader(nil), &z})
	if err != nil {
		f.Fatal(err)
	}
	zw.Write(plain.Bytes())
	f.Add(z.Bytes())
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0})
	f.Add([]byte{1, 2, 3})

	logs := logging.New(io.Discard, 0)
	dump, err := NewServer(Config{ImagesDir: filepath.Join(f.TempDir(), "dump"), Log: logs})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { dump.Close() })
	f.Fuzz(func(t *testing.T, in []byte) {
		cl, sv := net.Pipe()
		done := make(chan struct{})
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		go func() {
			defer close(done)
			zc, err := newZstdConn(sv)
			if err != nil {
				t.Error(err)
				return
			}
			ss := dump.newSession("fuzz", zc, zc, nil)
			err = ss.run()
			dump.finish(ss, err)
			sv.Close()
		}()
		go io.Copy(io.Discard, cl)
		cl.Write(in)
		cl.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("session did not end after the peer left")
		}
		runtime.ReadMemStats(&after)
		if d := after.TotalAlloc - before.TotalAlloc; d > 48<<20 {
			t.Fatalf("session allocated %d bytes", d)
		}
	})
}
