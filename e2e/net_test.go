package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"godwit/internal/images"
	"godwit/internal/model/criuimg"
	"godwit/internal/sockdiag"
)

// netns is a network namespace the test makes for itself: a goroutine
// locked to a thread that unshared CLONE_NEWNET. What runs there (do)
// makes its sockets in that namespace, and the processes it starts live
// in it. The thread ends with the test, and the namespace with the last
// process in it.
type netns struct {
	ops  chan func()
	done chan struct{}
}

func newNetns(t testing.TB) *netns {
	t.Helper()
	n := &netns{ops: make(chan func()), done: make(chan struct{})}
	errc := make(chan error)
	go n.serve(errc)
	if err := <-errc; err != nil {
		t.Fatalf("unshare(CLONE_NEWNET): %v", err)
	}
	t.Cleanup(func() { close(n.ops); <-n.done })
	var out []byte
	var err error
	n.do(func() { out, err = exec.Command("ip", "link", "set", "lo", "up").CombinedOutput() })
	if err != nil {
		t.Fatalf("ip link set lo up: %v\n%s", err, out)
	}
	return n
}

// serve unshares CLONE_NEWNET on a thread of its own, says how that went
// on errc, and runs the namespace's ops there. Never on the main thread:
// Go keeps that one (wedged, still in the namespace) when its locked
// goroutine exits, and it is the thread /proc/self/ns and /proc/self/net
// of the test process show. Holding the main thread locked until another
// goroutine has locked its own thread keeps serve off it.
func (n *netns) serve(errc chan<- error) {
	runtime.LockOSThread()
	if unix.Gettid() == unix.Getpid() {
		locked := make(chan struct{})
		go func() {
			runtime.LockOSThread()
			close(locked)
			n.serve(errc)
		}()
		<-locked
		runtime.UnlockOSThread() // untouched
		return
	}
	// Never unlocked: the thread dies with the goroutine.
	defer close(n.done)
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		errc <- err
		return
	}
	errc <- nil
	for f := range n.ops {
		f()
	}
}

func (n *netns) do(f func()) {
	done := make(chan struct{})
	n.ops <- func() { defer close(done); f() }
	<-done
}

// godwit runs godwit in the namespace.
func (n *netns) godwit(t *testing.T, args ...string) (code int, out string) {
	t.Helper()
	n.do(func() { code, out = godwit(t, args...) })
	return
}

// lockPorts drops, in the namespace, the TCP segments to ports (the
// dumped program's ends): a network lock of the test's own while the
// connections are dumped and not yet restored, so that no segment a
// peer sends then is answered with a reset. unlock removes it and says
// how many it dropped.
func lockPorts(t *testing.T, n *netns, ports ...int) (unlock func() int) {
	t.Helper()
	var ps []string
	for _, p := range ports {
		ps = append(ps, strconv.Itoa(p))
	}
	nft := func(args ...string) string {
		var out []byte
		var err error
		n.do(func() { out, err = exec.Command("nft", args...).CombinedOutput() })
		if err != nil {
			t.Fatalf("nft %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	nft("add", "table", "inet", "godwit_test")
	nft("add", "chain", "inet", "godwit_test", "in", "{ type filter hook input priority -300 ; }")
	nft("add", "rule", "inet", "godwit_test", "in", "tcp", "dport", "{ "+strings.Join(ps, ", ")+" }", "counter", "drop")
	done := false
	unlock = func() int {
		if done {
			return 0
		}
		done = true
		m := regexp.MustCompile(`packets (\d+)`).FindStringSubmatch(nft("list", "table", "inet", "godwit_test"))
		nft("delete", "table", "inet", "godwit_test")
		if m == nil {
			return -1
		}
		v, _ := strconv.Atoi(m[1])
		return v
	}
	t.Cleanup(func() { unlock() })
	return unlock
}

// netProc is a workload (netconn) running in the namespace.
type netProc struct {
	cmd    *exec.Cmd
	pid    int
	log    string
	waited chan error
}

func startNet(t *testing.T, n *netns, args ...string) *netProc {
	t.Helper()
	return startNetProg(t, n, "netconn", args...)
}

// startNetProg starts workloads/prog.c (ready, ticks, SIGUSR1 as netconn).
func startNetProg(t *testing.T, n *netns, prog string, args ...string) *netProc {
	t.Helper()
	p := &netProc{log: filepath.Join(t.TempDir(), "log"), waited: make(chan error, 1)}
	p.cmd = exec.Command(cWorkload(t, prog), append(args, p.log)...)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	out, err := os.Create(p.log + ".out")
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	p.cmd.Stdout, p.cmd.Stderr = out, out
	n.do(func() { err = p.cmd.Start() })
	if err != nil {
		t.Fatal(err)
	}
	p.pid = p.cmd.Process.Pid
	go func() { p.waited <- p.cmd.Wait() }()
	t.Cleanup(func() { killAndForget(p.pid) })
	for deadline := time.Now().Add(20 * time.Second); !strings.HasPrefix(readAll(p.log), "ready\n"); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) || !alive(p.pid) {
			t.Fatalf("%s %v did not start: %s%s", prog, args, readAll(p.log), readAll(p.log+".out"))
		}
	}
	return p
}

var netTickRE = regexp.MustCompile(`(?m)^tick (\d+)$`)

func (p *netProc) ticks() int { return len(netTickRE.FindAllString(readAll(p.log), -1)) }

func readAll(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// waitLine waits for a line of the log.
func (p *netProc) waitLine(t *testing.T, line string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%q in pid %d's log", line, p.pid), func() bool {
		f, err := os.Open(p.log)
		if err != nil {
			return false
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if sc.Text() == line {
				return true
			}
		}
		return false
	})
}

// toggleHold asks the workload to stop (or resume) reading and writing,
// and waits until it did.
func (p *netProc) toggleHold(t *testing.T, want int) {
	t.Helper()
	before := strings.Count(readAll(p.log), fmt.Sprintf("hold %d\n", want))
	if err := unix.Kill(p.pid, unix.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, fmt.Sprintf("hold %d", want), func() bool {
		return strings.Count(readAll(p.log), fmt.Sprintf("hold %d\n", want)) > before
	})
}

// gen is netconn's byte stream.
type gen uint32

func (g *gen) next() byte {
	*g = *g*1103515245 + 12345
	return byte(*g >> 16)
}

// peer is the Go end of a connection with netconn: it writes gen(2) and
// checks what it reads against gen(1); either way can be paused.
type peer struct {
	c                net.Conn
	wmu              sync.Mutex
	wx, rx           gen
	sent, recv       atomic.Int64
	reading, writing atomic.Bool
	ending           atomic.Bool // the workload is told to exit: EOF is no error
	eofOK, eof       atomic.Bool // the workload shuts down: EOF ends the stream
	stop             chan struct{}
	wg               sync.WaitGroup
	errMu            sync.Mutex
	err              error
}

