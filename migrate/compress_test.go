package migrate

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
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
		// zstd a little faster than the link, the pages halved: zstd
		// and the send of what it made, one after the other, are not.
		{100e6, 130e6, 0.5, false},
		{12e6, 130e6, 0.5, true},
		{400e6, 250e6, 0.02, false}, // loopback: TLS faster than zstd
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

// The sample spreads over all the resident memory: a program whose
// lowest mappings are a table of zeros and whose bulk does not compress is
// sampled as incompressible. The first 4 MiB alone were a 4 GiB program's
// zeroed counters (ratio 0.0003): compression was chosen where it cut the
// rounds' rate fourfold.
func TestSampleCompressSpread(t *testing.T) {
	const table = 8 << 20
	// Resident zeros (MAP_POPULATE) at a fixed address below the heap.
	at, _, errno := unix.Syscall6(unix.SYS_MMAP, 0x10000000, table, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED_NOREPLACE|unix.MAP_POPULATE, ^uintptr(0), 0)
	if errno != 0 {
		t.Fatal(errno)
	}
	defer unix.Syscall(unix.SYS_MUNMAP, at, table, 0)
	bulk := make([]byte, 96<<20)
	if _, err := rand.Read(bulk); err != nil {
		t.Fatal(err)
	}
	_, ratio, err := sampleCompress(os.Getpid())
	runtime.KeepAlive(bulk)
	if err != nil || ratio < 0.6 {
		t.Fatalf("ratio %.3f, %v: want the random bulk's (about 1)", ratio, err)
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
