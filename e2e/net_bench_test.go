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

	"golang.org/x/sys/unix"
)

// BenchmarkNetConnections dumps and restores a process holding 1, 1,000
// and 10,000 established loopback connections (--tcp-established), its
// peers never dumped, in a network namespace of its own. It reports the
// time per connection each way — the whole dump (restore) less that of
// the same process with one connection, over the connections — next to
// the floor measured in the same run: making the same connections
// (connect + accept) from Go. Goal: ≤ 50 µs per connection each way.
//
//	go test ./e2e -run '^$' -bench NetConnections -benchtime 1x
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

	// one dump and restore of a process with conns connections.
	one := func(conns int) (dump, restore, locked time.Duration) {
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
		n.do(func() {
			out, err = exec.Command(godwitBin, "dump", "-t", strconv.Itoa(pid), "-D", dir, "--tcp-established", "-v3", "-o", "dump.log").CombinedOutput()
		})
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
		n.do(func() {
			out, err = exec.Command(godwitBin, "restore", "-d", "-D", dir, "--tcp-established", "-v3", "-o", "restore.log").CombinedOutput()
		})
		restore = time.Since(t0)
		if err != nil {
			b.Fatalf("restore of %d connections: %v: %s\n%s", conns, err, out, readFile(filepath.Join(dir, "restore.log")))
		}
		locked = t0.Add(logStamp(b, filepath.Join(dir, "restore.log"), "network unlocked")).Sub(lockedAt)
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
		return dump, restore, locked
	}

	// floor: making conns connections, connect and accept, in Go (in
	// batches, closed between them outside the clock: both ends are in
	// this process, under its open-file limit).
	floor := func(conns int) time.Duration {
		var total time.Duration
		for left := conns; left > 0; {
			batch := min(left, 4000)
			left -= batch
			var cs []net.Conn
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
			total += time.Since(t0)
			for _, c := range cs {
				c.Close()
			}
		}
		return total
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
			var d, r, l, f, ff time.Duration
			for b.Loop() {
				d, r, l = one(conns)
				f = floor(conns)
				ff = fileFloor(conns)
			}
			if conns == 1 {
				base["dump"], base["restore"] = d, r
				b.Logf("1 connection: dump %v, restore %v, network locked %v; floor (connect+accept) %v", d, r, l, f)
				return
			}
			per := func(t, b0 time.Duration) float64 { return float64(t-b0) / float64(conns) / 1e3 }
			fl := float64(f) / float64(conns) / 1e3
			b.ReportMetric(per(d, base["dump"]), "dump-µs/conn")
			b.ReportMetric(per(r, base["restore"]), "restore-µs/conn")
			b.ReportMetric(fl, "floor-µs/conn")
			b.ReportMetric(float64(l)/1e6, "locked-ms")
			b.Logf("%d connections: dump %v (%.1f µs/conn, %.1f× the floor), restore %v (%.1f µs/conn, %.1f× the floor), network locked %v (lock to unlock, the gap between dump and restore included); floor connect+accept %.1f µs/conn; a file made in %s %.1f µs",
				conns, d, per(d, base["dump"]), per(d, base["dump"])/fl, r, per(r, base["restore"]), per(r, base["restore"])/fl, l, fl, imgRoot, float64(ff)/float64(conns)/1e3)
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