func newPeer(c net.Conn) *peer {
	p := &peer{c: c, wx: 2, rx: 1, stop: make(chan struct{})}
	p.reading.Store(true)
	p.writing.Store(true)
	p.wg.Add(2)
	go p.readLoop()
	go p.writeLoop()
	return p
}

func (p *peer) fail(err error) {
	p.errMu.Lock()
	defer p.errMu.Unlock()
	if p.err == nil {
		p.err = err
	}
}

func (p *peer) failed() error {
	p.errMu.Lock()
	defer p.errMu.Unlock()
	return p.err
}

func (p *peer) stopped() bool {
	select {
	case <-p.stop:
		return true
	default:
		return false
	}
}

func (p *peer) readLoop() {
	defer p.wg.Done()
	buf := make([]byte, 64<<10)
	for !p.stopped() {
		if !p.reading.Load() {
			time.Sleep(time.Millisecond)
			continue
		}
		p.c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		n, err := p.c.Read(buf)
		for i := 0; i < n; i++ {
			if buf[i] != p.rx.next() {
				p.fail(fmt.Errorf("byte %d read from the workload is wrong", p.recv.Load()+int64(i)))
				return
			}
		}
		p.recv.Add(int64(n))
		if errors.Is(err, io.EOF) && (p.ending.Load() || p.eofOK.Load()) {
			p.eof.Store(true)
			return
		}
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			p.fail(fmt.Errorf("read after %d bytes: %w", p.recv.Load(), err))
			return
		}
	}
}

func (p *peer) writeLoop() {
	defer p.wg.Done()
	for !p.stopped() {
		if !p.writing.Load() {
			time.Sleep(time.Millisecond)
			continue
		}
		// Slower than the workload reads (16 KiB per 5 ms round): its
		// receive window never closes, so that nothing waits to be
		// sent to it when it is frozen.
		if err := p.write(8<<10, 20*time.Millisecond); err != nil {
			p.fail(err)
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// write writes up to n bytes of the stream, for at most d.
func (p *peer) write(n int, d time.Duration) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	buf := make([]byte, n)
	g := p.wx
	for i := range buf {
		buf[i] = g.next()
	}
	p.c.SetWriteDeadline(time.Now().Add(d))
	w, err := p.c.Write(buf)
	for i := 0; i < w; i++ {
		p.wx.next()
	}
	p.sent.Add(int64(w))
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("write after %d bytes: %w", p.sent.Load(), err)
	}
	return nil
}

// waitWrite waits until a write in progress has returned.
func (p *peer) waitWrite() {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	_ = p.sent.Load()
}

func (p *peer) close() {
	close(p.stop)
	p.wg.Wait()
	p.c.Close()
}

// quiesce stops the peer's reading (so that the workload's send queue
// fills), then its writing; the workload then holds (stops reading and
// writing), and the peer writes fill more bytes, which stay queued in
// the workload's receive queue. Nothing is then in flight towards the
// workload: its death (in repair mode) and the restore go unseen.
func quiesce(t *testing.T, n *netns, w *netProc, peers []*peer, fill int) {
	t.Helper()
	for _, p := range peers {
		p.reading.Store(false)
	}
	// Until the workload's end of each connection holds bytes its peer
	// has no room for.
	// Bytes queued are not enough: under load they may be bytes in
	// flight whose ACKs are late, which the peer's window then takes,
	// leaving nothing to hold a FIN back (LAST_ACK then ends at once).
	waitFor(t, "the workload's send queues to fill", func() bool {
		full := true
		for _, q := range connQueues(t, n, peers) {
			full = full && q.prog != nil && q.prog.Wqueue >= 64<<10 && heldBack(t, w.pid, q.prog.Ino)
		}
		return full
	})
	for _, p := range peers {
		p.writing.Store(false)
		p.waitWrite()
	}
	// The workload reads all its peers wrote before it holds: a
	// receive queue left full would keep the fill below (and a FIN
	// after it) in the peer's send queue, timing-dependent.
	waitFor(t, "the workload to read what its peers wrote", func() bool {
		done := true
		for _, q := range connQueues(t, n, peers) {
			done = done && q.prog != nil && q.peer != nil && q.prog.Rqueue == 0 && q.peer.Wqueue == 0
		}
		return done
	})
	w.toggleHold(t, 1)
	for _, p := range peers {
		before := p.sent.Load()
		if err := p.write(fill, 5*time.Second); err != nil || p.sent.Load()-before != int64(fill) {
			t.Fatalf("fill the workload's receive queue: wrote %d of %d: %v", p.sent.Load()-before, fill, err)
		}
	}
	waitFor(t, "the fill to be received and acknowledged", func() bool {
		done := true
		for _, q := range connQueues(t, n, peers) {
			done = done && q.prog != nil && q.peer != nil && q.prog.Rqueue >= uint32(fill) && q.peer.Wqueue == 0
		}
		return done
	})
}

// heldBack reports whether the TCP socket of inode ino that task pid holds
// has bytes not sent yet, either none in flight or a window of 0 (its
// tcp_info, read on a copy of its fd): bytes the peer's window holds back.
func heldBack(t *testing.T, pid int, ino uint32) bool {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("socket:[%d]", ino)
	for _, e := range ents {
		if l, _ := os.Readlink(dir + "/" + e.Name()); l != want {
			continue
		}
		fd, _ := strconv.Atoi(e.Name())
		pfd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(pfd)
		sfd, err := unix.PidfdGetfd(pfd, fd, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(sfd)
		ti, err := unix.GetsockoptTCPInfo(sfd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			t.Fatalf("TCP_INFO of %s: %v", want, err)
		}
		// The window the peer advertised is closed, or too small
		// for the sender to use (it waits for a larger one).
		return ti.Notsent_bytes > 0 && (ti.Unacked == 0 || ti.Snd_wnd == 0)
	}
	t.Fatalf("task %d holds no %s", pid, want)
	return false
}

// connQueue is one connection as sock_diag shows it: the workload's end
// and the peer's.
type connQueue struct{ prog, peer *sockdiag.Inet }

// connQueues finds the two ends of each peer's connection.
func connQueues(t *testing.T, n *netns, peers []*peer) []connQueue {
	t.Helper()
	qs := make([]connQueue, len(peers))
	n.do(func() {
		var socks []*sockdiag.Inet
		for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
			s, err := sockdiag.DumpInet(fam, unix.IPPROTO_TCP)
			if err != nil {
				t.Error(err)
			}
			for _, v := range s {
				socks = append(socks, v)
			}
		}
		for i, p := range peers {
			peerAddr := p.c.LocalAddr().(*net.TCPAddr).AddrPort()
			for _, s := range socks {
				if s.Ino == 0 {
					continue
				}
				if s.Dst.Port() == peerAddr.Port() && s.Dst.Addr().Unmap() == peerAddr.Addr().Unmap() {
					qs[i].prog = s
				}
				if s.Src.Port() == peerAddr.Port() && s.Src.Addr().Unmap() == peerAddr.Addr().Unmap() {
					qs[i].peer = s
				}
			}
		}
	})
	return qs
}

// dumpNet dumps w with --tcp-established and waits until it is gone.
func dumpNet(t *testing.T, n *netns, w *netProc, args ...string) string {
	t.Helper()
	dir := t.TempDir()
	code, out := n.godwit(t, append([]string{"dump", "-t", strconv.Itoa(w.pid), "-D", dir, "-v4", "-o", "dump.log", "--tcp-established"}, args...)...)
	if code != 0 {
		t.Fatalf("dump: exit %d: %s\n%s", code, out, readFile(filepath.Join(dir, "dump.log")))
	}
	select {
	case <-w.waited:
	case <-time.After(10 * time.Second):
		t.Fatalf("pid %d still alive after dump", w.pid)
	}
	waitFor(t, "the dumped pid to go", func() bool { return !pidExists(w.pid) })
	return dir
}

// netRestoring is a `godwit restore` (in the namespace) waiting for the
// restored workload.
type netRestoring struct {
	cmd  *exec.Cmd
	out  strings.Builder
	done chan error
}

func restoreNet(t *testing.T, n *netns, w *netProc, dir string, args ...string) *netRestoring {
	t.Helper()
	r := &netRestoring{done: make(chan error, 1)}
	r.cmd = exec.Command(godwitBin, append([]string{"restore", "-D", dir, "-v4", "-o", "restore.log", "--tcp-established"}, args...)...)
	r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.out
	var err error
	n.do(func() { err = r.cmd.Start() })
	if err != nil {
		t.Fatal(err)
	}
	go func() { r.done <- r.cmd.Wait() }()
	t.Cleanup(func() {
		killAndForget(w.pid)
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			r.cmd.Process.Kill()
		}
	})
	ticks := w.ticks()
	deadline := time.Now().Add(30 * time.Second)
	for !(alive(w.pid) && tracerOf(w.pid) == 0 && w.ticks() > ticks) {
		select {
		case err := <-r.done:
			t.Fatalf("restore exited early: %v: %s\n%s", err, r.out.String(), readFile(filepath.Join(dir, "restore.log")))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("restored pid %d did not resume\n%s", w.pid, readFile(filepath.Join(dir, "restore.log")))
		}
		time.Sleep(5 * time.Millisecond)
	}
	return r
}

