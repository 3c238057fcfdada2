package e2e

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Real servers from Debian, each in a network namespace of the test's
// own, with live clients that keep talking to them through
// `godwit dump --tcp-established` and `godwit restore --tcp-established`
// (both run in the namespace, where the connections are). Every client
// checks every answer; the test wants zero errors and answers after the
// restore on every connection. While the server is gone the network lock
// holds the clients' packets: they see a delay, never a reset.

// server is a server process the test started (by PID, killed at
// cleanup).
type server struct {
	pid  int
	cmd  *exec.Cmd
	done chan error
	out  *bytes.Buffer
}

// startServer starts argv in n and waits until addr accepts connections.
func startServer(t testing.TB, n *testNetns, addr string, argv ...string) *server {
	t.Helper()
	return startServerAs(t, n, addr, "", argv...)
}

// startTreeServer is startServer for a server with child processes: it
// runs under workloads/reaper.c, a subreaper that reaps the orphans its
// tree leaves when the dump kills it (PID 1 of a pid namespace may not: a
// test runner), so that their PIDs are free for the restore. s.pid is the
// server's, s.done waits for the reaper.
func startTreeServer(t *testing.T, n *testNetns, addr string, argv ...string) *server {
	t.Helper()
	return startServerAs(t, n, addr, cWorkload(t, "reaper"), argv...)
}

