package lazypages

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// The guard is a small process the daemon starts before it serves any
// task. It holds a copy of every uffd the daemon serves: were the daemon
// to die, the kernel would otherwise release the uffds and let the tasks
// fault in zero pages in place of their data, running on with wrong
// memory. With the guard holding them, the faults just wait; the guard
// sees the daemon's socket close without "done", kills the tasks, and
// only then lets go of the uffds.
//
// Messages on a SOCK_SEQPACKET pair: 'T' id pid (fds: uffd [, pidfd]);
// 'K' id pid (fd: pidfd): kill pid too with that task;
// 'F' id tick pids... (a forked child of unknown pid: where to look for
// it, see orphansOf); 'X' id (that task is complete: close its fds); 'D' (all done: exit 0).

// guardEnv marks the guard's process; its value is the socket's fd.
const guardEnv = "GODWIT_LAZY_PAGES_GUARD"

type guard struct {
	mu   sync.Mutex
	sock int
	cmd  *exec.Cmd
	// exited is closed when the guard process ended, exitErr set.
	exited  chan struct{}
	exitErr error
	closed  bool
}

// startGuard runs this binary again as the guard (MaybeGuard in its main).
func startGuard() (*guard, error) {
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("guard: socketpair: %w", err)
	}
	f := os.NewFile(uintptr(sp[1]), "lazy-pages-guard")
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{"godwit-lazy-pages-guard"}
	cmd.Env = append(os.Environ(), guardEnv+"=3")
	cmd.ExtraFiles = []*os.File{f}
	cmd.Stderr = os.Stderr
	// Its own session: a ^C meant for the daemon must not reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	f.Close()
	if err != nil {
		unix.Close(sp[0])
		return nil, fmt.Errorf("guard: start: %w", err)
	}
	g := &guard{sock: sp[0], cmd: cmd, exited: make(chan struct{})}
	// Wait for its first word: it runs and holds its end.
	var b [1]byte
	if n, err := unix.Read(g.sock, b[:]); err != nil || n != 1 || b[0] != 'R' {
		cmd.Process.Kill()
		cmd.Wait()
		unix.Close(g.sock)
		return nil, fmt.Errorf("guard: did not start (%v)", err)
	}
	go func() {
		err := cmd.Wait()
		if err == nil {
			err = errors.New("exited")
		}
		g.exitErr = err
		close(g.exited)
	}()
	return g, nil
}

// Guard is a guard process started ahead of Run (Options.Guard): its
// start, an exec of this binary, takes ~15 ms that a migration's frozen
// window need not wait for.
type Guard struct{ g *guard }

// StartGuard starts a guard for a later Run.
func StartGuard() (*Guard, error) {
	g, err := startGuard()
	if err != nil {
		return nil, fmt.Errorf("lazy-pages: %w", err)
	}
	return &Guard{g: g}, nil
}

// Close ends a guard that was never handed to Run.
func (g *Guard) Close() { _ = g.g.finish(false) }

func (g *guard) send(b []byte, fds ...int) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return errors.New("guard: closed")
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if err := unix.Sendmsg(g.sock, b, oob, nil, 0); err != nil {
		return fmt.Errorf("guard: send: %w", err)
	}
	return nil
}

func guardMsg(kind byte, id uint32, pid int) []byte {
	b := []byte{kind}
	b = binary.NativeEndian.AppendUint32(b, id)
	return binary.NativeEndian.AppendUint32(b, uint32(pid))
}

func (g *guard) add(id uint32, pid, ufd, pidfd int) error {
	fds := []int{ufd}
	if pidfd >= 0 {
		fds = append(fds, pidfd)
	}
	return g.send(guardMsg('T', id, pid), fds...)
}

// kin adds a process to kill with task id (task.kin).
func (g *guard) kin(id uint32, pid, pidfd int) error {
	return g.send(guardMsg('K', id, pid), pidfd)
}

// fork tells how to find task id, a forked child of unknown pid.
func (g *guard) fork(id uint32, f *forkWatchState) error {
	b := guardMsg('F', id, 0)[:5]
	b = binary.NativeEndian.AppendUint64(b, f.tick)
	for _, p := range append(append([]int(nil), f.parents...), f.ancestors...) {
		if len(b)+4 > guardBuf {
			break
		}
		b = binary.NativeEndian.AppendUint32(b, uint32(p))
	}
	return g.send(b)
}

// guardBuf bounds a message to the guard.
const guardBuf = 4096

func (g *guard) drop(id uint32) { g.send(guardMsg('X', id, 0)) }