// finish asks the restored workload to check itself and returns its
// log's last line.
func (r *netRestoring) finish(t *testing.T, w *netProc, peers []*peer) string {
	t.Helper()
	for _, p := range peers {
		p.writing.Store(false)
		p.ending.Store(true)
		p.waitWrite() // counted: the workload's count is compared with it
	}
	// Every byte the peers wrote acknowledged and read before the workload exits:
	// after a lock (or any gap) a peer's retransmission timer is backed
	// off, and bytes it resends late would meet the exited workload's
	// socket (closed with unread data, or gone) and draw a reset.
	for i, p := range peers {
		waitFor(t, fmt.Sprintf("peer %d's bytes to be acknowledged", i), func() bool { return p.unacked() == 0 })
	}
	// ... and read: a socket closed with unread bytes sends a reset.
	waitFor(t, "the workload to read what the peers wrote", func() bool { return unreadTCP(w.pid) == 0 })
	if err := unix.Kill(w.pid, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-r.done:
		r.done <- err
		if err != nil {
			t.Fatalf("restored workload failed: %v\n%s\n%s", err, r.out.String(), readAll(w.log)[max(0, len(readAll(w.log))-800):])
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("restored pid %d did not finish", w.pid)
	}
	return tailOf(w.log)
}

func tailOf(path string) string {
	s := strings.TrimSpace(readAll(path))
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// streams reads the dumped connections' queue lengths from the images.
func streams(t *testing.T, dir string) (in, out []int) {
	t.Helper()
	d, err := images.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	tree, err := criuimg.Read(d)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range tree.Files {
		if f.Inet != nil && f.Inet.Stream != nil {
			in = append(in, len(f.Inet.Stream.InQ))
			out = append(out, len(f.Inet.Stream.OutQ))
		}
	}
	return in, out
}

// runStreams lets the peers stream until each moved more bytes both
// ways, then checks none failed.
func runStreams(t *testing.T, peers []*peer, more int64) {
	t.Helper()
	type mark struct{ s, r int64 }
	start := make([]mark, len(peers))
	for i, p := range peers {
		start[i] = mark{p.sent.Load(), p.recv.Load()}
		p.reading.Store(true)
		p.writing.Store(true)
	}
	moved := func() bool {
		for i, p := range peers {
			if p.failed() != nil || p.sent.Load()-start[i].s < more || p.recv.Load()-start[i].r < more {
				return p.failed() != nil
			}
		}
		return true
	}
	for deadline := time.Now().Add(20 * time.Second); !moved(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			var s []string
			for i, p := range peers {
				s = append(s, fmt.Sprintf("connection %d: wrote %d, read %d (from %d, %d)", i, p.sent.Load(), p.recv.Load(), start[i].s, start[i].r))
			}
			t.Fatalf("the streams did not move on: %s\n%s", strings.Join(s, "; "), logOf(peers))
		}
	}
	for i, p := range peers {
		if err := p.failed(); err != nil {
			t.Fatalf("connection %d: %v\n%s", i, err, logOf(peers))
		}
	}
}

// logOf is set by the tests to show the workload's log on failure.
var logOf = func([]*peer) string { return "" }

// logTail is the end of the workload's log, for failures.
func (p *netProc) logTail() string {
	s := readAll(p.log)
	s = strings.Join(regexp.MustCompile(`(?m)^tick \d+\n`).Split(s, -1), "")
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	return s
}

var doneRE = regexp.MustCompile(`^done ticks=\d+ sent=(\d+) recv=(\d+) conns=(\d+)$`)

// checkDone compares the workload's closing line with what the peers
// moved: it read every byte they wrote (recv ≤ sent, equal once drained)
// without a wrong one, and they read what it wrote.
func checkDone(t *testing.T, line string, peers []*peer, conns int) {
	t.Helper()
	m := doneRE.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("workload's last line: %q", line)
	}
	var sent, recv int64
	for _, p := range peers {
		if err := p.failed(); err != nil {
			t.Fatal(err)
		}
		sent += p.sent.Load()
		recv += p.recv.Load()
	}
	wsent, _ := strconv.ParseInt(m[1], 10, 64)
	wrecv, _ := strconv.ParseInt(m[2], 10, 64)
	if wrecv > sent || wsent < recv || m[3] != strconv.Itoa(conns) {
		t.Fatalf("workload: %s; the peers sent %d and read %d", line, sent, recv)
	}
}

