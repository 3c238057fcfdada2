package migrate

import (
	"bytes"
	"io"
	"net"
	"os"
	"testing"
)

func TestParseCompress(t *testing.T) {
	for in, want := range map[string]string{"": CompressAuto, "auto": CompressAuto, "none": CompressNone, "zstd": CompressZstd} {
		if got, err := ParseCompress(in); err != nil || got != want {
			t.Errorf("ParseCompress(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseCompress("lz4"); err == nil {
		t.Error("ParseCompress(lz4): no error")
	}
}

func TestAutoCompress(t *testing.T) {
	for _, c := range []struct {
		link, zrate, ratio float64
		want               bool
	}{
		{12e6, 130e6, 0.01, true},   // 100 Mbit/s, compressible
		{12e6, 130e6, 1.0, false},   // incompressible
		{800e6, 130e6, 0.01, false}, // the link is faster than zstd
	} {
		if got := autoCompress(c.link, c.zrate, c.ratio); got != c.want {
			t.Errorf("link %.0f, zstd %.0f, ratio %.2f: %v, want %v", c.link, c.zrate, c.ratio, got, c.want)
		}
	}
}

// sampleCompress reads a running program's memory (this test's own).
func TestSampleCompress(t *testing.T) {
	rate, ratio, err := sampleCompress(os.Getpid())
	if err != nil || rate <= 0 || ratio <= 0 || ratio > 1.1 {
		t.Fatalf("rate %.0f, ratio %.3f, %v", rate, ratio, err)
	}
}

// Both directions of a zstdConn carry the bytes unchanged; zero and
// repeated pages cost almost nothing on the wire.
func TestZstdConnRoundTrip(t *testing.T) {
	a, b := net.Pipe()
	za, err := newZstdConn(a)
	if err != nil {
		t.Fatal(err)
	}
	zb, err := newZstdConn(b)
	if err != nil {
		t.Fatal(err)
	}
	// The raw pipe first: an unbuffered pipe would block the frames'
	// ends that closing writes.
	defer func() { a.Close(); b.Close(); za.Close(); zb.Close() }()
	page := make([]byte, 4096)
	for i := range page {
		page[i] = byte(i*131 + i>>5)
	}
	var msg []byte
	for i := 0; i < 256; i++ {
		if i%2 == 0 {
			msg = append(msg, page...)
		} else {
			msg = append(msg, make([]byte, 4096)...)
		}
	}
	got := make(chan []byte, 1)
	go func() {
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(zb, buf); err != nil {
			t.Error(err)
		}
		got <- buf
		_, _ = zb.Write([]byte("ok"))
	}()
	if _, err := za.Write(msg); err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, msg) {
		t.Fatal("bytes differ after the round trip")
	}
	ack := make([]byte, 2)
	if _, err := io.ReadFull(za, ack); err != nil || string(ack) != "ok" {
		t.Fatalf("answer %q, %v", ack, err)
	}
	if w := za.wire.n.Load(); w > uint64(len(msg))/50 {
		t.Errorf("1 MiB of one page and zero pages took %d bytes on the wire", w)
	}
}

// Whatever bytes arrive, the decompressing side errs or returns data,
// within its memory bound, and never panics.
func FuzzZstdConnRead(f *testing.F) {
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x58, 0x01, 0x00, 0x00})
	f.Add([]byte("not zstd"))
	f.Fuzz(func(t *testing.T, in []byte) {
		a, b := net.Pipe()
		z, err := newZstdConn(a)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { a.Close(); z.Close() }()
		go func() {
			_, _ = b.Write(in)
			b.Close()
		}()
		_, _ = io.Copy(io.Discard, io.LimitReader(z, 64<<20))
	})
}
