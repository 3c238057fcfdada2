package bpfiter

import (
	"encoding/binary"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// reuseportPair binds two UDP sockets to one loopback port with
// SO_REUSEPORT and returns them with their inodes.
func reuseportPair(t *testing.T) (fds [2]int, inos [2]uint64) {
	t.Helper()
	port := 0
	for i := range fds {
		s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(s) })
		if err := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			t.Fatal(err)
		}
		if err := unix.Bind(s, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: port}); err != nil {
			t.Fatal(err)
		}
		sa, err := unix.Getsockname(s)
		if err != nil {
			t.Fatal(err)
		}
		port = sa.(*unix.SockaddrInet4).Port
		var st unix.Stat_t
		if err := unix.Fstat(s, &st); err != nil {
			t.Fatal(err)
		}
		fds[i], inos[i] = s, st.Ino
	}
	return fds, inos
}

func TestReuseportSteering(t *testing.T) {
	fds, inos := reuseportPair(t)
	got, err := ReuseportSteering(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for _, ino := range inos {
		if s, ok := got[ino]; ok {
			t.Fatalf("socket %d: steering program %v reported, none attached", ino, s)
		}
	}

	// A classic program on one socket steers the whole group.
	prog := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}
	if err := unix.SetsockoptSockFprog(fds[1], unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF,
		&unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}); err != nil {
		t.Fatal(err)
	}
	got, err = ReuseportSteering(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for _, ino := range inos {
		s, ok := got[ino]
		if !ok || s.ProgID != 0 {
			t.Fatalf("socket %d: got %v (listed %v), want a classic program", ino, s, ok)
		}
	}

	// An eBPF program replaces it; its id is reported.
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SocketFilter, License: "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatal("no program id")
	}
	if err := unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_EBPF, p.FD()); err != nil {
		t.Fatal(err)
	}
	got, err = ReuseportSteering(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for _, ino := range inos {
		if s := got[ino]; s.ProgID != uint32(id) || s.ProgType != uint32(ebpf.SocketFilter) {
			t.Fatalf("socket %d: got %v, want eBPF program %d", ino, s, id)
		}
	}

	// Walking every process (kernels before 6.1) finds them too.
	b, err := walk(steerProg.p, nil)
	if err != nil {
		t.Fatal(err)
	}
	all, err := parseSteering(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, ino := range inos {
		if s := all[ino]; s.ProgID != uint32(id) {
			t.Fatalf("socket %d in the walk of every process: got %v, want eBPF program %d", ino, s, id)
		}
	}

	// Detached: nothing again.
	if err := unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_DETACH_REUSEPORT_BPF, 0); err != nil {
		t.Fatal(err)
	}
	if got, err = ReuseportSteering(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	for _, ino := range inos {
		if s, ok := got[ino]; ok {
			t.Fatalf("socket %d: steering program %v reported after detaching", ino, s)
		}
	}
}

func FuzzParseSteering(f *testing.F) {
	rec := make([]byte, recSize)
	binary.NativeEndian.PutUint64(rec, 42)
	f.Add(rec)
	f.Add(append(rec, rec...))
	f.Add(rec[:7])
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseSteering(b)
		if err == nil && len(m) > len(b)/recSize {
			t.Fatalf("%d records from %d bytes", len(m), len(b))
		}
	})
}

// BenchmarkReuseportSteering: the iterator over a process with 10,000
// sockets, per fd, next to listing /proc/self/fd (which names each fd
// and nothing more) in the same run.
func BenchmarkReuseportSteering(b *testing.B) {
	const n = 10000
	for range n {
		s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		defer unix.Close(s)
	}
	if _, err := ReuseportSteering(os.Getpid()); err != nil {
		b.Fatal(err) // loads the program: not timed
	}
	var floor time.Duration
	b.ResetTimer()
	for range b.N {
		if _, err := ReuseportSteering(os.Getpid()); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		t0 := time.Now()
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil || len(ents) < n {
			b.Fatalf("/proc/self/fd: %d entries, %v", len(ents), err)
		}
		floor += time.Since(t0)
		b.StartTimer()
	}
	b.StopTimer()
	per := float64(b.Elapsed().Nanoseconds()) / float64(b.N) / n
	fl := float64(floor.Nanoseconds()) / float64(b.N) / n
	b.ReportMetric(per, "ns/fd")
	b.ReportMetric(fl, "floor-ns/fd")
	b.ReportMetric(per/fl, "x-floor")
}
