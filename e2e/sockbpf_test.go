package e2e

import (
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A classic BPF socket filter comes back with its socket: datagrams it
// dropped before the dump are dropped after the restore, others arrive.
// An eBPF filter and a reuseport group's steering program (classic or
// eBPF) are refused by name, and the refused dump leaves the program
// with its sockets as they were.
func TestNetSocketBPF(t *testing.T) {
	needRoot(t)
	t.Run("cbpf filter carried", func(t *testing.T) {
		w := startWorkload(t, cWorkload(t, "sockbpf"), "filter")
		m := regexp.MustCompile(`ports (\d+) (\d+)`).FindStringSubmatch(readFile(w.log))
		if m == nil {
			t.Fatalf("no ports\n%s", w.tail())
		}
		p4, _ := strconv.Atoi(m[1])
		p6, _ := strconv.Atoi(m[2])
		filtered(t, unix.AF_INET, p4, "before the dump")
		filtered(t, unix.AF_INET6, p6, "before the dump")
		dir := w.dump(t)
		w.reapKilled(t)
		r := restore(t, w, dir)
		filtered(t, unix.AF_INET, p4, "after the restore")
		filtered(t, unix.AF_INET6, p6, "after the restore")
		if code := r.finish(t, w); code != 0 {
			t.Fatalf("restored program: exit %d\n%s", code, w.tail())
		}
		if !strings.Contains(readFile(w.log), "check ok") {
			t.Fatalf("restored filters differ\n%s", w.tail())
		}
	})
	t.Run("reuseport group without a program", func(t *testing.T) {
		w := startWorkload(t, cWorkload(t, "sockbpf"), "reuseport")
		m := regexp.MustCompile(`port (\d+)`).FindStringSubmatch(readFile(w.log))
		if m == nil {
			t.Fatalf("no port\n%s", w.tail())
		}
		port, _ := strconv.Atoi(m[1])
		dir := w.dump(t)
		w.reapKilled(t)
		r := restore(t, w, dir)
		s, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		err = unix.Connect(s, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}})
		unix.Close(s)
		if err != nil {
			t.Fatalf("connect to the restored group: %v", err)
		}
		if code := r.finish(t, w); code != 0 || !strings.Contains(readFile(w.log), "check ok") {
			t.Fatalf("restored program: exit %d\n%s", code, w.tail())
		}
	})
	for _, c := range []struct{ mode, want string }{
		{"ebpf-filter", "UDP socket 127.0.0.1:"},
		{"steer-cbpf", "reuseport steering program, a classic BPF program (SO_ATTACH_REUSEPORT_CBPF)"},
		{"steer-ebpf", "reuseport steering program, eBPF program id"},
	} {
		t.Run(c.mode+" refused", func(t *testing.T) {
			w := startWorkload(t, cWorkload(t, "sockbpf"), c.mode)
			code, out := godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir())
			oneLineError(t, code, out, c.want)
			if c.mode == "ebpf-filter" && !strings.Contains(out, "eBPF socket filter (SO_ATTACH_BPF)") {
				t.Fatalf("refusal does not name the eBPF filter: %s", out)
			}
			w.waitTicks(3)
			if err := syscall.Kill(w.pid, syscall.SIGUSR1); err != nil {
				t.Fatal(err)
			}
			for deadline := time.Now().Add(10 * time.Second); !strings.Contains(readFile(w.log), "check "); time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("no check\n%s", w.tail())
				}
			}
			if !strings.Contains(readFile(w.log), "check ok") {
				t.Fatalf("after the refused dump the sockets differ\n%s", w.tail())
			}
		})
	}
}

// filtered sends a datagram the workload's filter drops ("x…"), then one
// it keeps, to the echo socket on port: the first echo must be the kept
// one (the socket echoes in order, so a dropped datagram that got through
// would come back first).
func filtered(t *testing.T, family, port int, when string) {
	t.Helper()
	s, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(s)
	if err := unix.SetsockoptTimeval(s, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 10}); err != nil {
		t.Fatal(err)
	}
	var to unix.Sockaddr = &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}
	if family == unix.AF_INET6 {
		to = &unix.SockaddrInet6{Port: port, Addr: [16]byte{15: 1}}
	}
	for _, msg := range []string{"xdropped " + when, "kept " + when} {
		if err := unix.Sendto(s, []byte(msg), 0, to); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 256)
	n, _, err := unix.Recvfrom(s, buf, 0)
	if err != nil {
		t.Fatalf("family %d, %s: no echo: %v", family, when, err)
	}
	if got := string(buf[:n]); got != "kept "+when {
		t.Fatalf("family %d, %s: first echo %q, want %q (the filter let the other through)", family, when, got, "kept "+when)
	}
}