func startServerAs(t testing.TB, n *testNetns, addr, reaper string, argv ...string) *server {
	t.Helper()
	s := &server{done: make(chan error, 1), out: &bytes.Buffer{}}
	if reaper != "" {
		argv = append([]string{reaper}, argv...)
	}
	s.cmd = n.command(argv...)
	// Output to a file: a pipe would be an fd godwit must restore.
	f, err := os.Create(filepath.Join(t.TempDir(), "server.out"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s.cmd.Stdout, s.cmd.Stderr = f, f
	s.cmd.Stdin = nil
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.pid = s.cmd.Process.Pid
	go func() { s.done <- s.cmd.Wait() }()
	name := f.Name()
	if reaper != "" {
		deadline := time.Now().Add(10 * time.Second)
		for {
			if m := regexp.MustCompile(`pid (\d+)`).FindStringSubmatch(readFile(name)); m != nil {
				s.pid, _ = strconv.Atoi(m[1])
				break
			}
			if time.Now().After(deadline) {
				killAndForget(s.pid)
				t.Fatalf("reaper: no pid\n%s", readFile(name))
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	reaperPid := s.cmd.Process.Pid
	t.Cleanup(func() {
		killTree(s.pid)
		killAndForget(reaperPid)
		select {
		case <-s.done:
		case <-time.After(5 * time.Second):
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := n.dial(addr)
		if err == nil {
			c.Close()
			return s
		}
		select {
		case err := <-s.done:
			t.Fatalf("%s exited: %v\n%s", argv[0], err, readFile(name))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not accept on %s: %v\n%s", argv[0], addr, err, readFile(name))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// killTree kills pid and its descendants (nginx's workers outlive their
// master, which forks new ones for those killed first): the whole process
// group at once when pid leads one, then whatever is left, by PID.
func killTree(pid int) {
	if pid <= 1 {
		return
	}
	if pg, err := syscall.Getpgid(pid); err == nil && pg == pid {
		syscall.Kill(-pid, syscall.SIGKILL)
	}
	for _, c := range descendants(pid) {
		killAndForget(c)
	}
	killAndForget(pid)
}

// descendants lists pid's children, grandchildren, … (deepest last).
func descendants(pid int) []int {
	var out []int
	tasks, _ := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	for _, task := range tasks {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + task.Name() + "/children")
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				out = append(out, c)
				out = append(out, descendants(c)...)
			}
		}
	}
	return out
}

// dial connects to addr from inside n: the socket is made on a thread
// that joined n (the thread is discarded afterwards).
func (n *testNetns) dial(addr string) (net.Conn, error) { return n.dialTimeout(addr, 5*time.Second) }

func (n *testNetns) dialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	var join func()
	join = func() {
		runtime.LockOSThread() // never unlocked: the thread stays in n and dies
		if unix.Gettid() == unix.Getpid() {
			// Not the main thread, which Go keeps (and /proc/self
			// shows) when its goroutine ends: hold it while another
			// thread joins.
			done := make(chan struct{})
			go func() { defer close(done); join() }()
			<-done
			runtime.UnlockOSThread()
			return
		}
		f, err := os.Open("/run/netns/" + n.name)
		if err != nil {
			ch <- res{nil, err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- res{nil, err}
			return
		}
		c, err := net.DialTimeout("tcp", addr, timeout)
		ch <- res{c, err}
	}
	go join()
	r := <-ch
	return r.c, r.err
}

// exchange is one request and its checked answer on a client's
// connection; iter counts the client's exchanges.
type exchange func(c *clientConn, id, iter int) error

type clientConn struct {
	net.Conn
	r *bufio.Reader
}

// clients are live clients, each on its own connection, each looping
// over its exchange until stopped.
type clients struct {
	mu      sync.Mutex
	stop    chan struct{}
	wg      sync.WaitGroup
	ops     []int // per client
	errs    []error
	maxWait time.Duration // longest single exchange
}

// startClients opens k connections to addr in n and runs ex on each.
func startClients(t testing.TB, n *testNetns, addr string, k int, ex exchange) *clients {
	t.Helper()
	return startClientsDial(t, func() (net.Conn, error) { return n.dial(addr) }, k, ex)
}

// startClientsDial is startClients with connections dial makes.
func startClientsDial(t testing.TB, dial func() (net.Conn, error), k int, ex exchange) *clients {
	t.Helper()
	cs := &clients{stop: make(chan struct{}), ops: make([]int, k)}
	conns := make([]*clientConn, k)
	for i := range conns {
		c, err := dial()
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		conns[i] = &clientConn{Conn: c, r: bufio.NewReader(c)}
	}
	for i, c := range conns {
		cs.wg.Add(1)
		go func() {
			defer cs.wg.Done()
			defer c.Close()
			for iter := 0; ; iter++ {
				select {
				case <-cs.stop:
					return
				default:
				}
				t0 := time.Now()
				// A generous bound: the server is gone for a whole
				// dump and restore on a loaded machine.
				c.SetDeadline(time.Now().Add(120 * time.Second))
				err := ex(c, i, iter)
				d := time.Since(t0)
				cs.mu.Lock()
				if err != nil {
					cs.errs = append(cs.errs, fmt.Errorf("client %d, exchange %d: %w", i, iter, err))
				} else {
					cs.ops[i]++
				}
				cs.maxWait = max(cs.maxWait, d)
				cs.mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	t.Cleanup(cs.halt)
	return cs
}

func (cs *clients) halt() {
	select {
	case <-cs.stop:
	default:
		close(cs.stop)
	}
	cs.wg.Wait()
}

// snapshot is every client's exchange count.
func (cs *clients) snapshot() []int {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return append([]int(nil), cs.ops...)
}

// waitProgress waits until every client made n more exchanges than in
// base, or fails.
func (cs *clients) waitProgress(t testing.TB, base []int, n int, what string) {
	t.Helper()
	deadline := time.Now().Add(120 * time.Second)
	for {
		now := cs.snapshot()
		cs.mu.Lock()
		errs := append([]error(nil), cs.errs...)
		cs.mu.Unlock()
		if len(errs) > 0 {
			t.Fatalf("%s: %d client errors, first: %v", what, len(errs), errs[0])
		}
		done := true
		for i := range now {
			if now[i] < base[i]+n {
				done = false
			}
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: clients stalled: %v (were %v)", what, now, base)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// finish stops the clients and wants zero errors.
func (cs *clients) finish(t testing.TB) {
	t.Helper()
	cs.halt()
	if len(cs.errs) > 0 {
		t.Fatalf("%d client errors, first: %v", len(cs.errs), cs.errs[0])
	}
}

// checkpoint is what checkpointServer did, and when.
type checkpoint struct {
	dumpStart, restStart time.Time
	dump, rest           time.Duration
	dir                  string // the images, with dump.log and restore.log
}

// checkpointServer dumps s (killing it) and restores it, both with
// --tcp-established and inside n. The restore waits for the server, which
// is killed at cleanup.
// between, if not nil, runs after the dump and before the restore.
func checkpointServer(t testing.TB, n *testNetns, s *server, between func(), args ...string) checkpoint {
	t.Helper()
	dir := t.TempDir()
	t0 := time.Now()
	out, err := n.command(append([]string{godwitBin, "dump", "-t", strconv.Itoa(s.pid), "-D", dir, "-v4", "-o", "dump.log", "--tcp-established"}, args...)...).CombinedOutput()
	dump := time.Since(t0)
	if err != nil {
		t.Fatalf("dump: %v: %s\n%s", err, out, readFile(filepath.Join(dir, "dump.log")))
	}
	select {
	case <-s.done:
		s.done <- nil
	case <-time.After(10 * time.Second):
		t.Fatalf("server %d still alive after the dump", s.pid)
	}
	for i := 0; i < 300 && pidExists(s.pid); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if between != nil {
		between()
	}
	t1 := time.Now()
	restoreInNetns(t, n, s.pid, dir, func() bool { return true }, "--tcp-established")
	return checkpoint{dumpStart: t0, restStart: t1, dump: dump, rest: time.Since(t1), dir: dir}
}

// pusher is a client that writes requests without waiting for their
// answers (a writer and a reader on one connection): it keeps sending
// while the server is gone, so that only the network lock stands between
// its segments and a reset.
type pusher struct {
	c            net.Conn
	stop         chan struct{}
	wg           sync.WaitGroup
	mu           sync.Mutex
	sent, answer int
	err          error
}

// startPusher sends req(i) every 2 ms and wants answer for each.
func startPusher(t testing.TB, n *testNetns, addr string, req func(i int) string, answer string) *pusher {
	t.Helper()
	c, err := n.dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	p := &pusher{c: c, stop: make(chan struct{})}
	fail := func(err error) {
		p.mu.Lock()
		if p.err == nil {
			p.err = err
		}
		p.mu.Unlock()
	}
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		for i := 0; ; i++ {
			select {
			case <-p.stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			c.SetWriteDeadline(time.Now().Add(120 * time.Second))
			if _, err := io.WriteString(c, req(i)); err != nil {
				fail(fmt.Errorf("pusher write %d: %w", i, err))
				return
			}
			p.mu.Lock()
			p.sent++
			p.mu.Unlock()
		}
	}()
	go func() {
		defer p.wg.Done()
		r := bufio.NewReader(c)
		buf := make([]byte, len(answer))
		for {
			c.SetReadDeadline(time.Now().Add(120 * time.Second))
			if _, err := io.ReadFull(r, buf); err != nil {
				select {
				case <-p.stop:
				default:
					fail(fmt.Errorf("pusher read: %w", err))
				}
				return
			}
			if string(buf) != answer {
				fail(fmt.Errorf("pusher: answer %q, want %q", buf, answer))
				return
			}
			p.mu.Lock()
			p.answer++
			p.mu.Unlock()
		}
	}()
	t.Cleanup(func() { p.halt() })
	return p
}

func (p *pusher) counts() (sent, answered int, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sent, p.answer, p.err
}

func (p *pusher) halt() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	p.c.SetReadDeadline(time.Now())
	p.wg.Wait()
	p.c.Close()
}

// finish stops sending, waits until every request is answered and wants
// no error.
func (p *pusher) finish(t testing.TB) {
	t.Helper()
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		sent, answered, err := p.counts()
		if err != nil {
			t.Fatal(err)
		}
		if answered >= sent && sent > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pusher: %d requests, %d answers", sent, answered)
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.halt()
}

// runServerTest is the common test: k clients and a pusher (if req is
// set), exchanges before, the checkpoint, exchanges after, zero errors.
// A client that connects while the server is gone (between dump and
// restore) is not refused: it is answered by the restored server.
func runServerTest(t *testing.T, n *testNetns, s *server, addr string, k int, ex exchange, req func(int) string, answer string, dumpArgs ...string) {
	t.Helper()
	cs := startClients(t, n, addr, k, ex)
	var p *pusher
	if req != nil {
		p = startPusher(t, n, addr, req, answer)
	}
	cs.waitProgress(t, make([]int, k), 20, "before the dump")
	before := cs.snapshot()
	late := make(chan error, 1)
	cp := checkpointServer(t, n, s, func() {
		go func() {
			c, err := n.dialTimeout(addr, 120*time.Second)
			if err != nil {
				late <- fmt.Errorf("a client connecting during the checkpoint: %w", err)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(120 * time.Second))
			late <- ex(&clientConn{Conn: c, r: bufio.NewReader(c)}, k, 0)
		}()
		time.Sleep(20 * time.Millisecond) // its SYN goes out while the server is gone
	}, dumpArgs...)
	if err := <-late; err != nil {
		t.Fatal(err)
	}
	cs.waitProgress(t, before, 20, "after the restore")
	cs.finish(t)
	pushed := 0
	if p != nil {
		p.finish(t)
		pushed, _, _ = p.counts()
	}
	t.Logf("%d clients, %v exchanges, %d pushed; dump %v, restore %v; longest exchange %v", k, cs.snapshot(), pushed, cp.dump, cp.rest, cs.maxWait)
}

func redisPush(i int) string {
	k, v := "push:"+strconv.Itoa(i), "p"+strconv.Itoa(i)
	return fmt.Sprintf("*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", len(k), k, len(v), v)
}

func memcachedPush(i int) string {
	v := "p" + strconv.Itoa(i)
	return fmt.Sprintf("set push:%d 0 0 %d\r\n%s\r\n", i, len(v), v)
}

// resp reads one RESP reply line (and a bulk string's data).
func resp(c *clientConn) (string, error) {
	line, err := c.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if strings.HasPrefix(line, "$") {
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return "", fmt.Errorf("bad bulk length %q", line)
		}
		if n < 0 {
			return "(nil)", nil
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(c.r, b); err != nil {
			return "", err
		}
		return string(b[:n]), nil
	}
	return line, nil
}

// redisExchange sets a key of the client's and reads it back, and reads
// back one written long before (data written before the checkpoint must
// come back after it).
func redisExchange(c *clientConn, id, iter int) error {
	key := fmt.Sprintf("c%d:k%d", id, iter)
	val := fmt.Sprintf("v%d-%d-%s", id, iter, strings.Repeat("x", iter%100))
	if _, err := fmt.Fprintf(c, "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", len(key), key, len(val), val); err != nil {
		return err
	}
	if r, err := resp(c); err != nil || r != "+OK" {
		return fmt.Errorf("SET %s: %q %v", key, r, err)
	}
	old := iter / 2
	okey := fmt.Sprintf("c%d:k%d", id, old)
	oval := fmt.Sprintf("v%d-%d-%s", id, old, strings.Repeat("x", old%100))
	if _, err := fmt.Fprintf(c, "*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n", len(okey), okey); err != nil {
		return err
	}
	if r, err := resp(c); err != nil || r != oval {
		return fmt.Errorf("GET %s: %q %v, want %q", okey, r, err, oval)
	}
	return nil
}

// memcachedExchange is redisExchange in memcached's text protocol.
func memcachedExchange(c *clientConn, id, iter int) error {
	key := fmt.Sprintf("c%d:k%d", id, iter)
	val := fmt.Sprintf("v%d-%d", id, iter)
	if _, err := fmt.Fprintf(c, "set %s 0 0 %d\r\n%s\r\n", key, len(val), val); err != nil {
		return err
	}
	if r, err := c.r.ReadString('\n'); err != nil || r != "STORED\r\n" {
		return fmt.Errorf("set %s: %q %v", key, r, err)
	}
	old := iter / 2
	okey := fmt.Sprintf("c%d:k%d", id, old)
	want := fmt.Sprintf("VALUE %s 0 %d\r\nv%d-%d\r\nEND\r\n", okey, len(fmt.Sprintf("v%d-%d", id, old)), id, old)
	if _, err := fmt.Fprintf(c, "get %s\r\n", okey); err != nil {
		return err
	}
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c.r, got); err != nil || string(got) != want {
		return fmt.Errorf("get %s: %q %v, want %q", okey, got, err, want)
	}
	return nil
}

// httpExchange fetches path on a keep-alive connection and wants body.
func httpExchange(path, body string) exchange {
	return func(c *clientConn, id, iter int) error {
		if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: test\r\nConnection: keep-alive\r\n\r\n", path); err != nil {
			return err
		}
		resp, err := http.ReadResponse(c.r, nil)
		if err != nil {
			return err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		if resp.StatusCode != 200 || string(b) != body {
			return fmt.Errorf("GET %s: %s %q", path, resp.Status, b)
		}
		if resp.Close {
			return fmt.Errorf("GET %s: the server closed the keep-alive connection", path)
		}
		return nil
	}
}

func TestServerRedis(t *testing.T) {
	needRoot(t)
	n := makeNetns(t)
	s := startServer(t, n, "127.0.0.1:6390", "redis-server", "--port", "6390", "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no", "--logfile", "")
	runServerTest(t, n, s, "127.0.0.1:6390", 4, redisExchange, redisPush, "+OK\r\n")
}

func TestServerMemcached(t *testing.T) {
	needRoot(t)
	n := makeNetns(t)
	s := startServer(t, n, "127.0.0.1:11290", "memcached", "-u", "root", "-l", "127.0.0.1", "-p", "11290", "-U", "0", "-t", "2")
	runServerTest(t, n, s, "127.0.0.1:11290", 4, memcachedExchange, memcachedPush, "STORED\r\n")
}

func TestServerNginx(t *testing.T) {
	needRoot(t)
	n := makeNetns(t)
	dir := t.TempDir()
	body := "hello from nginx\n"
	if err := os.WriteFile(filepath.Join(dir, "index.html"), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`daemon off;
master_process on;
user root;
worker_processes 2;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 64; }
http {
	access_log off;
	keepalive_timeout 600;
	keepalive_requests 1000000;
	server {
		listen 127.0.0.1:8090;
		root %[1]s;
	}
}
`, dir)
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	s := startTreeServer(t, n, "127.0.0.1:8090", "/usr/sbin/nginx", "-c", filepath.Join(dir, "nginx.conf"), "-e", filepath.Join(dir, "error.log"))
	runServerTest(t, n, s, "127.0.0.1:8090", 4, httpExchange("/index.html", body), nil, "")
}

func TestServerPythonHTTP(t *testing.T) {
	needRoot(t)
	n := makeNetns(t)
	dir := t.TempDir()
	body := "hello from python\n"
	if err := os.WriteFile(filepath.Join(dir, "index.txt"), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	// HTTP/1.1, so that connections are kept alive.
	s := startServer(t, n, "127.0.0.1:8091", "/usr/bin/python3", "-c",
		`import http.server, functools, sys
h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
h.func.protocol_version = "HTTP/1.1"
h.func.log_message = lambda *a: None
http.server.ThreadingHTTPServer(("127.0.0.1", 8091), h).serve_forever()`, dir)
	runServerTest(t, n, s, "127.0.0.1:8091", 2, httpExchange("/index.txt", body), nil, "")
}

// TestServerRedisWithoutLock: the same checkpoint with --network-lock skip
// resets the client that kept sending while the server was gone. This is
// what the lock prevents in the tests above.
func TestServerRedisWithoutLock(t *testing.T) {
	needRoot(t)
	n := makeNetns(t)
	s := startServer(t, n, "127.0.0.1:6392", "redis-server", "--port", "6392", "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no", "--logfile", "")
	p := startPusher(t, n, "127.0.0.1:6392", redisPush, "+OK\r\n")
	for {
		if _, answered, _ := p.counts(); answered >= 20 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	checkpointServer(t, n, s, nil, "--network-lock", "skip")
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, _, err := p.counts()
		if err != nil {
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("pusher: %v, want a reset", err)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no reset without the network lock: the lock tests prove nothing")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
