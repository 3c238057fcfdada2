package netlock

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"
)

// The guard removes the lock when godwit dies holding it (SIGKILL, a
// crash): a process in a session of its own, started before the first
// rule, that reads one line from a pipe whose only writer is godwit.
// godwit writes "keep" when the rules are its business again (removed,
// or kept for the restore); any other end of the pipe (EOF: godwit is
// gone, by whatever death) makes the guard remove the rules. A pipe's
// EOF, unlike PR_SET_PDEATHSIG, does not fire when the Go thread that
// started the guard exits, and cannot be missed if godwit dies before
// the guard ran. The guard removes twice, a second apart: a firewall
// command godwit had running when it died may still land its rules
// after the first.
//
// The nftables lock is made over netlink, so its guard is godwit itself
// re-executed (see init) deleting the table over netlink: it needs no
// nft(8). The iptables lock's guard is a shell running the iptables
// commands the lock was made with.
type guard struct {
	cmd *exec.Cmd
	w   *os.File
}

const (
	guardEnv      = "GODWIT_NETLOCK_GUARD"       // the nftables table the guard removes
	guardNetnsEnv = "GODWIT_NETLOCK_GUARD_NETNS" // "1": the table's namespace is fd 3
	guardComm     = "godwit-netlock-guard"
)

func init() {
	name, ok := os.LookupEnv(guardEnv)
	if !ok {
		return
	}
	os.Exit(nftGuardMain(name, os.Getenv(guardNetnsEnv) == "1"))
}

// nftGuardMain is the nftables guard process: stdin is the pipe.
func nftGuardMain(name string, inNetns bool) int {
	// Its own session already; a signal sent to godwit's old group or
	// a hangup must not stop it before it removed the table.
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGPIPE)
	if !validName(name) {
		return 2
	}
	var netns *os.File
	if inNetns {
		netns = os.NewFile(3, "netns")
	}
	line, _ := bufio.NewReader(os.Stdin).ReadString('\n')
	if line == "keep\n" {
		return 0
	}
	nftDeleteTable(netns, name)
	time.Sleep(time.Second)
	nftDeleteTable(netns, name)
	return 0
}

// startGuard starts the guard of l's rules in the network namespace
// netns (nil: ours).
func (l *Lock) startGuard(netns *os.File) (*guard, error) {
	var cmd *exec.Cmd
	if l.method == Nftables {
		cmd = exec.Command("/proc/self/exe")
		cmd.Args = []string{guardComm}
		cmd.Env = []string{guardEnv + "=" + l.name}
		if netns != nil {
			cmd.Env = append(cmd.Env, guardNetnsEnv+"=1")
			cmd.ExtraFiles = []*os.File{netns}
		}
	} else {
		cleanup := l.cleanupScript()
		script := "trap '' INT TERM HUP QUIT PIPE\n" +
			"IFS= read -r w\n" +
			"[ \"$w\" = keep ] && exit 0\n" +
			"{ " + cleanup + "\n} >/dev/null 2>&1\nsleep 1\n{ " + cleanup + "\n} >/dev/null 2>&1\nexit 0\n"
		cmd = commandIn(netns, "/bin/sh", "-c", script, guardComm)
	}
	r, w, err := os.Pipe() // close-on-exec: no other child holds the writer
	if err != nil {
		return nil, fmt.Errorf("network lock guard: %w", err)
	}
	cmd.Stdin = r
	// Its own session: a ^C or a kill of godwit's group must not stop
	// it before it removed the rules.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	r.Close()
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("network lock guard: %w", err)
	}
	return &guard{cmd: cmd, w: w}, nil
}

// release ends the guard: with keep, it leaves the rules as they are;
// without, it removes them. It waits for the guard to exit.
func (g *guard) release(keep bool) {
	if g == nil {
		return
	}
	if keep {
		g.w.Write([]byte("keep\n")) // a dead guard removes nothing either way
	}
	g.w.Close()
	g.cmd.Wait()
}