// A restored client's connection to a peer that was never dumped keeps
// both byte streams intact, with bytes queued in both directions at the
// freeze: the peer sees delay, never an error.
func TestNetEstablishedClient(t *testing.T) {
	needRoot(t)
	n := newNetns(t)
	var ln net.Listener
	var err error
	n.do(func() { ln, err = net.Listen("tcp4", "127.0.0.1:0") })
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	w := startNet(t, n, "client", "127.0.0.1", strconv.Itoa(port))
	logOf = func([]*peer) string { return w.logTail() }
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	p := newPeer(c)
	defer p.close()
	runStreams(t, []*peer{p}, 1<<20)
	quiesce(t, n, w, []*peer{p}, 32<<10)
	unlock := lockPorts(t, n, c.RemoteAddr().(*net.TCPAddr).Port)
	dir := dumpNet(t, n, w)
	in, out := streams(t, dir)
	if len(in) != 1 || in[0] < 32<<10 || out[0] == 0 {
		t.Fatalf("dumped queues: receive %v, send %v: want the fill in one and bytes in the other", in, out)
	}
	r := restoreNet(t, n, w, dir)
	t.Logf("dropped %d segments; dumped queues: receive %d, send %d bytes", unlock(), in[0], out[0])
	w.toggleHold(t, 0)
	runStreams(t, []*peer{p}, 2<<20)
	checkDone(t, r.finish(t, w, []*peer{p}), []*peer{p}, 1)
}

// A restored server keeps its listener (address, backlog 7, options)
// and its accepted connections (IPv6): old clients stream on, and a new
// client is accepted after the restore.
func TestNetServer(t *testing.T) {
	needRoot(t)
	n := newNetns(t)
	const port = "7707"
	w := startNet(t, n, "server", "::1", port)
	logOf = func([]*peer) string { return w.logTail() }
	var peers []*peer
	dial := func() *peer {
		var c net.Conn
		var err error
		n.do(func() { c, err = net.Dial("tcp6", "[::1]:"+port) })
		if err != nil {
			t.Fatal(err)
		}
		p := newPeer(c)
		t.Cleanup(p.close)
		return p
	}
	peers = append(peers, dial(), dial())
	runStreams(t, peers, 1<<20)
	quiesce(t, n, w, peers, 16<<10)
	unlock := lockPorts(t, n, 7707)
	dir := dumpNet(t, n, w)
	if in, _ := streams(t, dir); len(in) != 2 {
		t.Fatalf("%d connections dumped, want 2", len(in))
	}
	r := restoreNet(t, n, w, dir)
	t.Logf("dropped %d segments", unlock())
	var ls *sockdiag.Inet
	n.do(func() {
		socks, err := sockdiag.DumpInet(unix.AF_INET6, unix.IPPROTO_TCP)
		if err != nil {
			t.Error(err)
		}
		for _, s := range socks {
			if s.State == 10 && s.Src.Port() == 7707 {
				ls = s
			}
		}
	})
	if ls == nil || ls.Wqueue != 7 || ls.Src.Addr().String() != "::1" {
		t.Fatalf("restored listener: %+v", ls)
	}
	w.toggleHold(t, 0)
	peers = append(peers, dial())
	runStreams(t, peers, 1<<20)
	checkDone(t, r.finish(t, w, peers), peers, 3)
}

// TestNetServerMany: a server with 20 clients, each with data queued
// both ways, is dumped with its connections collected two at a time
// (drivers.prefetchInet, from 16 inet sockets on) and restored: every
// stream goes on where it stopped.
func TestNetServerMany(t *testing.T) {
	needRoot(t)
	n := newNetns(t)
	const port = "7708"
	w := startNet(t, n, "server", "127.0.0.1", port)
	logOf = func([]*peer) string { return w.logTail() }
	var peers []*peer
	for range 20 {
		var c net.Conn
		var err error
		n.do(func() { c, err = net.Dial("tcp4", "127.0.0.1:"+port) })
		if err != nil {
			t.Fatal(err)
		}
		p := newPeer(c)
		t.Cleanup(p.close)
		peers = append(peers, p)
	}
	runStreams(t, peers, 64<<10)
	quiesce(t, n, w, peers, 16<<10)
	unlock := lockPorts(t, n, 7708)
	dir := dumpNet(t, n, w)
	if in, _ := streams(t, dir); len(in) != len(peers) {
		t.Fatalf("%d connections dumped, want %d", len(in), len(peers))
	}
	r := restoreNet(t, n, w, dir)
	t.Logf("dropped %d segments", unlock())
	w.toggleHold(t, 0)
	runStreams(t, peers, 64<<10)
	checkDone(t, r.finish(t, w, peers), peers, len(peers))
}

// Without --tcp-established an established connection is refused by
// name, and the workload runs on untouched.
func TestNetEstablishedRefused(t *testing.T) {
	needRoot(t)
	n := newNetns(t)
	var ln net.Listener
	var err error
	n.do(func() { ln, err = net.Listen("tcp4", "127.0.0.1:0") })
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	w := startNet(t, n, "client", "127.0.0.1", strconv.Itoa(port))
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	p := newPeer(c)
	defer p.close()
	code, out := n.godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir())
	want := fmt.Sprintf("TCP socket 127.0.0.1:%d -> 127.0.0.1:%d: established TCP connection (ESTABLISHED): dump with --tcp-established", 0, port)
	want = want[strings.Index(want, "-> "):]
	if code == 0 || !strings.Contains(out, want) || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Fatalf("dump: exit %d: %q, want one line with %q", code, out, want)
	}
	runStreams(t, []*peer{p}, 1<<20)
}

// A Go net/http server, built with the current Go (its listener is
// MPTCP), keeps its listener as MPTCP and its keep-alive client's
// connection (plain TCP: the kernel hands out a fallen-back connection
// as a TCP socket) across dump and restore: the client's next request
// goes over the same connection and the count goes on.
func TestNetHTTPServerMPTCP(t *testing.T) {
	needRoot(t)
	bin := filepath.Join(t.TempDir(), "nethttp")
	if out, err := exec.Command("go", "build", "-o", bin, "./workloads/nethttp").CombinedOutput(); err != nil {
		t.Fatalf("go build nethttp: %v\n%s", err, out)
	}
	n := newNetns(t)
	const addr = "127.0.0.1:7780"
	p := &netProc{log: filepath.Join(t.TempDir(), "log"), waited: make(chan error, 1)}
	p.cmd = exec.Command(bin, addr, p.log)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	var err error
	n.do(func() { err = p.cmd.Start() })
	if err != nil {
		t.Fatal(err)
	}
	p.pid = p.cmd.Process.Pid
	go func() { p.waited <- p.cmd.Wait() }()
	t.Cleanup(func() { killAndForget(p.pid) })
	p.waitLine(t, "ready")
	waitFor(t, "ticks", func() bool { return p.ticks() > 2 })

	listener := func() *sockdiag.Inet {
		var ls *sockdiag.Inet
		n.do(func() {
			socks, err := sockdiag.DumpInet(unix.AF_INET, unix.IPPROTO_MPTCP)
			if err != nil {
				t.Error(err)
			}
			for _, s := range socks {
				if s.State == 10 && s.Src.String() == addr {
					ls = s
				}
			}
		})
		return ls
	}
	if listener() == nil {
		t.Fatal("the Go server's listener is not MPTCP: this test needs a Go ≥ 1.24 and a kernel with MPTCP")
	}
	tr := &http.Transport{DialContext: func(ctx context.Context, network, a string) (c net.Conn, err error) {
		n.do(func() { c, err = (&net.Dialer{}).DialContext(ctx, network, a) })
		return
	}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	var local string
	get := func(want int) {
		t.Helper()
		var reused bool
		var la string
		ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
			reused, la = i.Reused, i.Conn.LocalAddr().String()
		}})
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/n", nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("request %d: %v", want, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(b) != strconv.Itoa(want) {
			t.Fatalf("request %d: %q, %v", want, b, err)
		}
		if local == "" {
			local = la
		} else if !reused || la != local {
			t.Fatalf("request %d went over a new connection (%s, reused %v), not the kept-alive %s", want, la, reused, local)
		}
	}
	for i := 1; i <= 5; i++ {
		get(i)
	}
	unlock := lockPorts(t, n, 7780)
	dir := dumpNet(t, n, p)
	r := restoreNet(t, n, p, dir)
	t.Logf("dropped %d segments", unlock())
	if listener() == nil {
		t.Fatal("the restored listener is not MPTCP")
	}
	for i := 6; i <= 10; i++ {
		get(i)
	}
	// A new client: the restored listener accepts.
	tr2 := &http.Transport{DialContext: tr.DialContext}
	defer tr2.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr2, Timeout: 10 * time.Second}).Get("http://" + addr + "/n")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "11" {
		t.Fatalf("new client: %q", b)
	}
	killAndForget(p.pid)
	<-r.done
}

