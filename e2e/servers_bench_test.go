package e2e

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkServerRedis1GiB: a redis-server holding 1 GiB of data, with 100
// clients writing and reading through a dump and restore
// (--tcp-established), must see no client error. It reports the dump and
// restore times next to the floor of moving the server's resident memory
// through the same file system once each way (a write, then a read, in
// this run), the time the network stayed locked (from the logs: the lock
// after the freeze to the unlock before the server ran), and the longest
// single client exchange (what a client saw of it).
func BenchmarkServerRedis1GiB(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Fatal("needs root")
	}
	for i := 0; i < b.N; i++ {
		benchRedis(b, 1<<30, 100)
	}
}

func benchRedis(b *testing.B, size int64, k int) {
	n := makeNetns(b)
	addr := "127.0.0.1:6391"
	s := startServer(b, n, addr, "redis-server", "--port", "6391", "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no", "--logfile", "",
		"--enable-debug-command", "yes")
	c, err := n.dial(addr)
	if err != nil {
		b.Fatal(err)
	}
	const valSize = 1024
	keys := size / valSize
	cc := &clientConn{Conn: c, r: bufio.NewReader(c)}
	c.SetDeadline(time.Now().Add(10 * time.Minute))
	fmt.Fprintf(c, "DEBUG POPULATE %d bench %d\r\n", keys, valSize)
	if r, err := resp(cc); err != nil || r != "+OK" {
		b.Fatalf("DEBUG POPULATE: %q %v", r, err)
	}
	c.Close()
	rss := vmRSS(b, s.pid)
	cs := startClients(b, n, addr, k, redisExchange)
	cs.waitProgress(b, make([]int, k), 5, "before the dump")
	before := cs.snapshot()
	cp := checkpointServer(b, n, s, nil)
	dump, rest, dir := cp.dump, cp.rest, cp.dir
	cs.waitProgress(b, before, 5, "after the restore")
	cs.finish(b)
	lockAt := logOffset(b, filepath.Join(dir, "dump.log"), `connections and their listeners locked`)
	unlockAt := logOffset(b, filepath.Join(dir, "restore.log"), `network unlocked`)
	// Each log counts from its process's start: the two start-ups
	// (a few ms each) roughly cancel.
	locked := cp.restStart.Add(unlockAt).Sub(cp.dumpStart.Add(lockAt))
	wfloor, rfloor := fsFloor(b, filepath.Dir(dir), rss)
	b.ReportMetric(float64(rss)/(1<<20), "RSS-MiB")
	b.ReportMetric(dump.Seconds(), "dump-s")
	b.ReportMetric(rest.Seconds(), "restore-s")
	b.ReportMetric(locked.Seconds(), "locked-s")
	b.ReportMetric(cs.maxWait.Seconds(), "longest-client-wait-s")
	b.ReportMetric(dump.Seconds()/wfloor.Seconds(), "dump/write-floor")
	b.ReportMetric(rest.Seconds()/rfloor.Seconds(), "restore/read-floor")
	b.Logf("redis %d MiB RSS, %d clients, 0 errors: dump %v (floor: write %v, ratio %.2f), restore %v (floor: read %v, ratio %.2f), network locked ≈%v, longest client exchange %v",
		rss>>20, k, dump, wfloor, dump.Seconds()/wfloor.Seconds(), rest, rfloor, rest.Seconds()/rfloor.Seconds(), locked, cs.maxWait)
}

func vmRSS(t testing.TB, pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, ln := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(ln, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

var logTime = regexp.MustCompile(`^\((\d+)\.(\d+)\)`)

// logOffset is the time stamp of the first line of log matching what.
func logOffset(t testing.TB, log, what string) time.Duration {
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	for _, ln := range strings.Split(string(b), "\n") {
		if !strings.Contains(ln, what) {
			continue
		}
		if m := logTime.FindStringSubmatch(ln); m != nil {
			d, _ := time.ParseDuration(m[1] + "." + m[2] + "s")
			return d
		}
	}
	t.Fatalf("no %q in %s", what, log)
	return 0
}

// fsFloor writes size bytes into a file in dir and reads them back: the
// cost of moving the memory through the images' file system once.
func fsFloor(t testing.TB, dir string, size int64) (write, read time.Duration) {
	p := filepath.Join(dir, "floor")
	defer os.Remove(p)
	buf := make([]byte, 4<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	for n := int64(0); n < size; n += int64(len(buf)) {
		if _, err := f.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	write = time.Since(t0)
	f.Close()
	f, err = os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	t0 = time.Now()
	for {
		if _, err := f.Read(buf); err != nil {
			break
		}
	}
	read = time.Since(t0)
	return write, read
}
