package drivers

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"godwit/internal/bpfiter"
	"godwit/internal/logging"
	"godwit/internal/model"
	"godwit/internal/opts"
)

// dropX drops a UDP datagram whose first byte is 'x'.
var dropX = []unix.SockFilter{
	{Code: unix.BPF_LD | unix.BPF_B | unix.BPF_ABS, K: 8},
	{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 1, K: 'x'},
	{Code: unix.BPF_RET | unix.BPF_K, K: 0},
	{Code: unix.BPF_RET | unix.BPF_K, K: 0xffff},
}

func udpSocket(t *testing.T) int {
	t.Helper()
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(s) })
	return s
}

// A classic filter reads back as attached and attaches again as read; an
// eBPF filter is refused by name; no filter reads as nil.
func TestSockFilterReadAttach(t *testing.T) {
	if f, err := readSockFilter(udpSocket(t)); err != nil || f != nil {
		t.Fatalf("no filter: read %v, %v", f, err)
	}
	s := udpSocket(t)
	if err := attachSockFilter(s, dropX); err != nil {
		t.Fatal(err)
	}
	f, err := readSockFilter(s)
	if err != nil || !reflect.DeepEqual(f, dropX) {
		t.Fatalf("read %v, %v; attached %v", f, err, dropX)
	}
	s2 := udpSocket(t)
	if err := attachSockFilter(s2, f); err != nil {
		t.Fatal(err)
	}
	if f2, err := readSockFilter(s2); err != nil || !reflect.DeepEqual(f2, dropX) {
		t.Fatalf("attached again: read %v, %v", f2, err)
	}
	if err := attachSockFilter(udpSocket(t), []unix.SockFilter{{Code: 0xffff}}); err == nil {
		t.Fatal("an invalid filter attached without error")
	}

	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SocketFilter, License: "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0xffff), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	s3 := udpSocket(t)
	if err := unix.SetsockoptInt(s3, unix.SOL_SOCKET, unix.SO_ATTACH_BPF, p.FD()); err != nil {
		t.Fatal(err)
	}
	if _, err := readSockFilter(s3); err == nil || !strings.Contains(err.Error(), "eBPF socket filter (SO_ATTACH_BPF)") {
		t.Fatalf("eBPF filter: %v, want a refusal naming it", err)
	}
	// The unix and netlink kinds carry none yet: refused, naming it.
	var o model.SocketOpts
	if err := socketTimeoutsFilter(s, &o); err == nil || !strings.Contains(err.Error(), "socket filter of 4 instructions") {
		t.Fatalf("socketTimeoutsFilter: %v", err)
	}
}

// The kernel's answer decides: a reuseport group with a steering program
// is refused by name, one without is not, and a socket without
// SO_REUSEPORT is not looked at.
func TestRefuseSteering(t *testing.T) {
	var fds [2]int
	var st [2]*model.InetSocketState
	port := 0
	for i := range fds {
		fds[i] = udpSocket(t)
		if err := unix.SetsockoptInt(fds[i], unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			t.Fatal(err)
		}
		if err := unix.Bind(fds[i], &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: port}); err != nil {
			t.Fatal(err)
		}
		sa, _ := unix.Getsockname(fds[i])
		port = sa.(*unix.SockaddrInet4).Port
		var fs unix.Stat_t
		if err := unix.Fstat(fds[i], &fs); err != nil {
			t.Fatal(err)
		}
		st[i] = &model.InetSocketState{Ino: uint32(fs.Ino), Inet: model.InetOpts{ReusePort: true}}
	}
	var ss steerState
	if err := ss.refuseSteering(os.Getpid(), st[0], "UDP socket a"); err != nil {
		t.Fatalf("a group without a program: %v", err)
	}
	steer := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 1}}
	if err := unix.SetsockoptSockFprog(fds[0], unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF,
		&unix.SockFprog{Len: 1, Filter: &steer[0]}); err != nil {
		t.Fatal(err)
	}
	ss = steerState{}
	for i, s := range st {
		if err := ss.refuseSteering(os.Getpid(), s, fmt.Sprintf("UDP socket %d", i)); err == nil ||
			!strings.Contains(err.Error(), fmt.Sprintf("UDP socket %d: its SO_REUSEPORT group has a reuseport steering program, a classic BPF program", i)) {
			t.Fatalf("socket %d of a steered group: %v", i, err)
		}
	}
	off := *st[1]
	off.Inet.ReusePort = false
	if err := ss.refuseSteering(os.Getpid(), &off, "UDP socket off"); err != nil {
		t.Fatalf("SO_REUSEPORT off: %v", err)
	}
}

// Where the iterator cannot run, the dump goes on and the log names the
// socket that could not be checked; another failure of the check fails
// the dump.
func TestRefuseSteeringUnchecked(t *testing.T) {
	defer func(f func(int) (map[uint64]bpfiter.Steering, error)) { reuseportSteering = f }(reuseportSteering)
	defer func(l *logging.Logger) { logging.SetDefault(l) }(logging.Default())
	var log bytes.Buffer
	logging.SetDefault(logging.New(&log, opts.LogWarn))
	calls := 0
	reuseportSteering = func(int) (map[uint64]bpfiter.Steering, error) {
		calls++
		return nil, fmt.Errorf("%w: no BTF", bpfiter.ErrUnavailable)
	}
	var ss steerState
	st := &model.InetSocketState{Ino: 7, Inet: model.InetOpts{ReusePort: true}}
	for range 2 {
		if err := ss.refuseSteering(1, st, "TCP socket 127.0.0.1:80"); err != nil {
			t.Fatalf("unchecked: %v", err)
		}
	}
	if calls != 1 {
		t.Fatalf("the iterator ran %d times for one task", calls)
	}
	if !strings.Contains(log.String(), "TCP socket 127.0.0.1:80: SO_REUSEPORT: cannot check its group for a reuseport steering program") {
		t.Fatalf("log: %q", log.String())
	}
	reuseportSteering = func(int) (map[uint64]bpfiter.Steering, error) { return nil, errors.New("iterator read: EIO") }
	ss = steerState{}
	if err := ss.refuseSteering(1, st, "TCP socket 127.0.0.1:80"); err == nil || !strings.Contains(err.Error(), "EIO") {
		t.Fatalf("failed check: %v", err)
	}
}