// UDP sockets come back bound and connected, with their options: the
// restored echo socket answers on its port, the connected one sends on
// from the same port, and the program finds its options as it set them.
func TestNetUDP(t *testing.T) {
	needRoot(t)
	n := newNetns(t)
	const port = 7720
	var peer *net.UDPConn
	var err error
	n.do(func() { peer, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port + 1}) })
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	w := startNet(t, n, "udp", "127.0.0.1", strconv.Itoa(port))
	echo := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}
	// from reads the next "n=N" of the connected socket, and its source.
	from := func() (int, *net.UDPAddr) {
		t.Helper()
		buf := make([]byte, 64)
		peer.SetReadDeadline(time.Now().Add(10 * time.Second))
		k, src, err := peer.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("read from the connected socket: %v", err)
		}
		v, err := strconv.Atoi(strings.TrimPrefix(string(buf[:k]), "n="))
		if err != nil {
			t.Fatalf("datagram %q", buf[:k])
		}
		return v, src
	}
	ask := func(msg string) {
		t.Helper()
		if _, err := peer.WriteToUDP([]byte(msg), echo); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		for deadline := time.Now().Add(10 * time.Second); ; {
			peer.SetReadDeadline(deadline)
			k, src, err := peer.ReadFromUDP(buf)
			if err != nil {
				t.Fatalf("echo of %q: %v", msg, err)
			}
			if src.Port != port {
				continue // a counter datagram
			}
			want := []byte(msg)
			for i := range want {
				want[i]++
			}
			if string(buf[:k]) != string(want) {
				t.Fatalf("echo of %q: %q", msg, buf[:k])
			}
			return
		}
	}
	ask("before")
	_, src := from()
	w.toggleHold(t, 1)
	time.Sleep(20 * time.Millisecond)
	// Drain the counter datagrams sent before the hold.
	for {
		peer.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, _, err := peer.ReadFromUDP(make([]byte, 64)); err != nil {
			break
		}
	}
	dir := t.TempDir()
	code, out := n.godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", dir, "-o", "dump.log")
	if code != 0 {
		t.Fatalf("dump: exit %d: %s\n%s", code, out, readFile(filepath.Join(dir, "dump.log")))
	}
	<-w.waited
	waitFor(t, "the dumped pid to go", func() bool { return !pidExists(w.pid) })
	r := restoreNet(t, n, w, dir)
	w.toggleHold(t, 0)
	v, src2 := from()
	if src2.String() != src.String() || v == 0 {
		t.Fatalf("after the restore the connected socket sends from %s (was %s)", src2, src)
	}
	ask("after")
	if line := r.finish(t, w, nil); !strings.HasPrefix(line, "done ") {
		t.Fatalf("workload: %s", line)
	}
}