// finish ends the guard: with 'D' when every page is in, else by closing
// the socket (the guard then kills what it holds). It waits for the exit.
func (g *guard) finish(complete bool) error {
	if complete {
		if err := g.send([]byte{'D'}); err != nil {
			return err
		}
	}
	g.mu.Lock()
	g.closed = true
	unix.Close(g.sock)
	g.mu.Unlock()
	<-g.exited
	err := g.exitErr
	if complete && err != nil && err.Error() != "exited" {
		return fmt.Errorf("lazy-pages: guard: %v", err)
	}
	return nil
}

// MaybeGuard runs the guard and exits when this process was started as
// one; otherwise it returns at once. Call it first thing in main (and in
// TestMain of tests that run the daemon).
func MaybeGuard() {
	v := os.Getenv(guardEnv)
	if v == "" {
		return
	}
	os.Exit(guardMain(3))
}

type guarded struct {
	pid         int
	uffd, pidfd int
	kin         []kinProc
	// A forked child of unknown pid: its kin are looked for among the
	// children of roots (orphansOf) should the daemon die.
	roots []int
	tick  uint64
}

func guardMain(sock int) int {
	signal.Ignore(unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGPIPE, unix.SIGQUIT)
	unix.CloseOnExec(sock)
	if _, err := unix.Write(sock, []byte{'R'}); err != nil {
		return 1
	}
	held := map[uint32]guarded{}
	closeOne := func(g guarded) {
		unix.Close(g.uffd)
		if g.pidfd >= 0 {
			unix.Close(g.pidfd)
		}
		for _, k := range g.kin {
			unix.Close(k.pidfd)
		}
	}
	buf := make([]byte, guardBuf)
	oob := make([]byte, unix.CmsgSpace(2*4))
	for {
		n, oobn, _, _, err := unix.Recvmsg(sock, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			break
		}
		var fds []int
		if oobn > 0 {
			if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for _, m := range msgs {
					f, _ := unix.ParseUnixRights(&m)
					fds = append(fds, f...)
				}
			}
		}
		switch {
		case buf[0] == 'D':
			for _, g := range held {
				closeOne(g)
			}
			return 0
		case buf[0] == 'T' && n == 9 && len(fds) >= 1:
			id := binary.NativeEndian.Uint32(buf[1:])
			g := guarded{pid: int(binary.NativeEndian.Uint32(buf[5:])), uffd: fds[0], pidfd: -1}
			if len(fds) > 1 {
				g.pidfd = fds[1]
			}
			for _, f := range fds[min(len(fds), 2):] {
				unix.Close(f)
			}
			held[id] = g
		case buf[0] == 'K' && n == 9 && len(fds) == 1:
			id := binary.NativeEndian.Uint32(buf[1:])
			g, ok := held[id]
			if !ok {
				unix.Close(fds[0])
				break
			}
			g.kin = append(g.kin, kinProc{pid: int(binary.NativeEndian.Uint32(buf[5:])), pidfd: fds[0]})
			held[id] = g
		case buf[0] == 'F' && n >= 13 && (n-13)%4 == 0 && len(fds) == 0:
			id := binary.NativeEndian.Uint32(buf[1:])
			g, ok := held[id]
			if !ok {
				break
			}
			g.tick = binary.NativeEndian.Uint64(buf[5:])
			g.roots = nil
			for i := 13; i+4 <= n; i += 4 {
				g.roots = append(g.roots, int(binary.NativeEndian.Uint32(buf[i:])))
			}
			held[id] = g
		case buf[0] == 'X' && n == 9:
			id := binary.NativeEndian.Uint32(buf[1:])
			if g, ok := held[id]; ok {
				closeOne(g)
				delete(held, id)
			}
		default:
			for _, f := range fds {
				unix.Close(f)
			}
		}
	}
	// The daemon is gone before every page was in. A forked child it did
	// not learn the pid of yet is looked for now, while its uffd is open.
	known := map[int]bool{}
	for _, g := range held {
		known[g.pid] = true
		for _, k := range g.kin {
			known[k.pid] = true
		}
	}
	for id, g := range held {
		if g.pid > 0 || len(g.kin) > 0 || len(g.roots) == 0 {
			continue
		}
		for _, pid := range orphansOf(g.roots, g.tick, true, func(p int) bool { return known[p] }) {
			if fd, err := unix.PidfdOpen(pid, 0); err == nil {
				g.kin = append(g.kin, kinProc{pid: pid, pidfd: fd})
			}
		}
		held[id] = g
	}
	var killed []int
	for _, g := range held {
		if g.pid > 0 {
			killed = append(killed, killTree(g.pid, g.pidfd)...)
		}
		for _, k := range g.kin {
			killed = append(killed, killTree(k.pid, k.pidfd)...)
		}
	}
	for _, g := range held {
		closeOne(g)
	}
	if len(held) > 0 {
		fmt.Fprintf(os.Stderr, "godwit lazy-pages guard: the lazy-pages daemon is gone before every page was in: killed %v (post-copy cannot go on without it)\n", killed)
		return 1
	}
	return 0
}
