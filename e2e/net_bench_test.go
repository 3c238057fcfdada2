package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// BenchmarkNetConnections dumps and restores a process holding 1, 1,000
// and 10,000 established loopback connections (--tcp-established), its
// peers never dumped, in a network namespace of its own. It reports the
// time per connection each way — the whole dump (restore) less that of
// the same process with one connection, over the connections — and the
// CPU time godwit took for it, next to floors measured in the same run:
// the repair-mode calls a dump and a restore cannot do without, per
// connection (see floor). Goal: ≤ 50 µs per connection each way.
//
//	go test ./e2e -run '^$' -bench NetConnections -benchtime 1x
//
// NETBENCH_KEEP=PREFIX keeps godwit's logs, at -v4 (PREFIX.dump.N.log,
// PREFIX.restore.N.log): the time of each step.
func BenchmarkNetConnections(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	// godwit restore -d leaves the restored task to us: reap it.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		b.Fatal(err)
	}
	bin := filepath.Join(b.TempDir(), "netmany")
	if out, err := exec.Command("gcc", "-O2", "-Wall", "-o", bin, "workloads/netmany.c").CombinedOutput(); err != nil {
		b.Fatalf("gcc netmany.c: %v\n%s", err, out)
	}
	// Images on tmpfs where there is one: CRIU's format is a file per
	// connection (tcp-stream-INO.img), and on this machine's disk making
	// a file costs several times the goal by itself (the file floor
	// below shows it).
	imgRoot := b.TempDir()
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		if imgRoot, err = os.MkdirTemp("/dev/shm", "godwit-bench-"); err != nil {
			b.Fatal(err)
		}
		defer os.RemoveAll(imgRoot)
	}
	n := newNetns(b)
	var ln net.Listener
	var err error
	// No keepalive probes from the peers: nothing (no network lock here)
	// would keep them from being answered with a reset while the
	// connections are dumped and not yet restored.
	n.do(func() {
		ln, err = (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp4", "127.0.0.1:0")
	})
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)

	// godwit's logs at -v4, copied to $NETBENCH_KEEP.dump.N.log and
	// .restore.N.log (where the time goes, step by step).
	keep, verb := os.Getenv("NETBENCH_KEEP"), "-v3"
	if keep != "" {
		verb = "-v4"
	}
	// cpu is the user and system time godwit took.
	cpu := func(c *exec.Cmd) time.Duration {
		if c.ProcessState == nil {
			return 0
		}
		return c.ProcessState.UserTime() + c.ProcessState.SystemTime()
	}
	// one dump and restore of a process with conns connections.
	one := func(conns int) (dump, restore, locked, dumpCPU, restoreCPU time.Duration) {
		accepted := make(chan []net.Conn)
		go func() {
			var cs []net.Conn
			for len(cs) < conns {
				c, err := ln.Accept()
				if err != nil {
					break
				}
				cs = append(cs, c)
			}
			accepted <- cs
		}()
		log := filepath.Join(b.TempDir(), "log")
		cmd := exec.Command(bin, "127.0.0.1", port, strconv.Itoa(conns), log)
		cmd.SysProcAttr = &unix.SysProcAttr{Setsid: true}
		n.do(func() { err = cmd.Start() })
		if err != nil {
			b.Fatal(err)
		}
		pid := cmd.Process.Pid
		defer killAndForget(pid)
		peers := <-accepted
		defer func() {
			for _, c := range peers {
				c.Close()
			}
		}()
		for deadline := time.Now().Add(time.Minute); readAll(log) == "" || readAll(log)[:5] != "ready"; {
			if time.Now().After(deadline) {
				b.Fatalf("netmany %d: %s", conns, readAll(log))
			}
			time.Sleep(5 * time.Millisecond)
		}
		dir, err := os.MkdirTemp(imgRoot, "img-")
		if err != nil {
			b.Fatal(err)
		}
		defer os.RemoveAll(dir)
		var out []byte
		t0 := time.Now()
		dc := exec.Command(godwitBin, "dump", "-t", strconv.Itoa(pid), "-D", dir, "--tcp-established", verb, "-o", "dump.log")
		n.do(func() { out, err = dc.CombinedOutput() })
		lockedAt := t0.Add(logStamp(b, filepath.Join(dir, "dump.log"), "listeners locked"))
		dump = time.Since(t0)
		if err != nil {
			b.Fatalf("dump of %d connections: %v: %s\n%s", conns, err, out, readFile(filepath.Join(dir, "dump.log")))
		}
		cmd.Wait()
		for pidExists(pid) {
			time.Sleep(time.Millisecond)
		}
		t0 = time.Now()
		rc := exec.Command(godwitBin, "restore", "-d", "-D", dir, "--tcp-established", verb, "-o", "restore.log")
		n.do(func() { out, err = rc.CombinedOutput() })
		restore = time.Since(t0)
		if err != nil {
			b.Fatalf("restore of %d connections: %v: %s\n%s", conns, err, out, readFile(filepath.Join(dir, "restore.log")))
		}
		locked = t0.Add(logStamp(b, filepath.Join(dir, "restore.log"), "network unlocked")).Sub(lockedAt)
		if keep != "" {
			exec.Command("cp", filepath.Join(dir, "dump.log"), fmt.Sprintf("%s.dump.%d.log", keep, conns)).Run()
			exec.Command("cp", filepath.Join(dir, "restore.log"), fmt.Sprintf("%s.restore.%d.log", keep, conns)).Run()
		}
		// Every restored connection carries a byte to its peer.
		unix.Kill(pid, unix.SIGUSR1)
		var ws unix.WaitStatus
		if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil || ws.ExitStatus() != 0 {
			b.Fatalf("restored netmany %d: %v %v: %s", conns, err, ws, readAll(log))
		}
		buf := make([]byte, 1)
		for i, c := range peers {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(buf); err != nil || buf[0] != 'x' {
				b.Fatalf("connection %d of %d after the restore: %v", i, conns, err)
			}
		}
		return dump, restore, locked, cpu(dc), cpu(rc)
	}

	// floors, measured on conns connections made in Go (in batches,
	// closed between them outside the clock: both ends are in this
	// process, under its open-file limit):
	//   - connect: making them (connect + accept), the old, weak floor;
	//   - dump: reading each in repair mode as a dump must at least
	//     (TCP_REPAIR on, TCP_INFO, both queues' sequence numbers,
	//     TCP_REPAIR_WINDOW; queues empty, as here);
	//   - restore: making each again as a restore must at least (socket,
	//     TCP_REPAIR on, connect in repair mode, close), to an address
	//     with no one behind it (repair mode sends nothing).
	floor := func(conns int) (connect, dump, restore time.Duration) {
		repairDump := func(fd int) {
			must := func(err error) {
				if err != nil {
					b.Fatal(err)
				}
			}
			must(unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_ON))
			_, err := unix.GetsockoptTCPInfo(fd, unix.SOL_TCP, unix.TCP_INFO)
			must(err)
			for _, q := range []int{1, 2} { // TCP_RECV_QUEUE, TCP_SEND_QUEUE
				must(unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR_QUEUE, q))
				_, err = unix.GetsockoptInt(fd, unix.SOL_TCP, unix.TCP_QUEUE_SEQ)
				must(err)
			}
			var w [20]byte // struct tcp_repair_window
			l := uint32(len(w))
			if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_TCP, unix.TCP_REPAIR_WINDOW, uintptr(unsafe.Pointer(&w[0])), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
				b.Fatal(e)
			}
		}
		for left := conns; left > 0; {
			batch := min(left, 4000)
			left -= batch
			var cs []net.Conn
			var fds []int
			t0 := time.Now()
			n.do(func() {
				for range batch {
					c, err := net.Dial("tcp4", ln.Addr().String())
					if err != nil {
						b.Fatal(err)
					}
					a, err := ln.Accept()
					if err != nil {
						b.Fatal(err)
					}
					cs = append(cs, c, a)
				}
			})
			connect += time.Since(t0)
			for i := 0; i < len(cs); i += 2 {
				rc, err := cs[i].(*net.TCPConn).SyscallConn()
				if err != nil {
					b.Fatal(err)
				}
				rc.Control(func(fd uintptr) { fds = append(fds, int(fd)) })
			}
			t0 = time.Now()
			for _, fd := range fds {
				repairDump(fd)
			}
			dump += time.Since(t0)
			for _, c := range cs {
				c.Close()
			}
		}
		to := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 2}, Port: 9}
		t0 := time.Now()
		n.do(func() {
			for range conns {
				s, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					b.Fatal(err)
				}
				if err := unix.SetsockoptInt(s, unix.SOL_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_ON); err != nil {
					b.Fatal(err)
				}
				if err := unix.Connect(s, to); err != nil {
					b.Fatal(err)
				}
				unix.Close(s)
			}
		})
		restore = time.Since(t0)
		return connect, dump, restore
	}

	// fileFloor: making conns small files in the images' file system.
	fileFloor := func(conns int) time.Duration {
		dir, err := os.MkdirTemp(imgRoot, "floor-")
		if err != nil {
			b.Fatal(err)
		}
		defer os.RemoveAll(dir)
		data := make([]byte, 100)
		t0 := time.Now()
		for i := range conns {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("tcp-stream-%x.img", i)), data, 0o600); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(t0)
	}

	base := map[string]time.Duration{}
	for _, conns := range []int{1, 1000, 10000} {
		b.Run(fmt.Sprintf("conns=%d", conns), func(b *testing.B) {
			var d, r, l, dc, rc, f, fd, fr, ff time.Duration
			for b.Loop() {
				d, r, l, dc, rc = one(conns)
				f, fd, fr = floor(conns)
				ff = fileFloor(conns)
			}
			if conns == 1 {
				base["dump"], base["restore"], base["dump-cpu"], base["restore-cpu"] = d, r, dc, rc
				b.Logf("1 connection: dump %v (cpu %v), restore %v (cpu %v), network locked %v; floor (connect+accept) %v", d, dc, r, rc, l, f)
				return
			}
			per := func(t, b0 time.Duration) float64 { return float64(t-b0) / float64(conns) / 1e3 }
			us := func(t time.Duration) float64 { return float64(t) / float64(conns) / 1e3 }
			pd, pr := per(d, base["dump"]), per(r, base["restore"])
			b.ReportMetric(pd, "dump-µs/conn")
			b.ReportMetric(pr, "restore-µs/conn")
			b.ReportMetric(per(dc, base["dump-cpu"]), "dump-cpu-µs/conn")
			b.ReportMetric(per(rc, base["restore-cpu"]), "restore-cpu-µs/conn")
			b.ReportMetric(us(fd), "dump-floor-µs/conn")
			b.ReportMetric(us(fr), "restore-floor-µs/conn")
			b.ReportMetric(us(f), "connect-floor-µs/conn")
			b.ReportMetric(float64(l)/1e6, "locked-ms")
			b.Logf("%d connections: dump %v: %.1f µs/conn (cpu %.1f), %.1f× its floor of %.1f µs (repair-mode reads); restore %v: %.1f µs/conn (cpu %.1f), %.1f× its floor of %.1f µs (socket, TCP_REPAIR, connect, close); network locked %v (lock to unlock, the gap between dump and restore included); connect+accept %.1f µs/conn; a file made in %s %.1f µs",
				conns, d, pd, per(dc, base["dump-cpu"]), pd/us(fd), us(fd), r, pr, per(rc, base["restore-cpu"]), pr/us(fr), us(fr), l, us(f), imgRoot, us(ff))
		})
	}
}

// logStamp is the time, from the log's start, of the first line of a
// godwit log ("(SS.ffffff) ...") that contains what.
func logStamp(b *testing.B, path, what string) time.Duration {
	b.Helper()
	for _, line := range strings.Split(readFile(path), "\n") {
		if !strings.Contains(line, what) {
			continue
		}
		var sec float64
		if _, err := fmt.Sscanf(line, "(%f)", &sec); err == nil {
			return time.Duration(sec * float64(time.Second))
		}
	}
	b.Fatalf("%s: no line with %q", path, what)
	return 0
}