// A restore where a socket's address is not local fails in one line
// naming the socket and the address; --tcp-close restores a connection
// whose address is gone, closed.
func TestNetAddressNotLocal(t *testing.T) {
	needRoot(t)
	n := newNetns(t)
	const addr = "fd00:6f64::1" // on the test namespace's lo only
	var out []byte
	var err error
	n.do(func() {
		out, err = exec.Command("ip", "addr", "add", addr+"/128", "dev", "lo", "nodad").CombinedOutput()
	})
	if err != nil {
		t.Fatalf("ip addr add: %v\n%s", err, out)
	}
	// The address's local route comes with its DAD completion, which
	// the kernel runs from a work queue even with nodad: until then a
	// connect to it fails with ENETUNREACH (seen under load).
	waitFor(t, "the address's local route", func() bool {
		n.do(func() { out, err = exec.Command("ip", "-6", "route", "show", "table", "local", addr).Output() })
		return err == nil && strings.Contains(string(out), addr)
	})
	var ln net.Listener
	n.do(func() { ln, err = net.Listen("tcp6", "["+addr+"]:0") })
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	w := startNet(t, n, "client", addr, port)
	logOf = func([]*peer) string { return w.logTail() }
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	p := newPeer(c)
	defer p.close()
	runStreams(t, []*peer{p}, 64<<10)
	quiesce(t, n, w, []*peer{p}, 1024)
	dir := dumpNet(t, n, w)

	// Another namespace, without the address.
	n2 := newNetns(t)
	code, msg := n2.godwit(t, "restore", "-D", dir, "--tcp-established")
	want := fmt.Sprintf("TCP socket [%s]:", addr)
	if code == 0 || !strings.Contains(msg, want) || !strings.Contains(msg, "address "+addr+" is not local here") || strings.Count(strings.TrimSpace(msg), "\n") != 0 {
		t.Fatalf("restore: exit %d: %q: want one line naming %q and the address", code, msg, want)
	}
	waitFor(t, "the failed restore's task to go", func() bool { return !pidExists(w.pid) })

	// --tcp-close: the connection comes back closed; the program sees
	// its socket unconnected.
	r := &netRestoring{done: make(chan error, 1)}
	r.cmd = exec.Command(godwitBin, "restore", "-D", dir, "--tcp-close", "-o", "restore.log")
	r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.out
	n2.do(func() { err = r.cmd.Start() })
	if err != nil {
		t.Fatal(err)
	}
	go func() { r.done <- r.cmd.Wait() }()
	t.Cleanup(func() { killAndForget(w.pid); <-r.done })
	waitFor(t, "the restored program to run", func() bool { return alive(w.pid) && tracerOf(w.pid) == 0 })
	w.toggleHold(t, 0)
	waitFor(t, "the program to find its connection closed", func() bool {
		// Writing on a TCP socket never connected fails with EPIPE.
		return strings.Contains(readAll(w.log), "FAIL: write: Broken pipe")
	})
	if err := unix.Kill(w.pid, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	if err := <-r.done; err == nil {
		t.Fatalf("the program found nothing wrong with a closed connection: %s", tailOf(w.log))
	}
	r.done <- nil
}

// Connections frozen closing come back in their state, queues intact,
// and end as they would have: the peer half-closed (CLOSE_WAIT), the
// program half-closed behind bytes its peer had no room for yet
// (FIN_WAIT1, which turns FIN_WAIT2 once the peer reads), both
// (LAST_ACK). Every byte arrives, then the end of the stream.
func TestNetClosingStates(t *testing.T) {
	needRoot(t)
	for _, c := range []struct {
		name                string
		peerClose, progShut bool
		want                uint8
	}{
		{"CLOSE_WAIT", true, false, 8},
		{"FIN_WAIT1", false, true, 4},
		{"LAST_ACK", true, true, 9},
	} {
		t.Run(c.name, func(t *testing.T) {
			n := newNetns(t)
			var ln net.Listener
			var err error
			n.do(func() { ln, err = net.Listen("tcp4", "127.0.0.1:0") })
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			port := ln.Addr().(*net.TCPAddr).Port
			w := startNet(t, n, "client", "127.0.0.1", strconv.Itoa(port))
			logOf = func([]*peer) string { return w.logTail() }
			conn, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			p := newPeer(conn)
			defer p.close()
			runStreams(t, []*peer{p}, 256<<10)
			// The peer's receive buffer pinned small once the streams
			// ran: when it stops reading, its window closes on the
			// program's bytes and stays closed, so the program's FIN
			// stays queued behind them (FIN_WAIT1, LAST_ACK) instead
			// of getting out, and acknowledged, as an autotuned
			// buffer grows.
			if err := conn.(*net.TCPConn).SetReadBuffer(256 << 10); err != nil {
				t.Fatal(err)
			}
			quiesce(t, n, w, []*peer{p}, 8<<10)
			state := func() uint8 {
				var st uint8
				n.do(func() {
					socks, err := sockdiag.DumpInet(unix.AF_INET, unix.IPPROTO_TCP)
					if err != nil {
						t.Error(err)
					}
					for _, s := range socks {
						if s.Dst.Port() == uint16(port) && s.Ino != 0 {
							st = s.State
						}
					}
				})
				return st
			}
			if c.peerClose {
				if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
					t.Fatal(err)
				}
				// The peer's FIN in before the program shuts its side:
				// one that came after would make it CLOSING, not
				// LAST_ACK.
				waitFor(t, "the peer's FIN to arrive", func() bool { return state() == 8 })
			}
			if c.progShut {
				if err := unix.Kill(w.pid, unix.SIGHUP); err != nil {
					t.Fatal(err)
				}
				w.waitLine(t, "shut")
			}
			waitFor(t, c.name, func() bool { return state() == c.want })
			dir := dumpNet(t, n, w)
			r := restoreNet(t, n, w, dir)
			if s := state(); s != c.want {
				t.Fatalf("restored in state %d, want %d", s, c.want)
			}
			// Either way the peer's stream ends: the program shut it,
			// or closed its socket after reading to the end.
			p.eofOK.Store(true)
			w.toggleHold(t, 0)
			p.reading.Store(true)
			for deadline := time.Now().Add(20 * time.Second); !p.eof.Load() && p.failed() == nil; time.Sleep(5 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("the program's stream did not end: the peer wrote %d, read %d; state now %d\n%s", p.sent.Load(), p.recv.Load(), state(), w.logTail())
				}
			}
			if err := p.failed(); err != nil {
				t.Fatal(err)
			}
			// Everything the peer wrote is acknowledged (segments a
			// network lock dropped are sent again), then read.
			waitFor(t, "the peer's bytes to be acknowledged", func() bool {
				var unacked uint32 = 1
				n.do(func() {
					// The peer's end may be in TIME_WAIT by now: no inode.
					tab, err := sockdiag.DumpInetTable(unix.AF_INET, unix.IPPROTO_TCP)
					if err != nil {
						return
					}
					socks := tab.NoIno
					for _, s := range tab.ByIno {
						socks = append(socks, *s)
					}
					for _, s := range socks {
						if s.Src.Port() == uint16(port) && s.Dst.Port() == uint16(conn.RemoteAddr().(*net.TCPAddr).Port) {
							unacked = s.Wqueue
						}
					}
				})
				return unacked == 0
			})
			time.Sleep(50 * time.Millisecond)
			line := r.finish(t, w, []*peer{p})
			m := doneRE.FindStringSubmatch(line)
			if m == nil {
				t.Fatalf("workload: %s", line)
			}
			if m[1] != strconv.FormatInt(p.recv.Load(), 10) || m[2] != strconv.FormatInt(p.sent.Load(), 10) {
				t.Fatalf("workload %s; the peer read %d and wrote %d", line, p.recv.Load(), p.sent.Load())
			}
		})
	}
}

// A listener with a connection waiting in its accept queue is refused
// (the kernel cannot put it back); --skip-in-flight dumps it without it,
// and the restored listener accepts new clients.
func TestNetSkipInFlight(t *testing.T) {
	needRoot(t)
	n := newNetns(t)
	const port = "7740"
	w := startNet(t, n, "server", "127.0.0.1", port)
	w.toggleHold(t, 1) // accepts nothing
	var waiting net.Conn
	var err error
	n.do(func() { waiting, err = net.Dial("tcp4", "127.0.0.1:"+port) })
	if err != nil {
		t.Fatal(err)
	}
	defer waiting.Close()
	code, out := n.godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir(), "--tcp-established")
	if code == 0 || !strings.Contains(out, "TCP socket 127.0.0.1:"+port+": listening, with 1 connections waiting in its accept queue") {
		t.Fatalf("dump: exit %d: %q", code, out)
	}
	dir := dumpNet(t, n, w, "--skip-in-flight")
	r := restoreNet(t, n, w, dir)
	w.toggleHold(t, 0)
	var c net.Conn
	n.do(func() { c, err = net.Dial("tcp4", "127.0.0.1:"+port) })
	if err != nil {
		t.Fatal(err)
	}
	p := newPeer(c)
	defer p.close()
	logOf = func([]*peer) string { return w.logTail() }
	runStreams(t, []*peer{p}, 256<<10)
	line := r.finish(t, w, []*peer{p})
	if !doneRE.MatchString(line) {
		t.Fatalf("workload: %s", line)
	}
}

// A dump that fails after reading connections in repair mode takes them
// out of it again: the program streams on with its peer untouched.
func TestNetFailedDumpLeavesConnections(t *testing.T) {
	needRoot(t)
	n := newNetns(t)
	var ln net.Listener
	var err error
	n.do(func() { ln, err = net.Listen("tcp4", "127.0.0.1:0") })
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	w := startNet(t, n, "client", "127.0.0.1", strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
	logOf = func([]*peer) string { return w.logTail() }
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	p := newPeer(c)
	defer p.close()
	runStreams(t, []*peer{p}, 256<<10)
	script := filepath.Join(t.TempDir(), "fail-post-dump")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n[ \"$CRTOOLS_SCRIPT_ACTION\" != post-dump ]\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	code, out := n.godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir(), "--tcp-established", "--action-script", script)
	if code == 0 || !strings.Contains(out, "post-dump") {
		t.Fatalf("dump: exit %d: %q, want the post-dump script's failure", code, out)
	}
	runStreams(t, []*peer{p}, 1<<20)
	if r := w.logTail(); strings.Contains(r, "FAIL") {
		t.Fatalf("the program failed after the dump failed:\n%s", r)
	}
}

// A socket option the image cannot carry, set to other than its default,
// fails the dump naming it, and the workload runs on.
func TestNetUncarriedOptionRefused(t *testing.T) {
	needRoot(t)
	n := newNetns(t)
	const port = "7760"
	w := startNet(t, n, "server", "127.0.0.1", port)
	pidfd, err := unix.PidfdOpen(w.pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	// The listener is the socket bound to the port: set the option on
	// it through a copy of its fd.
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", w.pid))
	if err != nil {
		t.Fatal(err)
	}
	set := false
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		s, err := unix.PidfdGetfd(pidfd, fd, 0)
		if err != nil {
			continue
		}
		if sa, err := unix.Getsockname(s); err == nil {
			if a, ok := sa.(*unix.SockaddrInet4); ok && strconv.Itoa(a.Port) == port {
				if err := unix.SetsockoptInt(s, unix.SOL_TCP, unix.TCP_DEFER_ACCEPT, 10); err != nil {
					unix.Close(s)
					t.Fatal(err)
				}
				set = true
			}
		}
		unix.Close(s)
	}
	if !set {
		t.Fatal("no listener on port " + port)
	}
	code, out := n.godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir())
	// The kernel keeps the seconds as SYN-ACK retransmits: 10 reads back
	// as 15.
	if code == 0 || !regexp.MustCompile(`TCP socket 127\.0\.0\.1:`+port+`: TCP_DEFER_ACCEPT is \d+ \(default 0\): not supported yet`).MatchString(out) {
		t.Fatalf("dump: exit %d: %q", code, out)
	}
	ticks := w.ticks()
	waitFor(t, "the workload to run on", func() bool { return alive(w.pid) && tracerOf(w.pid) == 0 && w.ticks() > ticks })
}

// A listener with connection requests still in SYN_RECV (their final
// ACK dropped) fails the dump naming how many, TIME_WAIT sockets about
// notwithstanding (both have no inode), also when the requests are IPv4
// ones to a dual-stack IPv6 listener; --skip-in-flight dumps it.
func TestNetHalfOpen(t *testing.T) {
	needRoot(t)
	for i, listen := range []string{"127.0.0.1", "::"} {
		t.Run(listen, func(t *testing.T) {
			n := newNetns(t)
			port := 7770 + 2*i
			w := startNet(t, n, "server", listen, strconv.Itoa(port))
			// TIME_WAIT sockets, on a listener of the test's.
			var tl net.Listener
			var err error
			n.do(func() { tl, err = net.Listen("tcp4", "127.0.0.1:"+strconv.Itoa(port+1)) })
			if err != nil {
				t.Fatal(err)
			}
			defer tl.Close()
			const tw, half = 3, 3
			for range tw {
				var c net.Conn
				n.do(func() { c, err = net.Dial("tcp4", tl.Addr().String()) })
				if err != nil {
					t.Fatal(err)
				}
				s, err := tl.Accept()
				if err != nil {
					t.Fatal(err)
				}
				s.Close() // the test's end closes first: it waits in TIME_WAIT
				c.Close()
			}
			count := func(fam uint8, state uint8) int {
				var tab *sockdiag.InetTable
				n.do(func() { tab, err = sockdiag.DumpInetTable(fam, unix.IPPROTO_TCP) })
				if err != nil {
					t.Fatal(err)
				}
				k := 0
				for _, s := range tab.NoIno {
					if s.State == state {
						k++
					}
				}
				return k
			}
			waitFor(t, "TIME_WAIT sockets", func() bool { return count(unix.AF_INET, 6) == tw })
			// The clients' handshake ACKs go nowhere: the requests stay.
			nft := func(args ...string) {
				var out []byte
				n.do(func() { out, err = exec.Command("nft", args...).CombinedOutput() })
				if err != nil {
					t.Fatalf("nft %v: %v\n%s", args, err, out)
				}
			}
			nft("add", "table", "inet", "godwit_halfopen")
			t.Cleanup(func() { n.do(func() { exec.Command("nft", "delete", "table", "inet", "godwit_halfopen").Run() }) })
			nft("add", "chain", "inet", "godwit_halfopen", "out", "{ type filter hook output priority 0 ; }")
			nft("add", "rule", "inet", "godwit_halfopen", "out", "tcp", "dport", strconv.Itoa(port), "tcp", "flags", "&", "(syn | ack)", "==", "ack", "drop")
			for range half {
				var c net.Conn
				n.do(func() { c, err = net.Dial("tcp4", "127.0.0.1:"+strconv.Itoa(port)) })
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
			}
			// (Those to the IPv6 listener are listed as IPv6, v4-mapped.)
			waitFor(t, "SYN_RECV requests", func() bool { return count(unix.AF_INET, 3)+count(unix.AF_INET6, 3) == half })
			code, out := n.godwit(t, "dump", "-t", strconv.Itoa(w.pid), "-D", t.TempDir())
			if code == 0 || !strings.Contains(out, fmt.Sprintf(": listening, with %d connections half-open", half)) {
				t.Fatalf("dump: exit %d: %q", code, out)
			}
			dumpNet(t, n, w, "--skip-in-flight")
		})
	}
}

// A restore that fails before its unlock point keeps the dump's network
// lock (as CRIU does) and says how to remove it: the peer, pushing bytes
// all along, sees its segments go unanswered, never a reset, and a retry
// adopts the lock and restores a live connection.
func TestNetFailedRestoreKeepsLock(t *testing.T) {
	needRoot(t)
	n := newNetns(t)
	var ln net.Listener
	var err error
	n.do(func() { ln, err = net.Listen("tcp4", "127.0.0.1:0") })
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	w := startNet(t, n, "client", "127.0.0.1", strconv.Itoa(port))
	logOf = func([]*peer) string { return w.logTail() }
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	p := newPeer(c)
	defer p.close()
	runStreams(t, []*peer{p}, 1<<20)
	dir := dumpNet(t, n, w) // the peer writes on: only godwit's lock holds its segments
	table := lockName(t, dir, w.pid)
	locked := func() bool {
		var err error
		n.do(func() { err = exec.Command("nft", "list", "table", "inet", table).Run() })
		return err == nil
	}
	t.Cleanup(func() { n.do(func() { exec.Command("nft", "delete", "table", "inet", table).Run() }) })
	if !locked() {
		t.Fatalf("no table inet %s after the dump", table)
	}
	// Without --tcp-established the restore refuses the connection.
	code, out := n.godwit(t, "restore", "-D", dir, "-o", "restore-refused.log")
	if code == 0 || !strings.Contains(out, "--tcp-established") {
		t.Fatalf("restore without --tcp-established: exit %d: %q", code, out)
	}
	if !locked() {
		t.Fatalf("the failed restore removed table inet %s", table)
	}
	if log := readFile(filepath.Join(dir, "restore-refused.log")); !strings.Contains(log, "nft delete table inet "+table) {
		t.Fatalf("the failed restore's log does not say how to remove the lock:\n%s", log)
	}
	if pidExists(w.pid) {
		t.Fatalf("pid %d left by the failed restore", w.pid)
	}
	sent := p.sent.Load()
	waitFor(t, "the peer to push more bytes into the lock", func() bool { return p.sent.Load() > sent })
	r := restoreNet(t, n, w, dir)
	if locked() {
		t.Fatalf("table inet %s still there after the restore", table)
	}
	runStreams(t, []*peer{p}, 2<<20)
	checkDone(t, r.finish(t, w, []*peer{p}), []*peer{p}, 1)
}

// lockName is the name of the network lock the dump in dir kept, from
// its record; it must be the tree's: godwit-PID-TOKEN.
func lockName(t *testing.T, dir string, pid int) string {
	t.Helper()
	var rec struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal([]byte(readFile(filepath.Join(dir, "godwit-netlock.json"))), &rec); err != nil {
		t.Fatalf("godwit-netlock.json: %v", err)
	}
	if p := "godwit-" + strconv.Itoa(pid) + "-"; !strings.HasPrefix(rec.Name, p) || len(rec.Name) != len(p)+8 {
		t.Fatalf("lock name %q, want %sTOKEN", rec.Name, p)
	}
	return rec.Name
}

// rstCounter counts the TCP resets delivered in the namespace (input
// hook, after the network lock's drop at priority -300): a reset the lock
// dropped on its way is not counted, one a peer got is.
func rstCounter(t *testing.T, n *netns) (count func() int) {
	t.Helper()
	nft := func(args ...string) string {
		var out []byte
		var err error
		n.do(func() { out, err = exec.Command("nft", args...).CombinedOutput() })
		if err != nil {
			t.Fatalf("nft %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	nft("add", "table", "inet", "godwit_rst")
	nft("add", "chain", "inet", "godwit_rst", "in", "{ type filter hook input priority 0 ; }")
	nft("add", "rule", "inet", "godwit_rst", "in", "tcp", "flags", "&", "rst", "==", "rst", "counter")
	t.Cleanup(func() { n.do(func() { exec.Command("nft", "delete", "table", "inet", "godwit_rst").Run() }) })
	return func() int {
		m := regexp.MustCompile(`packets (\d+)`).FindStringSubmatch(nft("list", "table", "inet", "godwit_rst"))
		if m == nil {
			t.Fatal("no reset counter")
		}
		v, _ := strconv.Atoi(m[1])
		return v
	}
}

// TestNetLockNoReset relies on godwit's network lock alone (no drop rule
// of the test's): the peer keeps writing while the client is dumped and
// gone, its segments and retransmissions hit a host with no socket for
// them. With the lock they are dropped and the restored connection goes
// on, no reset seen anywhere; with --network-lock skip the host answers
// them with a reset and the peer's connection dies — which shows the
// check would catch a lock that fails.
func TestNetLockNoReset(t *testing.T) {
	needRoot(t)
	for _, method := range []string{"nftables", "iptables", "skip"} {
		t.Run(method, func(t *testing.T) {
			n := newNetns(t)
			var ln net.Listener
			var err error
			n.do(func() { ln, err = net.Listen("tcp4", "127.0.0.1:0") })
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			w := startNet(t, n, "client", "127.0.0.1", strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
			logOf = func([]*peer) string { return w.logTail() }
			c, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			p := newPeer(c)
			defer p.close()
			runStreams(t, []*peer{p}, 1<<20)
			resets := rstCounter(t, n)
			dir := dumpNet(t, n, w, "--network-lock", method)
			// The tree is gone: what the peer sends now, and its
			// retransmissions (RTO ≥ 200 ms), meet no socket.
			sent := p.sent.Load()
			waitFor(t, "the peer to write while the client is gone", func() bool { return p.sent.Load() > sent || p.failed() != nil })
			if method == "skip" {
				waitFor(t, "the peer to be reset (no lock)", func() bool { return p.failed() != nil })
				if resets() == 0 {
					t.Fatalf("the peer failed (%v) with no reset counted", p.failed())
				}
				return
			}
			time.Sleep(600 * time.Millisecond)
			if err := p.failed(); err != nil {
				t.Fatalf("peer failed while locked: %v", err)
			}
			r := restoreNet(t, n, w, dir, "--network-lock", method)
			runStreams(t, []*peer{p}, 2<<20)
			checkDone(t, r.finish(t, w, []*peer{p}), []*peer{p}, 1)
			if v := resets(); v != 0 {
				t.Fatalf("%d TCP resets delivered in the namespace", v)
			}
		})
	}
}

// unacked is the bytes the peer wrote that the workload's end has not
// acknowledged (SIOCOUTQ), -1 when unknown.
func (p *peer) unacked() int {
	sc, ok := p.c.(syscall.Conn)
	if !ok {
		return -1
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1
	}
	n := -1
	rc.Control(func(fd uintptr) {
		if v, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQ); err == nil {
			n = v
		}
	})
	return n
}

// unreadTCP is the bytes waiting to be read on the stream sockets of
// process pid (SIOCINQ on copies taken with pidfd_getfd), -1 if unknown.
func unreadTCP(pid int) int {
	pfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1
	}
	defer unix.Close(pfd)
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return -1
	}
	total := 0
	for _, e := range ents {
		if l, err := os.Readlink(dir + "/" + e.Name()); err != nil || !strings.HasPrefix(l, "socket:") {
			continue
		}
		n, _ := strconv.Atoi(e.Name())
		s, err := unix.PidfdGetfd(pfd, n, 0)
		if err != nil {
			continue // closed meanwhile
		}
		if typ, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_TYPE); err == nil && typ == unix.SOCK_STREAM {
			if v, err := unix.IoctlGetInt(s, unix.SIOCINQ); err == nil {
				total += v
			}
		}
		unix.Close(s)
	}
	return total
}

// newNetns leaves the test process's own namespace alone: the namespace
// thread is never the main thread, which /proc/self/ns/net shows and Go
// keeps (wedged) when a locked goroutine on it exits.
func TestNetnsKeepsProcessNamespace(t *testing.T) {
	needRoot(t)
	want, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			n := newNetns(t)
			var in string
			n.do(func() { in, _ = os.Readlink("/proc/thread-self/ns/net") })
			if in == want {
				t.Errorf("the namespace thread is in the process's namespace %s", in)
			}
		})
		if got, err := os.Readlink("/proc/self/ns/net"); err != nil || got != want {
			t.Fatalf("round %d: /proc/self/ns/net is %s (%v), was %s", i, got, err, want)
		}
	}
}
